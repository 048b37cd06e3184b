r"""How much a CoT policy's actions suffer from its own subgoal codes (training/inference mismatch).

In training the action tokens see the true codes of the frame k steps ahead (teacher forcing); at
inference they see the policy's own greedy codes. For sampled training windows of every task this
measures the action error (L1 in the normalised [-1, 1] action space, padded steps left out) with

- ``true``: the true subgoal codes (what training optimises),
- ``own``: the codes :meth:`CotVlaPolicy.generate` decodes (what a rollout executes),

and the share of the own codes that equal the true ones. ``ratio = own / true`` per task: near 1, the
actions do not lean on code details the policy cannot predict; far above 1, they do.

The windows come from the training demos (the same frames the policy was fitted on), so ``true`` is a
training error; the gap to ``own`` is the point, not the absolute level.

    python -m bench.subgoal_exposure --checkpoint plain=outputs/gpu_s8/ckpt_cot \
        --checkpoint noise0.5=outputs/gpu_s8/noise/ckpt_cot --windows data/windows/dart_goal --per_task 64
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import RESULTS_DIR, device_name, save_figure, write_results


def action_l1(pred: torch.Tensor, target: torch.Tensor, pad: torch.Tensor) -> float:
    """Mean |pred - target| over the chunk's real steps and every action dimension."""
    w = (~pad.bool())[..., None].expand_as(target).float()
    return float(((pred - target).abs() * w).sum() / w.sum().clamp_min(1))


def measure(policy: Any, batch: dict[str, Any]) -> dict[str, float]:
    """``true`` / ``own`` action L1, their ratio and the own codes' accuracy on one batch."""
    from vla.constants import ACTION, ACTION_IS_PAD, SUBGOAL_IMAGE
    from vla.policies.cot_vla.modeling_cot_vla import normalize_actions

    target = normalize_actions(batch[ACTION], policy.action_q01, policy.action_q99)
    with torch.no_grad():
        true_codes = policy.subgoal_codes(batch[SUBGOAL_IMAGE])
        gen = policy.generate(batch)
        a_true = policy.actions_given_codes(batch, true_codes)
    l1_true = action_l1(a_true, target, batch[ACTION_IS_PAD])
    l1_own = action_l1(gen["actions_norm"], target, batch[ACTION_IS_PAD])
    return {
        "l1_true": round(l1_true, 5),
        "l1_own": round(l1_own, 5),
        "ratio": round(l1_own / max(l1_true, 1e-9), 3),
        "own_code_acc": round(float((gen["codes"] == true_codes).float().mean()), 4),
    }


def run(checkpoints: dict[str, str], windows: str, per_task: int, seed: int) -> list[dict]:
    """A row per checkpoint and task (the same sampled windows for every checkpoint)."""
    from tqdm import tqdm

    from vla.data import PreloadedWindows, to_policy_batch
    from vla.policy import Policy
    from vla.windows import load_windows

    policies = {name: Policy.from_pretrained(path).eval() for name, path in checkpoints.items()}
    for name, p in policies.items():
        if not p.config.use_cot:
            raise SystemExit(f"--checkpoint {name}: a no-CoT policy has no subgoal codes to compare")
    first = next(iter(policies.values()))
    ds = PreloadedWindows.from_windows(load_windows(windows), first.config)
    by_task: dict[str, list[int]] = collections.defaultdict(list)
    for i, t in enumerate(ds.tasks):
        by_task[t].append(i)
    g = torch.Generator().manual_seed(seed)
    rows = []
    jobs = [(t, n) for t in sorted(by_task) for n in policies]
    picks = {
        t: torch.tensor(ix)[torch.randperm(len(ix), generator=g)[:per_task]]
        for t, ix in sorted(by_task.items())
    }
    for task, name in tqdm(jobs, desc="subgoal exposure"):
        policy = policies[name]
        batch = to_policy_batch(ds.collate(picks[task]), policy.config, "cpu")
        t0 = time.perf_counter()
        rows.append({"checkpoint": name, "task": task, "samples": len(picks[task]), **measure(policy, batch)})
        rows[-1]["seconds"] = round(time.perf_counter() - t0, 1)
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    """Grouped bars of own/true action-error ratio per task and checkpoint (PNG, written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in rows})
    names = list(dict.fromkeys(r["checkpoint"] for r in rows))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for j, n in enumerate(names):
        val = {r["task"]: r["ratio"] for r in rows if r["checkpoint"] == n}
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(tasks))]
        ax.bar(xs, [val.get(t, 0.0) for t in tasks], width, label=n)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(
        range(len(tasks)), [t.replace("the ", "") for t in tasks], rotation=25, ha="right", fontsize=7
    )
    ax.set_ylabel("action L1: own codes / true codes")
    ax.set_title(
        "CoT: action error with the policy's own subgoal vs the true one (training windows)", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH of a CoT checkpoint")
    ap.add_argument("--windows", required=True, help="vla-export-windows folder of the training demos")
    ap.add_argument("--per_task", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--name", default="subgoal_exposure")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ckpts = {}
    for spec in args.checkpoint:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--checkpoint {spec!r}: use NAME=PATH")
        if not Path(path).is_dir():
            raise SystemExit(f"--checkpoint {name}: {path} is not a checkpoint folder")
        ckpts[name] = path
    rows = run(ckpts, args.windows, args.per_task, args.seed)
    headline = {}
    for name in ckpts:
        mine = [r for r in rows if r["checkpoint"] == name]
        headline[f"ratio_mean_{name}"] = round(sum(r["ratio"] for r in mine) / len(mine), 3)
        headline[f"ratio_max_{name}"] = max(r["ratio"] for r in mine)
    path = write_results(
        args.name,
        rows=rows,
        headline=headline,
        device=device_name(),
        out_dir=args.out,
        config={"checkpoints": ckpts, "windows": args.windows, "per_task": args.per_task, "seed": args.seed},
        command="python -m bench.subgoal_exposure "
        + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
    )
    plot(rows, path.with_suffix(".png"))
    print(headline)
    return path


if __name__ == "__main__":
    main()

r"""CoT vs no-CoT on the embedded Goal-like suite: same data, same budget, same evaluation.

1. Train the CoT policy (``vla.scripts.train.run``: the tokenizer first, then the policy) and the
   ``no_cot`` ablation with the same config, steps and seed.
2. Evaluate each checkpoint with ``sim.run_eval.evaluate`` on ``--episodes`` init states of every task.
3. Write ``bench/results/policy_embedded.json``: headline ``success_cot``, ``success_no_cot``,
   ``train_minutes`` (CoT, tokenizer included) and ``train_minutes_no_cot``; rows per variant and task.

The issue also asks for lerobot's ACT trained on the same data (``success_lerobot_act``); that adapter is
not written yet, so the key is absent rather than made up.

Examples:
    # GPU machine, >= 50 expert demos per task collected by vla-collect into data/embedded_goal
    python -m bench.policy_embedded --dataset_root=data/embedded_goal --episodes=50 --num_workers=8
    # CPU smoke run (meaningless numbers; results to /tmp)
    python -m bench.policy_embedded --dataset_root=outputs/demo/demos \
        --train_config=configs/train/cot_vla_tiny.yaml --steps=20 --tokenizer_steps=20 --episodes=1 \
        --tasks put_red_cube_on_plate --out_dir=/tmp/pe --results_dir=/tmp/pe
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import draccus

from bench.common import RESULTS_DIR, device_name, write_results


def train_variant(args: argparse.Namespace, use_cot: bool) -> tuple[Path, float]:
    """Train one variant; returns (checkpoint dir, minutes)."""
    from vla.scripts.train import TrainConfig, run

    name = "cot" if use_cot else "no_cot"
    overrides = [
        f"--dataset.root={args.dataset_root}",
        f"--output_dir={Path(args.out_dir) / name}",
        f"--policy.use_cot={str(use_cot).lower()}",
        f"--seed={args.seed}",
        "--tensorboard=false",
    ]
    if args.steps:
        overrides += [f"--optim.steps={args.steps}", f"--optim.warmup_steps={min(args.steps // 10, 200)}"]
    if args.tokenizer_steps is not None:
        overrides.append(f"--tokenizer_steps={args.tokenizer_steps}")
    cfg = draccus.parse(TrainConfig, config_path=args.train_config, args=overrides)
    t0 = time.perf_counter()
    run(cfg)
    return Path(cfg.output_dir) / "checkpoints" / "last" / "pretrained_model", (time.perf_counter() - t0) / 60


def evaluate_variant(args: argparse.Namespace, ckpt: Path, name: str) -> dict:
    """run_eval on every (or the given) task of the suite."""
    from sim.eval_configs import EvalConfig
    from sim.run_eval import evaluate

    cfg = EvalConfig(
        suite=args.suite,
        tasks=list(args.tasks or []),
        episodes=args.episodes,
        policy=str(ckpt),
        num_workers=args.num_workers,
        seed=args.seed,
        video=args.video,
        max_videos_per_task=2,
        out_dir=str(Path(args.out_dir) / f"eval_{name}"),
    )
    return evaluate(cfg, command=f"bench.policy_embedded eval {name}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_root", required=True)
    ap.add_argument("--train_config", default="configs/train/cot_vla_embedded_goal.yaml")
    ap.add_argument("--steps", type=int, default=0, help="override optim.steps (0 keeps the config's)")
    ap.add_argument("--tokenizer_steps", type=int, default=None)
    ap.add_argument("--suite", default="embedded_goal")
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--num_workers", type=int, default=1)
    ap.add_argument("--video", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out_dir", default="outputs/bench/policy_embedded")
    ap.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args()

    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata("local/embedded_goal", root=args.dataset_root)
    rows, headline = [], {}
    train_device = device_name()
    for use_cot in (True, False):
        name = "cot" if use_cot else "no_cot"
        ckpt, minutes = train_variant(args, use_cot)
        res = evaluate_variant(args, ckpt, name)
        headline[f"success_{name}"] = res["mean_success"]
        headline["train_minutes" if use_cot else "train_minutes_no_cot"] = round(minutes, 2)
        for task, t in res["tasks"].items():
            rows.append(
                {
                    "variant": name,
                    "task": task,
                    "success_rate": t["success_rate"],
                    "episodes": t["episodes"],
                    "ci95": t["ci95"],
                    "checkpoint": str(ckpt),
                }
            )
    path = write_results(
        "policy_embedded",
        rows=rows,
        headline=headline,
        device=train_device,
        out_dir=args.results_dir,
        config={
            "dataset_root": args.dataset_root,
            "episodes_in_dataset": meta.total_episodes,
            "tasks_in_dataset": meta.total_tasks,
            "train_config": args.train_config,
            "steps_override": args.steps,
            "eval_episodes_per_task": args.episodes,
            "suite": args.suite,
            "lerobot_act": "not run (adapter not written)",
        },
    )
    print(json.dumps({"path": str(path), "headline": headline}))


if __name__ == "__main__":
    main()

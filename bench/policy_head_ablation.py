r"""Does the action head explain the embedded_goal failures? Discrete 256-bin vs continuous L1, same data.

The first GPU run (bench/notes/policy_embedded.md) recorded noisy executed actions; on the two rotation
dimensions the noise spans about a third of the normalised range, so a 256-bin head's argmax is close to a
random draw there while an L1 head predicts the median (0). This trains the small no-CoT policy on one
task's demos with each head (same config, steps, seed; CPU), evaluates both with run_eval on the task's
first ``--episodes`` eval init states, and writes ``bench/results/policy_head_ablation.json``.

Example (about 25 min on 2 cores; the two trainings run one per core):
    python -m bench.policy_head_ablation --windows=data/windows/embedded_goal --episodes=20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import RESULTS_DIR, device_name, write_results

CONFIG = "configs/train/ablation_head_one_task_cpu.yaml"
TASK = "put_red_cube_in_bin"
HEADS = ("discrete", "continuous")


def _run_per_head(args: list[str], out_dir: Path, stage: str) -> None:
    """Run ``python <args> <head-specific args>`` for both heads at once (one core each), then wait."""
    procs = []
    for h in HEADS:
        extra = (
            [f"--output_dir={out_dir / h}", f"--policy.action_head={h}"]
            if stage == "train"
            else [
                f"--policy={out_dir / h / 'checkpoints/last/pretrained_model'}",
                f"--out_dir={out_dir / f'eval_{h}'}",
            ]
        )
        log = (out_dir / f"{stage}_{h}.log").open("w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen([sys.executable, *args, *extra], stdout=log, stderr=subprocess.STDOUT, env=env)
        )
    if any(p.wait() for p in procs):
        raise RuntimeError(f"a {stage} run failed: see {out_dir}/{stage}_<head>.log")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", default="data/windows/embedded_goal")
    ap.add_argument("--episodes", type=int, default=20)
    ap.add_argument("--out_dir", type=Path, default=Path("outputs/ablation"))
    ap.add_argument("--skip_train", action="store_true", help="reuse <out_dir>/<head> runs")
    ap.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if not args.skip_train:
        train = ["-m", "vla.scripts.train", f"--config_path={CONFIG}", f"--dataset.windows={args.windows}"]
        _run_per_head(train, args.out_dir, "train")
    evaluate = [
        "-m",
        "sim.run_eval",
        "--suite=embedded_goal",
        f"--tasks=[{TASK}]",
        f"--episodes={args.episodes}",
    ]
    _run_per_head(evaluate, args.out_dir, "eval")
    rows, headline = [], {}
    for h in HEADS:
        res = json.loads((args.out_dir / f"eval_{h}" / "results.json").read_text())
        train = json.loads((args.out_dir / h / "train_summary.json").read_text())
        t = res["tasks"][TASK]
        headline[f"success_{h}"] = t["success_rate"]
        rows.append(
            {
                "action_head": h,
                "task": TASK,
                "success_rate": t["success_rate"],
                "episodes": t["episodes"],
                "ci95": t.get("ci95"),
                "mean_steps": t["mean_steps"],
                "train_minutes": round(train["train_minutes"], 2),
                "final_action_l1": train.get("action_l1"),
            }
        )
    path = write_results(
        "policy_head_ablation",
        rows=rows,
        headline=headline,
        device=device_name(),
        out_dir=args.results_dir,
        config={
            "train_config": CONFIG,
            "windows": args.windows,
            "task": TASK,
            "eval_episodes": args.episodes,
        },
        command=" ".join(["python -m bench.policy_head_ablation", *sys.argv[1:]]),
    )
    print(json.dumps({"path": str(path), "headline": headline}))


if __name__ == "__main__":
    main()

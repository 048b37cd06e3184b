"""Scripted-expert success over the fixed init states of every task (rendering off).

Writes ``bench/results/sim_experts.json``: one row per task; headline ``expert_success_embedded_min``
(min over the tasks of the embedded suites), ``expert_success_<libero suite>`` (mean over its tasks)
for the LIBERO suites present. Rows of suites not run this time are kept from the existing file, so
suites can be added by separate runs.

Example:
    python bench/sim_experts.py --suites embedded_goal robosuite_stock --episodes 50 --workers 2
    python bench/sim_experts.py --suites libero_spatial libero_object --episodes 50
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS_DIR, write_results

logger = logging.getLogger("bench.sim_experts")
NAME = "sim_experts"


def run_task(suite: str, task: str, episodes: int, start: int = 0) -> dict[str, Any]:
    """Run the expert from init states ``start .. start+episodes-1`` of one task; return its row."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from sim.configs import RenderConfig
    from sim.experts import make_expert
    from sim.suites import make_env

    env = make_env(suite, task, render=RenderConfig.off())
    try:
        expert = make_expert(env)
        n = min(episodes, env.num_init_states - start)
        successes, steps, failed = 0, [], []
        t0 = time.perf_counter()
        for i in range(start, start + n):
            obs, info = env.reset(options={"init_state": i})
            expert.reset()
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(expert.infer(obs)["actions"][0])
                done = terminated or truncated
            successes += int(info["success"])
            steps.append(info["steps"])
            if not info["success"]:
                failed.append(i)
        wall = time.perf_counter() - t0
    finally:
        env.close()
    return {
        "suite": suite,
        "task": task,
        "episodes": n,
        "successes": successes,
        "success_rate": successes / max(n, 1),
        "mean_steps": sum(steps) / max(len(steps), 1),
        "max_steps": env.task.max_steps,
        "failed_init_states": failed,
        "wall_s": round(wall, 2),
        "env_steps_per_s": round(sum(steps) / wall, 1) if wall > 0 else None,
    }


def _run_task_star(args: tuple[str, str, int]) -> dict[str, Any]:
    return run_task(*args)


def headline_from(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Headline figures from all rows (merged)."""
    from sim.suites import EMBEDDED_SUITES

    out: dict[str, float] = {}
    emb = [r["success_rate"] for r in rows if r["suite"] in EMBEDDED_SUITES]
    if emb:
        out["expert_success_embedded_min"] = min(emb)
    for suite in sorted({r["suite"] for r in rows}):
        rates = [r["success_rate"] for r in rows if r["suite"] == suite]
        key = f"expert_success_{suite}"
        out[key] = sum(rates) / len(rates)
    return out


def main() -> None:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suites", nargs="+", default=["embedded_goal", "robosuite_stock"])
    p.add_argument("--tasks", nargs="*", default=None, help="only these task names")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--workers", type=int, default=1, help="processes (tasks run in parallel)")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.episodes <= 0:
        p.error("--episodes must be > 0")

    from sim.suites import get_suite

    jobs = [
        (suite, t.name, args.episodes)
        for suite in args.suites
        for t in get_suite(suite).tasks
        if not args.tasks or t.name in args.tasks
    ]
    if not jobs:
        p.error(f"no tasks selected from suites {args.suites} with --tasks {args.tasks}")
    rows: list[dict[str, Any]] = []
    if args.workers > 1:
        with mp.get_context("spawn").Pool(args.workers) as pool:
            for row in pool.imap_unordered(_run_task_star, jobs):
                logger.info("%s/%s: %d/%d", row["suite"], row["task"], row["successes"], row["episodes"])
                rows.append(row)
    else:
        for job in jobs:
            row = run_task(*job)
            logger.info("%s/%s: %d/%d", row["suite"], row["task"], row["successes"], row["episodes"])
            rows.append(row)
    order = {(s, t): i for i, (s, t, _) in enumerate(jobs)}
    rows.sort(key=lambda r: order[(r["suite"], r["task"])])

    # Keep earlier rows of suites (or tasks) not run this time.
    old_path = Path(args.out_dir) / f"{NAME}.json"
    if old_path.exists():
        ran = {(r["suite"], r["task"]) for r in rows}
        ran_suites = set(args.suites) if not args.tasks else set()
        old = json.loads(old_path.read_text())
        kept = [
            r
            for r in old.get("rows", [])
            if (r["suite"], r["task"]) not in ran and r["suite"] not in ran_suites
        ]
        rows = kept + rows
    headline = headline_from(rows)
    path = write_results(
        NAME,
        rows=rows,
        headline=headline,
        config={"episodes": args.episodes, "suites_run": args.suites, "render": "off", "policy": "expert"},
        out_dir=args.out_dir,
    )
    for r in rows:
        logger.info(
            "%-16s %-34s %6.2f  (%d/%d)",
            r["suite"],
            r["task"],
            r["success_rate"],
            r["successes"],
            r["episodes"],
        )
    logger.info("headline: %s -> %s", headline, path)


if __name__ == "__main__":
    main()

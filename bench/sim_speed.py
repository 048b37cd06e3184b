"""Simulation speed: env steps/s per suite on one core, and run_eval throughput with 1 and 2 Ray workers.

1. Env steps/s with both 128x128 cameras rendered every step, the process pinned to one core
   (``sched_setaffinity``; Mesa's llvmpipe threads inherit it). Per suite, the first task (embedded_goal
   shares one scene across tasks) or every task (robosuite_stock: one scene per task); LIBERO suites
   when the ``libero`` extra is installed. Actions: seeded uniform random, so the arm moves and
   contacts happen. Each measurement runs in a fresh subprocess (the first env of a process fixes
   the GL backend, and a clean process gives a clean core pin).
2. run_eval episodes/hour on one workload (expert on embedded_goal, a few tasks x init states,
   128x128 cameras), with 1 and with 2 Ray workers (``force_ray`` for the 1-worker run, so both pay
   the same Ray start), interleaved repeats, the fastest run of each kept; headline
   ``eval_worker_scaling_2x`` is the ratio.

Examples:
    python -m bench.sim_speed                       # full run, writes bench/results/sim_speed.json
    python -m bench.sim_speed --steps 60 --eval_episodes 2 --out /tmp   # quick check
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import write_results

EMBEDDED = {"embedded_goal": "first", "robosuite_stock": "all"}
LIBERO = ("libero_spatial", "libero_object", "libero_goal", "libero_10")


def _measure_env(suite: str, task: str, steps: int, image_size: int, core: int) -> dict:
    """Child-process body: env steps/s of one task on one pinned core."""
    os.sched_setaffinity(0, {core})
    import numpy as np

    from sim.configs import RenderConfig
    from sim.suites import make_env

    t0 = time.perf_counter()
    env = make_env(suite, task, render=RenderConfig(image_size=image_size))
    env.reset(options={"init_state": 0})
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    for _ in range(5):  # warm-up (first renders allocate buffers)
        env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32))
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while n < steps:
        _obs, _r, term, trunc, _info = env.step(rng.uniform(-0.3, 0.3, 7).astype(np.float32))
        n += 1
        if term or trunc:
            env.reset(options={"init_state": 1})
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0  # all threads of this process (llvmpipe's included), on the pinned core
    env.close()
    return {
        "suite": suite,
        "task": task,
        "steps": n,
        "seconds": round(dt, 3),
        "steps_per_s": round(n / dt, 2),
        "cpu_seconds": round(cpu, 3),
        "steps_per_cpu_s": round(n / cpu, 2),
        "build_and_reset_s": round(build_s, 2),
        "image_size": image_size,
        "cores": 1,
    }


def _env_rows(steps: int, image_size: int, suites: list[str]) -> list[dict]:
    from sim.suites import get_suite

    rows = []
    for suite in suites:
        names = [t.name for t in get_suite(suite).tasks]
        tasks = names if EMBEDDED.get(suite) == "all" else names[:1]
        for task in tasks:
            code = (
                "import json, sys; from bench.sim_speed import _measure_env; "
                f"print('RESULT' + json.dumps(_measure_env({suite!r}, {task!r}, {steps}, {image_size}, "
                f"{os.cpu_count() - 1})))"
            )
            env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
            )
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")]
            if not line:
                raise RuntimeError(f"env speed run failed for {suite}/{task}:\n{out.stderr[-3000:]}")
            row = json.loads(line[0][len("RESULT") :])
            row["kind"] = "env_steps"
            rows.append(row)
            print(f"{suite}/{task}: {row['steps_per_s']:.1f} steps/s", flush=True)
    return rows


def _eval_rows(episodes: int, tasks: int, image_size: int, repeats: int) -> list[dict]:
    from sim.configs import RenderConfig
    from sim.eval_configs import EvalConfig
    from sim.run_eval import evaluate
    from sim.suites import get_suite

    names = [t.name for t in get_suite("embedded_goal").tasks][:tasks]
    rows = []
    # Interleaved (1, 2, 1, 2, ...) so a change in background load hits both settings alike.
    for rep, workers in [(r, w) for r in range(repeats) for w in (1, 2)]:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = EvalConfig(
                suite="embedded_goal",
                tasks=names,
                episodes=episodes,
                policy="expert",
                num_workers=workers,
                force_ray=True,
                out_dir=tmp,
                render=RenderConfig(image_size=image_size),
            )
            t0 = time.perf_counter()
            res = evaluate(cfg, command="bench.sim_speed")
            wall = time.perf_counter() - t0
        n = len(res["episodes"])
        steps = sum(e["steps"] for e in res["episodes"])
        rows.append(
            {
                "kind": "run_eval",
                "workers": workers,
                "repeat": rep,
                "episode_wall_s_sum": round(sum(e["wall_s"] for e in res["episodes"]), 2),
                "load_average_1min_after": round(os.getloadavg()[0], 2),
                "episodes": n,
                "env_steps": steps,
                "wall_s": round(wall, 2),
                "episodes_per_hour": round(n / wall * 3600, 1),
                "env_steps_per_s": round(steps / wall, 2),
                "success": res["overall_success"],
                "tasks": names,
                "image_size": image_size,
            }
        )
        print(
            f"run_eval {workers} worker(s): {n} episodes in {wall:.1f}s ({n / wall * 3600:.0f} episodes/h)",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="timed env steps per task")
    ap.add_argument("--image_size", type=int, default=128)
    ap.add_argument(
        "--eval_episodes", type=int, default=4, help="init states per task in the run_eval workload"
    )
    ap.add_argument("--eval_tasks", type=int, default=4, help="embedded_goal tasks in the run_eval workload")
    ap.add_argument(
        "--eval_repeats", type=int, default=2, help="interleaved runs per worker count (best kept)"
    )
    ap.add_argument("--skip_eval", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = ap.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

    suites = list(EMBEDDED)
    if importlib.util.find_spec("libero") is not None:
        suites += list(LIBERO)
    load_before = os.getloadavg()
    rows = _env_rows(args.steps, args.image_size, suites)
    if not args.skip_eval:
        rows += _eval_rows(args.eval_episodes, args.eval_tasks, args.image_size, args.eval_repeats)
    headline: dict[str, float] = {}
    per_suite: dict[str, list[dict]] = {}
    for r in rows:
        if r["kind"] == "env_steps":
            per_suite.setdefault(r["suite"], []).append(r)
    for suite, rs in per_suite.items():
        # steps/s of the suite = total steps / total time over its measured tasks
        headline[f"steps_per_s_{suite}"] = round(
            sum(r["steps"] for r in rs) / sum(r["seconds"] for r in rs), 2
        )
    # The headline of the issue: the default embedded suite (embedded_goal, one scene for all its tasks).
    headline["steps_per_s_embedded"] = headline["steps_per_s_embedded_goal"]
    # Wall-clock steps/s shrink when other processes share the pinned core; steps per CPU-second do not.
    eg = per_suite["embedded_goal"]
    headline["steps_per_cpu_s_embedded"] = round(
        sum(r["steps"] for r in eg) / sum(r["cpu_seconds"] for r in eg), 2
    )
    ev: dict[int, dict] = {}
    for r in rows:  # best (least disturbed) run of each worker count
        if r["kind"] == "run_eval" and (r["workers"] not in ev or r["wall_s"] < ev[r["workers"]]["wall_s"]):
            ev[r["workers"]] = r
    if 1 in ev and 2 in ev:
        headline["eval_episodes_per_hour_1_worker"] = ev[1]["episodes_per_hour"]
        headline["eval_episodes_per_hour_2_workers"] = ev[2]["episodes_per_hour"]
        headline["eval_worker_scaling_2x"] = round(ev[2]["episodes_per_hour"] / ev[1]["episodes_per_hour"], 3)
    config = {
        **vars(args),
        "out": str(args.out) if args.out else None,
        "suites": suites,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
    }
    path = write_results("sim_speed", rows=rows, headline=headline, config=config, out_dir=args.out)
    print(json.dumps(headline, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Where closed-loop pick-and-place episodes fail: the furthest milestone each one reaches.

For ``embedded_goal`` tasks (pick one cube, place it): a policy runs from fixed init states as in
``run_eval`` (same per-episode seeds), and the simulator's privileged state classifies each episode
by the furthest milestone it reached:

* ``none``: the gripper never got within ``near_xy`` of the cube horizontally, below ``near_dz``
  above its centre;
* ``reached``: it did, but never closed there;
* ``closed``: the gripper was commanded closed while there, but the cube never left the table;
* ``lifted``: the cube was lifted (the expert's own check: centre > table + half size + 2.5 cm);
* ``success``: the task's success predicate held.

It also records the step of each milestone, the closest horizontal approach, and which cube the
gripper came closest to while low (within 8 cm above it): a policy that ignores the instruction
goes for the wrong cube. Examples::

    python -m bench.failure_modes --policy=outputs/gpu_ckpt_s4/ckpt/cot --tasks=put_red_cube_on_plate
    python -m bench.failure_modes --policy=<ckpt> --episodes=20 --init_split=train
    python -m bench.failure_modes --policy=expert --tasks=put_red_cube_in_bin --episodes=3

Writes ``<out_dir>/failure_modes.json`` (per episode and per task counts) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sim.policies import ChunkExecutor, make_policy
from sim.run_eval import episode_seed, resolve_tasks
from sim.suites import make_env
from vla.fileio import atomic_write_text

MILESTONES = ("none", "reached", "closed", "lifted", "success")


def cube_of(env: Any) -> str:
    """The cube an ``embedded_goal`` task picks (``task.extra["cube"]``)."""
    cube = dict(env.task.extra).get("cube")
    if cube is None:
        raise ValueError(
            f"task {env.task.name!r} names no cube to pick: failure modes cover embedded_goal tasks"
        )
    return cube


def run_episode(
    env: Any,
    executor: ChunkExecutor,
    *,
    init_state: int,
    seed: int,
    max_steps: int,
    near_xy: float = 0.02,
    near_dz: float = 0.03,
) -> dict[str, Any]:
    """Roll out one episode and return its milestones (first step of each) and closest approach."""
    cube = cube_of(env)
    obs, _ = env.reset(seed=seed, options={"init_state": init_state})
    executor.reset(seed=seed)
    p0 = env.privileged()
    half = float(p0["objects"]["cube_half"])
    table = float(p0["table_height"])
    first: dict[str, int] = {}
    cubes = [name for name in ("red", "green", "blue") if name in p0["objects"]]
    min_xy_each = dict.fromkeys(cubes, float("inf"))  # low passes only: eef within near_dz + 5 cm of a cube
    min_xy = float("inf")
    steps = 0
    for t in range(max_steps):
        action = executor.act(obs)
        p = env.privileged()
        c = np.asarray(p["objects"][cube]["pos"], dtype=float)
        xy = float(np.linalg.norm(np.asarray(p["eef_pos"][:2]) - c[:2]))
        min_xy = min(min_xy, xy)
        for name in cubes:
            o = np.asarray(p["objects"][name]["pos"], dtype=float)
            if p["eef_pos"][2] < o[2] + near_dz + 0.05:
                min_xy_each[name] = min(min_xy_each[name], float(np.linalg.norm(p["eef_pos"][:2] - o[:2])))
        near = xy < near_xy and p["eef_pos"][2] < c[2] + near_dz
        if near:
            first.setdefault("reached", t)
            if action[6] > 0:
                first.setdefault("closed", t)
        if c[2] > table + half + 0.025:
            first.setdefault("lifted", t)
        obs, _, term, trunc, info = env.step(action)
        steps = t + 1
        if info.get("success"):
            first.setdefault("success", t)
            break
        if term or trunc:
            break
    reached = max((m for m in MILESTONES[1:] if m in first), key=MILESTONES.index, default="none")
    return {
        "task": env.task.name,
        "init_state": init_state,
        "seed": seed,
        "steps": steps,
        "furthest": reached,
        "first_step": first,
        "min_xy_to_cube_m": round(min_xy, 4),
        "min_low_xy_to_each_cube_m": {k: round(v, 4) for k, v in min_xy_each.items()},
        "closest_low_cube": min(low, key=low.get)
        if (low := {k: v for k, v in min_xy_each.items() if v < np.inf})
        else None,
    }


def summarize(episodes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per task: how many episodes stopped at each milestone."""
    out: dict[str, dict[str, int]] = {}
    for task in dict.fromkeys(e["task"] for e in episodes):
        counts = Counter(e["furthest"] for e in episodes if e["task"] == task)
        out[task] = {m: counts.get(m, 0) for m in MILESTONES}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the episodes, write ``failure_modes.json``, print a table; returns the document."""
    from tqdm import tqdm

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", required=True, help="expert, random or a checkpoint directory")
    ap.add_argument("--suite", default="embedded_goal")
    ap.add_argument("--tasks", default="", help="comma-separated task names (default: all of the suite)")
    ap.add_argument("--episodes", type=int, default=20, help="episodes per task (init states 0..N-1)")
    ap.add_argument("--init_split", default="eval", choices=("eval", "train"))
    ap.add_argument("--max_steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out_dir", default="outputs/failure_modes")
    args = ap.parse_args(argv)
    if args.episodes < 1:
        raise SystemExit("--episodes must be >= 1")
    try:
        tasks = resolve_tasks(args.suite, [t for t in args.tasks.split(",") if t])
    except ValueError as e:
        raise SystemExit(str(e)) from e
    episodes: list[dict[str, Any]] = []
    bar = tqdm(total=len(tasks) * args.episodes, desc="episodes", file=sys.stderr)
    for task_index, task in tasks:
        env = make_env(args.suite, task)
        cube_of(env)
        env.use_init_split(args.init_split)
        executor = ChunkExecutor(make_policy(args.policy, env, seed=args.seed))
        for i in range(args.episodes):
            seed = episode_seed(args.seed, task_index, i)
            episodes.append(run_episode(env, executor, init_state=i, seed=seed, max_steps=args.max_steps))
            bar.update(1)
            bar.set_postfix(last=episodes[-1]["furthest"])
        env.close()
    bar.close()
    doc = {
        "policy": args.policy,
        "suite": args.suite,
        "init_split": args.init_split,
        "episodes_per_task": args.episodes,
        "summary": summarize(episodes),
        "episodes": episodes,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "failure_modes.json", json.dumps(doc, indent=1))
    print(f"{'task':32}" + "".join(f"{m:>9}" for m in MILESTONES))
    for task, counts in doc["summary"].items():
        print(f"{task:32}" + "".join(f"{counts[m]:>9}" for m in MILESTONES))
    return doc


if __name__ == "__main__":
    main()

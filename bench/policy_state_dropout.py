"""State dropout on embedded_goal: does taking the robot state away from part of training help the policy?

The fifth session found a proprioceptive shortcut: with the arm's state in the prefix, the policy fits the
demos from where the arm is and never learns where the named cube is (bench/notes/policy_embedded.md).
``policy.state_dropout`` (vla/configs.py) replaces the state token by a learned "no state" embedding on a
share of training samples. This module makes the single-task windows folder and merges the device runs
into ``bench/results/policy_state_dropout.json``.

Device runs (one NVIDIA H200, ``bench.policy_embedded train`` then ``scripts/device/eval_shards.py``,
50 eval init states per task, 300 steps an episode):

    # single task: 100 DART demos of put_red_cube_on_plate (9,692 frames), 1500 x 256, lr 8e-4, shift 4
    python -m bench.policy_state_dropout subset --windows=data/windows/dart_goal \
        --task="put the red cube on the plate" --out=data/windows/red_plate
    #   device (carry data/windows/red_plate, the text cache, data/carry_whl, .devbundle):
    #   python3 -m bench.policy_embedded train --variant=no_cot --windows=data/windows/red_plate \
    #       --steps=1500 --batch_size=256 --image_shift=4 --lr=8e-4 --state_dropout={0,0.5}
    # multi-task: all 899 demos (9 tasks), 2000 x 256, --aux_target_weight=5 --state_dropout={1.0,0.5};
    #   evaluated on the three plate tasks
    python -m bench.policy_state_dropout report \
        --run single_sd0 TRAIN_LOG_OR_JSON EVAL_JSON --run single_sd0.5 ... --run multi_sd0.5 ...

The FiLM runs (seventh session, ``nvidia-h200-x2``) use the same two commands on the three plate tasks
(``subset --task ... --task ... --task ... --out=data/windows/plate3``; train with ``--state_dropout=0.5``
and ``--film_dim=384`` / ``--colour_swap=0.5`` / ``--variant=cot``) and write their own file with
``report --name policy_film``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from bench.common import RESULTS_DIR, plot_task_success

BASELINE = Path(RESULTS_DIR) / "policy_embedded.json"


def subset(windows: str, tasks: str | list[str], out: str) -> Path:
    """Write a windows folder holding only the episodes of the given instructions (renumbered).

    Episodes and task indices are renumbered densely, in the order the tasks are given.
    """
    import torch

    from vla.windows import load_windows, save_windows

    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    if not tasks:
        raise SystemExit("subset: name at least one --task")
    w = load_windows(windows)
    missing = [t for t in tasks if t not in w.tasks]
    if missing:
        raise SystemExit(f"{windows} has no task {missing[0]!r}; it has: {w.tasks}")
    old = torch.tensor([w.tasks.index(t) for t in tasks])
    keep = w.task_index[:, None] == old[None, :]
    rows = keep.any(1).nonzero().squeeze(1)
    new_task = keep[rows].float().argmax(1)
    _, episodes = torch.unique(w.episode_index[rows], return_inverse=True)
    sub = dataclasses.replace(
        w,
        frames={k: v[rows] for k, v in w.frames.items()},
        actions=w.actions[rows],
        states=w.states[rows],
        episode_index=episodes,
        task_index=new_task.to(w.task_index.dtype),
        tasks=tasks,
        target_pos=None if w.target_pos is None else w.target_pos[rows],
    )
    path = save_windows(sub, out)
    print(f"wrote {path}: {len(rows)} frames, {int(episodes.max()) + 1} episodes of {tasks}")
    return path


def train_record(path: str) -> dict:
    """``bench_train.json``, or the same record as the last JSON line of a training log."""
    text = Path(path).read_text()
    if path.endswith(".json"):
        return json.loads(text)
    for line in reversed(text.replace("\r", "\n").splitlines()):
        if line.startswith("{") and '"variant"' in line:
            return json.loads(line)
    raise SystemExit(f"{path}: no training record (a JSON line with 'variant') in it")


def baseline_rows(tasks: list[str]) -> dict[str, dict]:
    """The earlier multi-task no-CoT run (no state dropout, no aux; policy_embedded.json), same tasks."""
    if not BASELINE.is_file():
        return {}
    rows = [r for r in json.loads(BASELINE.read_text())["rows"] if r.get("variant") == "no_cot"]
    got = {r["task"]: r for r in rows if r.get("task") in tasks}
    return got if len(got) == len(tasks) else {}


DEFAULT_DEVICE = "train and eval: NVIDIA H200 (eval: its 16-core host, EGL, run_eval --vector_envs=7)"


def report(
    runs: list[list[str]], out: Path | None, name: str = "policy_state_dropout", device: str = DEFAULT_DEVICE
) -> dict:
    """Merge (run name, training record, eval JSON) triples into ``bench/results/<name>.json``."""
    from bench.common import write_results

    rows, headline = [], {}
    for run, train_path, eval_path in runs:
        tr = train_record(train_path)
        ev = json.loads(Path(eval_path).read_text())
        if not ev.get("complete"):
            raise SystemExit(f"{eval_path} is incomplete (missing {ev.get('missing')}); rerun its shards")
        succ = sum(t["successes"] for t in ev["tasks"].values())
        n = sum(t["episodes"] for t in ev["tasks"].values())
        rows.append(
            {
                "run": run,
                "data": tr["data"],
                "steps": tr["steps"],
                "batch_size": tr["batch_size"],
                "lr": tr["lr"],
                "state_dropout": tr.get("state_dropout", 0.0),
                "aux_target_weight": tr.get("aux_target_weight", 0.0),
                "film_dim": tr.get("film_dim", 0),
                "colour_swap": tr.get("colour_swap", 0.0),
                "variant": tr["variant"],
                "train_minutes": tr["minutes"],
                "final_action_loss": tr["final"]["action_loss"],
                "train_device": tr["device"],
                "tasks": {k: [t["successes"], t["episodes"], t["ci95"]] for k, t in ev["tasks"].items()},
                "success": succ / n,
                "successes": succ,
                "episodes": n,
                "ci95": ev["overall_ci95"] if len(ev["tasks"]) == 1 else None,
                "eval_command": ev.get("command"),
            }
        )
        headline[f"success_{run}"] = succ / n
        base = baseline_rows(list(ev["tasks"]))
        if base:
            bs = sum(round(r["success_rate"] * r["episodes"]) for r in base.values())
            bn = sum(r["episodes"] for r in base.values())
            headline[f"multitask_no_cot_baseline_same_tasks_{run}"] = bs / bn
    path = write_results(
        name,
        rows=rows,
        headline=headline,
        config={"runs": [r[0] for r in runs], "baseline": str(BASELINE)},
        device=device,
        out_dir=out,
    )
    plot_task_success(rows, path.with_suffix(".png"), title=f"{name}: closed-loop success per task")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subset", help="a windows folder with only some tasks' episodes")
    s.add_argument("--windows", required=True)
    s.add_argument(
        "--task", required=True, action="append", help="an instruction, exactly as in the folder (repeatable)"
    )
    s.add_argument("--out", required=True)
    r = sub.add_parser("report", help="merge device runs into bench/results/policy_state_dropout.json")
    r.add_argument("--run", nargs=3, action="append", required=True, metavar=("NAME", "TRAIN", "EVAL"))
    r.add_argument("--out_dir", type=Path, default=None, help="default bench/results")
    r.add_argument(
        "--name", default="policy_state_dropout", help="results file name (bench/results/NAME.json)"
    )
    r.add_argument("--device", default=DEFAULT_DEVICE, help="where training and eval ran (recorded)")
    args = ap.parse_args(argv)
    if args.cmd == "subset":
        subset(args.windows, args.task, args.out)
    else:
        print(report(args.run, args.out_dir, args.name, args.device))


if __name__ == "__main__":
    main()

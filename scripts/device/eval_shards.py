"""Run `sim.run_eval` for several policies x tasks as independent processes, then merge per policy.

Each shard is one ``python -m sim.run_eval`` process (one task, a contiguous range of init states,
``--num_workers=1``: no Ray) with ``OMP_NUM_THREADS=1``, writing ``<out_dir>/<variant>/<task>/init<a>-<b>/``;
``--jobs`` of them run at a time. A shard whose ``results.json`` is already complete is skipped, so a
run cut by a call's time limit resumes where it stopped. The merge writes ``<out_dir>/<variant>/results.json``
in run_eval's own shape (`sim.run_eval.summarize`: ``mean_success``, ``tasks: {task: {success_rate,
episodes, ci95, ...}}``, per-episode records, protocol, versions) plus the shards it came from, and
``<out_dir>/summary.json`` with throughput (env steps/s, episodes/s) and failed shards' log tails.

Examples (on the device, after ``source scripts/device/setup_env.sh``; one command each):
    python3 scripts/device/eval_shards.py --policy expert=expert --policy ckpt=/tmp/ckpt
        --episodes 50 --jobs 15 --policy_device cuda --out_dir /tmp/evals --export_dir $OUT
    python3 scripts/device/eval_shards.py --policy expert=expert --tasks put_red_cube_on_plate
        --episodes 50 --parts 5 -- --render.image_size=128
    python3 scripts/device/eval_shards.py --policy expert=expert --merge_only --out_dir /tmp/evals
    python3 scripts/device/eval_shards.py --policy ckpt=/tmp/ckpt --episodes 50 --parts 1 --jobs 2
        --vector_envs 7 --policy_device cuda --out_dir /tmp/evals
Arguments after ``--`` go to every run_eval process unchanged.

``--vector_envs N`` (N > 1) runs each shard as ``run_eval --vector_envs=N`` (`sim.vector_eval`): one
process holds the policy and answers N env subprocesses in one batched call per replanning point, instead
of every shard holding its own copy of the policy (and, on a GPU, its own CUDA context time-sliced with
the others). On a 16-core single-GPU box, ``--parts 1 --jobs 2 --vector_envs 7`` keeps 14 envs stepping
and two policy processes on the GPU. It needs checkpoint policies (``infer_batch``): not ``expert`` or
``random``. Shard folders, the completeness check and the merge are the same in both modes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass
class Shard:
    """One run_eval process: a policy variant, a task, init states ``first .. first + episodes - 1``."""

    variant: str
    policy: str
    task: str
    first: int
    episodes: int
    out_dir: Path
    proc: subprocess.Popen | None = None
    started: float = 0.0
    wall_s: float = 0.0
    status: str = "pending"  # pending | running | done | skipped | failed | killed

    @property
    def results(self) -> Path:
        """The shard's ``results.json``."""
        return self.out_dir / "results.json"

    def is_complete(self) -> bool:
        """Whether ``results.json`` holds every episode of this shard for this policy."""
        try:
            doc = json.loads(self.results.read_text())
            return (
                doc["policy"] == self.policy
                and doc["tasks"][self.task]["episodes"] == self.episodes
                and doc["protocol"]["init_states"][0] == self.first
            )
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return False


def parse_policies(specs: list[str]) -> dict[str, str]:
    """``NAME=SPEC`` (or a bare SPEC, named by its last path part) -> {name: spec}."""
    out: dict[str, str] = {}
    for s in specs:
        name, sep, spec = s.partition("=")
        if not sep:
            name, spec = Path(s.rstrip("/")).name or s, s
        if not name or not spec:
            raise SystemExit(f"--policy {s!r}: use NAME=SPEC, e.g. --policy expert=expert or ckpt=/tmp/ckpt")
        if name in out:
            raise SystemExit(f"--policy names {name!r} twice; give each variant its own NAME=")
        out[name] = spec
    return out


def split_range(first: int, episodes: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (first, count) ranges covering ``episodes`` init states, sizes within one."""
    parts = max(1, min(parts, episodes))
    base, extra = divmod(episodes, parts)
    out, a = [], first
    for k in range(parts):
        n = base + (k < extra)
        out.append((a, n))
        a += n
    return out


def make_shards(
    policies: dict[str, str], tasks: list[str], first: int, episodes: int, parts: int, out_dir: Path
) -> list[Shard]:
    """Shards in launch order: task by task, each task's parts, every variant (variants keep pace)."""
    return [
        Shard(v, spec, task, a, n, out_dir / v / task / f"init{a:03d}-{a + n - 1:03d}")
        for task in tasks
        for a, n in split_range(first, episodes, parts)
        for v, spec in policies.items()
    ]


def shard_command(s: Shard, suite: str, seed: int, extra: list[str], vector_envs: int = 1) -> list[str]:
    """The run_eval command line of one shard (``--vector_envs=N`` when ``vector_envs > 1``)."""
    return [
        sys.executable,
        "-m",
        "sim.run_eval",
        f"--suite={suite}",
        f"--tasks=[{s.task}]",
        f"--episodes={s.episodes}",
        f"--first_init_state={s.first}",
        f"--policy={s.policy}",
        "--num_workers=1",
        f"--seed={seed}",
        f"--out_dir={s.out_dir}",
        *([f"--vector_envs={vector_envs}"] if vector_envs > 1 else []),
        *extra,
    ]


def shard_env(policy_device: str | None, text_cache: Path | None) -> dict[str, str]:
    """Environment of every shard: one CPU thread each, the policy's device and the instruction cache."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.update({k: "1" for k in THREAD_VARS})
    pp = env.get("PYTHONPATH", "")
    if str(REPO) not in pp.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pp, str(REPO)) if p)
    if policy_device:
        env["VLA_POLICY_DEVICE"] = policy_device
    if text_cache is not None:  # vla.language preloads these (':'-separated files)
        files = sorted(text_cache.glob("*.safetensors")) if text_cache.is_dir() else [text_cache]
        env["VLA_TEXT_CACHE"] = os.pathsep.join(str(f.resolve()) for f in files)
    return env


def _log_tail(s: Shard, n: int = 2000) -> str:
    try:
        return (s.out_dir / "log.txt").read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_shards(
    shards: list[Shard], jobs: int, cmd_args: tuple, env: dict[str, str], time_limit_s: float | None
) -> float:
    """Run the pending shards, ``jobs`` at a time; return the wall time spent.

    With ``time_limit_s``, no shard starts once the median shard time would overrun the limit, and
    shards still running at the limit are killed (status ``killed``; a later call reruns them).
    """
    t0 = time.perf_counter()
    pending = [s for s in shards if s.status == "pending"]
    running: list[Shard] = []
    while pending or running:
        now = time.perf_counter() - t0
        done_walls = [s.wall_s for s in shards if s.status == "done"]
        est = statistics.median(done_walls) if done_walls else 0.0
        while pending and len(running) < jobs and (time_limit_s is None or now + est < time_limit_s):
            s = pending.pop(0)
            s.out_dir.mkdir(parents=True, exist_ok=True)
            log = open(s.out_dir / "log.txt", "w")  # noqa: SIM115 (closed with the process)
            s.proc = subprocess.Popen(
                shard_command(s, *cmd_args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
            log.close()
            s.started, s.status = time.perf_counter(), "running"
            running.append(s)
        if time_limit_s is not None and now >= time_limit_s:
            for s in running:
                s.proc.kill()  # same session: a killed launcher's shards go with the call
                s.proc.wait()
                s.status, s.wall_s = "killed", time.perf_counter() - s.started
            running = []
            break
        if not running and pending:  # nothing fits in the time left
            break
        time.sleep(0.2)
        for s in list(running):
            if s.proc.poll() is not None:
                s.wall_s = time.perf_counter() - s.started
                s.status = "done" if s.proc.returncode == 0 and s.is_complete() else "failed"
                running.remove(s)
                print(
                    f"[{time.perf_counter() - t0:7.1f}s] {s.status:<6} {s.variant}/{s.task} "
                    f"init {s.first}-{s.first + s.episodes - 1} in {s.wall_s:.1f}s",
                    flush=True,
                )
    return time.perf_counter() - t0


def merge_variant(
    variant: str, policy: str, shards: list[Shard], suite: str, jobs: int
) -> dict[str, Any] | None:
    """Merge the complete shards of one variant into run_eval's results shape; None if none is complete."""
    from sim.configs import RenderConfig
    from sim.eval_configs import EvalConfig
    from sim.run_eval import resolve_tasks, summarize

    docs = [
        (s, json.loads(s.results.read_text())) for s in shards if s.variant == variant and s.is_complete()
    ]
    if not docs:
        return None
    records: list[dict[str, Any]] = []
    infos: dict[str, dict[str, Any]] = {}
    for s, d in docs:
        records.extend(d["episodes"])
        p = d["protocol"]
        infos[s.task] = {
            "instruction": d["tasks"][s.task]["instruction"],
            "max_steps": p["max_steps"][s.task],
            "task_max_steps": p["task_max_steps"][s.task],
            "wait_steps": p["wait_steps"][s.task],
            "control_fps": p["control_fps"],
            "policy_id": d["policy_id"],
            "policy_metadata": d["policy_metadata"],
            "replan_every": p["replan_every"],
            "versions": d["versions"],
        }
    order = [name for _, name in resolve_tasks(suite, []) if name in infos]
    records.sort(key=lambda r: (order.index(r["task"]), r["init_state"]))
    first_doc = docs[0][1]
    p0 = first_doc["protocol"]
    ours = [s for s in shards if s.variant == variant]
    vector_envs = max(int(d["protocol"].get("vector_envs", 1)) for _, d in docs)  # absent before it existed
    cfg = EvalConfig(
        suite=suite,
        tasks=order,
        episodes=max(sum(1 for r in records if r["task"] == t) for t in order),
        first_init_state=min(s.first for s in ours),
        policy=policy,
        seed=first_doc["seed"],
        max_steps=p0["max_steps_override"],
        vector_envs=vector_envs,
        render=RenderConfig(**p0["render"]),
    )
    wall = sum(d["wall_time_s"] for _, d in docs)
    res = summarize(cfg, records, infos, order, wall_s=wall)
    missing = [
        f"{s.task} init {s.first}-{s.first + s.episodes - 1} ({s.status})"
        for s in ours
        if not s.is_complete()
    ]
    steps = sum(r["steps"] for r in records)
    ep_wall = sum(r["wall_s"] for r in records)
    busy = ep_wall if vector_envs == 1 else wall  # process-seconds spent on episodes
    res.update(
        complete=not missing,
        missing=missing,
        parallel_processes=jobs,
        wall_time_s=round(wall, 3),  # summed over shards (process-seconds), not elapsed time
        shards=[
            {
                "task": s.task,
                "init_states": [s.first, s.first + s.episodes - 1],
                "out_dir": str(s.out_dir),
                "wall_time_s": d["wall_time_s"],
            }
            for s, d in docs
        ],
        throughput={
            "env_steps": steps,
            "episodes": len(records),
            # with env subprocesses a shard's episodes overlap: their walls add up to more than the
            # shard's, so the rate is over the shard's wall and the overhead cannot be told apart
            "env_steps_per_s_per_process": round(steps / busy, 2) if busy else None,
            "episode_s_mean": round(ep_wall / len(records), 3),
            "shard_overhead_s_mean": round((wall - ep_wall) / len(docs), 2) if vector_envs == 1 else None,
        },
        command=" ".join(sys.argv),
    )
    return res


def main(argv: list[str] | None = None) -> int:
    """CLI entry; returns the exit status (1 when a shard failed or was cut)."""
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--policy", action="append", required=True, help="NAME=SPEC (repeat): expert, random, dir, URL"
    )
    ap.add_argument("--suite", default="embedded_goal")
    ap.add_argument("--tasks", nargs="+", default=[], help="default: every task of the suite")
    ap.add_argument("--episodes", type=int, default=50, help="init states per task")
    ap.add_argument("--first_init_state", type=int, default=0)
    ap.add_argument("--parts", type=int, default=1, help="shards per task (splits its init states)")
    ap.add_argument("--jobs", type=int, default=15, help="processes at a time")
    ap.add_argument(
        "--vector_envs",
        type=int,
        default=1,
        help="env subprocesses per shard around one batched policy (run_eval --vector_envs); 1: none",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out_dir", type=Path, default=Path("outputs/eval_shards"))
    ap.add_argument(
        "--export_dir", type=Path, default=None, help="also copy <variant>.json and summary.json here"
    )
    ap.add_argument(
        "--policy_device", default=None, help="VLA_POLICY_DEVICE of checkpoint policies (cuda, cpu)"
    )
    ap.add_argument(
        "--text_cache",
        type=Path,
        default=None,
        help="instruction feature file, or folder of them (-> VLA_TEXT_CACHE)",
    )
    ap.add_argument("--time_limit_s", type=float, default=None, help="stop (and kill shards) after this long")
    ap.add_argument("--rerun", action="store_true", help="rerun shards whose results are already complete")
    ap.add_argument("--merge_only", action="store_true", help="merge what is there, run nothing")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from sim.policies import needs_env
    from sim.run_eval import resolve_tasks, write_json_atomic

    policies = parse_policies(args.policy)
    if args.vector_envs < 1:
        raise SystemExit(
            f"--vector_envs must be >= 1 (1 runs each shard without env subprocesses), got {args.vector_envs}"
        )
    unbatched = [f"{n}={s}" for n, s in policies.items() if needs_env(s) or s.split(":")[0] == "random"]
    if args.vector_envs > 1 and unbatched and not args.merge_only:
        raise SystemExit(
            f"--vector_envs {args.vector_envs} needs policies with infer_batch (checkpoint directories); "
            f"{unbatched} have none: drop --vector_envs or evaluate them in a separate call"
        )
    tasks = [name for _, name in resolve_tasks(args.suite, args.tasks)]
    if args.text_cache is not None and not args.text_cache.exists():
        raise SystemExit(f"--text_cache {args.text_cache} does not exist (scripts/device/make_text_cache.py)")
    shards = make_shards(policies, tasks, args.first_init_state, args.episodes, args.parts, args.out_dir)
    for s in shards:
        if not args.rerun and s.is_complete():
            s.status = "skipped"
    todo = sum(s.status == "pending" for s in shards)
    print(
        f"{len(shards)} shards ({todo} to run, {args.jobs} at a time): {len(policies)} policies x "
        f"{len(tasks)} tasks x {len(shards) // max(1, len(policies) * len(tasks))} parts",
        flush=True,
    )
    wall = 0.0
    if not args.merge_only and todo:
        env = shard_env(args.policy_device, args.text_cache)
        cmd_args = (args.suite, args.seed, extra, args.vector_envs)
        wall = run_shards(shards, args.jobs, cmd_args, env, args.time_limit_s)

    summary: dict[str, Any] = {
        "wall_s": round(wall, 2),
        "jobs": args.jobs,
        "vector_envs": args.vector_envs,
        "variants": {},
        "failed": [],
    }
    new = [s for s in shards if s.status == "done"]
    if new and wall > 0:
        docs = [json.loads(s.results.read_text()) for s in new]
        steps = sum(r["steps"] for d in docs for r in d["episodes"])
        eps = sum(len(d["episodes"]) for d in docs)
        summary.update(
            env_steps=steps,
            episodes=eps,
            env_steps_per_s=round(steps / wall, 1),
            episodes_per_s=round(eps / wall, 3),
        )
    for s in shards:
        if s.status in ("failed", "killed"):
            summary["failed"].append({"shard": str(s.out_dir), "status": s.status, "log_tail": _log_tail(s)})
    for variant, spec in policies.items():
        res = merge_variant(variant, spec, shards, args.suite, args.jobs)
        if res is None:
            print(f"{variant}: no complete shard to merge")
            continue
        write_json_atomic(args.out_dir / variant / "results.json", res)
        summary["variants"][variant] = {
            "policy": spec,
            "mean_success": res["mean_success"],
            "complete": res["complete"],
            "missing": len(res["missing"]),
            **res["throughput"],
            "tasks": {t: [v["successes"], v["episodes"]] for t, v in res["tasks"].items()},
        }
        if args.export_dir is not None:
            args.export_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(args.out_dir / variant / "results.json", args.export_dir / f"{variant}.json")
    write_json_atomic(args.out_dir / "summary.json", summary)
    if args.export_dir is not None:
        shutil.copyfile(args.out_dir / "summary.json", args.export_dir / "summary.json")
    print(json.dumps({k: v for k, v in summary.items() if k != "failed"}, indent=1))
    for f in summary["failed"]:
        print(f"FAILED {f['shard']} ({f['status']}):\n{f['log_tail']}")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

"""Rollout evaluation: N episodes per task from fixed init states, in-process, on Ray actors or batched.

Episode i of a task starts from the task's init state ``first_init_state + i`` (the env's reset restores it
and runs the task's wait steps), then the policy acts until success or the step limit. Results go to
``<out_dir>/results.json`` (written atomically): per-task success rate, episode count and Wilson 95%
interval, mean success, per-episode records, the policy id, the seed, the protocol (step limits, wait
steps, replanning, render settings) and package versions. Optional mp4 videos show agentview beside wrist,
and the policy's predicted subgoal image when it returns one. ``--vector_envs=N`` keeps one policy in this
process and steps N envs in subprocesses, querying the policy once per replanning point for all of them
(`sim.vector_eval`: one GPU, many cores).

Examples:
    python -m sim.run_eval --suite=embedded_goal --policy=expert --episodes=5
    vla-sim-eval --suite=robosuite_stock --tasks='[lift]' --policy=random --episodes=10 --num_workers=2
    vla-sim-eval --config_path=configs/sim/eval_embedded_expert.yaml --video=true
    vla-sim-eval --suite=embedded_goal --policy=http://127.0.0.1:8000 --episodes=50
    VLA_POLICY_DEVICE=cuda vla-sim-eval --suite=embedded_goal --policy=/tmp/ckpt --vector_envs=8
"""

import dataclasses
import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import draccus
import numpy as np
from tqdm.auto import tqdm

from sim.eval_configs import EvalConfig
from sim.policies import (
    ChunkExecutor,
    is_url,
    make_policy,
    needs_env,
    policy_id,
    policy_metadata,
    validate_spec,
)

logger = logging.getLogger(__name__)

RESULTS_SCHEMA_VERSION = 1
IMAGE_KEYS = ("observation.images.agentview", "observation.images.wrist")
VERSIONED_PACKAGES = ("robosuite", "mujoco", "numpy", "gymnasium", "torch", "hf-libero", "lerobot", "ray")
# Env vars a Ray worker needs to render headless exactly as the driver does.
_FORWARDED_ENV = (
    "VLA_SERVE_API_KEY",  # a server URL policy's key travels by environment, never into results.json
    "MUJOCO_GL",
    "PYOPENGL_PLATFORM",
    "MUJOCO_EGL_DEVICE_ID",
    "HF_HUB_OFFLINE",
    "LIBERO_CONFIG_PATH",
)


def wilson_ci(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) when ``n == 0``."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def episode_seed(seed: int, task_index: int, init_state: int) -> int:
    """Per-episode seed derived from the run seed, so any episode reruns alone with the same randomness."""
    return int(np.random.SeedSequence([seed, task_index, init_state]).generate_state(1)[0])


@dataclass
class Episode:
    """One rollout. ``frames`` holds (observation, executed action) pairs when recorded."""

    success: bool
    steps: int
    wall_s: float
    frames: list[tuple[dict[str, Any], np.ndarray]] = field(default_factory=list)
    subgoals: list[np.ndarray | None] = field(default_factory=list)


def control_fps(env: Any) -> int:
    """The env's control rate in Hz (gymnasium's ``metadata["render_fps"]``; robosuite runs at 20)."""
    return int(getattr(env, "metadata", {}).get("render_fps", 20))


def step_limit(env: Any, max_steps: int | None) -> int:
    """The episode's step limit: the task's own, or the override when that is smaller."""
    limit = int(env.task.max_steps)
    return limit if max_steps is None else min(limit, int(max_steps))


def run_episode(
    env: Any,
    executor: ChunkExecutor,
    init_state: int,
    *,
    seed: int,
    max_steps: int | None = None,
    record: bool = False,
    action_noise: float = 0.0,
    record_clean_action: bool = False,
) -> Episode:
    """Run one episode from fixed init state ``init_state`` until success or the step limit.

    Args:
        env: A `SimEnv`.
        executor: Runs the policy's chunks.
        init_state: Index of the fixed init state.
        seed: Episode seed (env reset, random policies, action noise).
        max_steps: Optional step limit below the task's own.
        record: Keep every (observation, executed action) pair and the policy's subgoal images.
        action_noise: Std of Gaussian noise on the 6 arm dims of each action (clipped to [-1, 1]).
        record_clean_action: Record the policy's own action instead of the noisy one that was executed
            (DART, Laskey et al. 2017: the noise widens the states visited, the labels stay the expert's).

    Returns:
        The `Episode`; ``success`` is the env's success flag at the last step.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed, options={"init_state": int(init_state)})
    executor.reset(seed=seed)
    ep = Episode(success=False, steps=0, wall_s=0.0)
    limit = step_limit(env, max_steps)
    for _ in range(limit):
        action = executor.act(obs).copy()
        clean = action.copy() if record_clean_action else action
        if action_noise > 0:
            action[:6] += rng.normal(0.0, action_noise, 6).astype(np.float32)
            np.clip(action, -1.0, 1.0, out=action)
        if record:
            ep.frames.append((obs, clean))
            sub = executor.last_output.get("subgoal_image")
            ep.subgoals.append(None if sub is None else np.asarray(sub))
        obs, _reward, terminated, truncated, info = env.step(action)
        ep.steps += 1
        if bool(info.get("success", False)) or terminated:
            ep.success = bool(info.get("success", terminated))
            break
        if truncated:
            break
    ep.wall_s = time.perf_counter() - t0
    return ep


def _fit_height(img: np.ndarray, h: int) -> np.ndarray:
    """Nearest-neighbour resize of an HxWx3 image to height ``h`` (keeps the aspect ratio)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8) if img.max() <= 1.0 else img.astype(np.uint8)
    if img.shape[0] == h:
        return img
    w = max(1, round(img.shape[1] * h / img.shape[0]))
    rows = np.arange(h) * img.shape[0] // h
    cols = np.arange(w) * img.shape[1] // w
    return img[rows][:, cols]


def video_frame(obs: dict[str, Any], subgoal: np.ndarray | None) -> np.ndarray:
    """Agentview beside wrist (beside the predicted subgoal image when there is one), HxWx3 uint8."""
    agent = np.asarray(obs[IMAGE_KEYS[0]])
    h = agent.shape[0]
    parts = [agent, _fit_height(obs[IMAGE_KEYS[1]], h)]
    if subgoal is not None:
        parts.append(_fit_height(subgoal, h))
    return np.concatenate(parts, axis=1)


def video_path(cfg: EvalConfig, task: str, init_state: int, success: bool) -> Path:
    """Where an episode's mp4 goes: ``<video_dir or out_dir/videos>/<task>/init{NNN}_{success|fail}.mp4``."""
    root = Path(cfg.video_dir or Path(cfg.out_dir) / "videos")
    return root / task / f"init{init_state:03d}_{'success' if success else 'fail'}.mp4"


def write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    """Write an mp4 atomically (temp file in the same folder, then rename)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=2, quality=8) as w:
            for f in frames:
                w.append_data(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Job:
    """One episode to run: a task (by index and name) and an init state."""

    task_index: int
    task: str
    init_state: int
    video: bool


class EvalWorker:
    """Runs episodes; keeps one env (rebuilt when the task changes) and one policy.

    Used directly in-process and as a Ray actor (``ray.remote(EvalWorker)``); each worker builds its own
    env, so nothing MuJoCo-related crosses a process boundary.
    """

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self._task: str | None = None
        self._env: Any = None
        self._policy: Any = None
        self._executor: ChunkExecutor | None = None

    def _ensure(self, task: str) -> None:
        from sim.suites import make_env

        if self._task == task:
            return
        if self._env is not None:
            self._env.close()
        self._env = make_env(self.cfg.suite, task, render=self.cfg.render)
        self._env.use_init_split(self.cfg.init_split)
        self._task = task
        if self._policy is None or needs_env(self.cfg.policy):
            self._policy = make_policy(self.cfg.policy, self._env, seed=self.cfg.seed)
            self._executor = ChunkExecutor(self._policy, self.cfg.replan_every)

    def info(self, task: str) -> dict[str, Any]:
        """Protocol facts of ``task`` as this worker's env sees them, plus the policy's identity."""
        self._ensure(task)
        t = self._env.task
        return {
            "instruction": str(getattr(t, "instruction", "")),
            "max_steps": step_limit(self._env, self.cfg.max_steps),
            "task_max_steps": int(t.max_steps),
            "wait_steps": int(getattr(t, "wait_steps", 0)),
            "control_fps": control_fps(self._env),
            "policy_id": policy_id(self._policy, self.cfg.policy),
            "policy_metadata": _jsonable(policy_metadata(self._policy)),
            "replan_every": self._executor.replan_every if self._executor else None,
            "versions": package_versions(),  # this worker's: torch shows up where the policy imported it
        }

    def run(self, job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run one episode; return its record and the task's `info` (and write its video when asked)."""
        self._ensure(job.task)
        seed = episode_seed(self.cfg.seed, job.task_index, job.init_state)
        ep = run_episode(
            self._env,
            self._executor,
            job.init_state,
            seed=seed,
            max_steps=self.cfg.max_steps,
            record=job.video,
        )
        rec: dict[str, Any] = {
            "task": job.task,
            "init_state": job.init_state,
            "success": ep.success,
            "steps": ep.steps,
            "wall_s": round(ep.wall_s, 4),
            "seed": seed,
        }
        if job.video:
            frames = [video_frame(o, s) for (o, _a), s in zip(ep.frames, ep.subgoals, strict=True)]
            path = video_path(self.cfg, job.task, job.init_state, ep.success)
            write_video(path, frames, fps=control_fps(self._env))
            rec["video"] = str(path)
        return rec, self.info(job.task)

    def close(self) -> None:
        """Close the env."""
        if self._env is not None:
            self._env.close()
            self._env = None
            self._task = None


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist() if x.size <= 64 else f"<array {x.shape} {x.dtype}>"
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    return str(x)


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide simulation results (None when not installed)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for pkg in VERSIONED_PACKAGES:
        if pkg == "torch" and "torch" not in sys.modules:
            continue  # only when the policy imported it
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write JSON to ``path`` through a temp file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def dump_config_atomic(cfg: Any, path: Path) -> None:
    """Write the resolved config as YAML (draccus) through a temp file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            draccus.dump(cfg, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def resolve_tasks(suite_name: str, tasks: list[str]) -> list[tuple[int, str]]:
    """(index, name) of the requested tasks in suite order; unknown suite or task names raise ValueError."""
    from sim.suites import get_suite

    suite = get_suite(suite_name)
    names = [t.name for t in suite.tasks]
    if not tasks:
        return list(enumerate(names))
    out = []
    for t in tasks:
        spec = suite.task(t)  # raises ValueError listing the known tasks
        out.append((names.index(spec.name), spec.name))
    return out


def _start_ray(num_workers: int) -> bool:
    """Start Ray on loopback if it is not running; return whether this call started it."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        num_cpus=num_workers, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
    )
    return True


def worker_env_vars(num_workers: int) -> dict[str, str]:
    """Env vars of each Ray worker: the driver's rendering settings, and a fair share of the cores.

    Mesa's llvmpipe renders with one thread per core by default, so a single rendering process already
    fills a small machine and N such workers would only fight over the same cores. Each worker gets
    ``cores // num_workers`` render threads (``LP_NUM_THREADS``) and one OpenMP thread, unless the caller
    set those variables.
    """
    env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env["LP_NUM_THREADS"] = os.environ.get("LP_NUM_THREADS", str(max(1, cores // num_workers)))
    return env


def _run_jobs_local(cfg: EvalConfig, jobs: list[Job]) -> tuple:
    """Run every job in this process; return (records in job order, info of each task)."""
    bar = tqdm(total=len(jobs), desc=f"eval {cfg.suite}", unit="ep", disable=None)
    records: list[dict[str, Any]] = []
    infos: dict[str, dict[str, Any]] = {}
    worker = EvalWorker(cfg)
    try:
        for job in jobs:
            rec, infos[job.task] = worker.run(job)
            records.append(rec)
            bar.update(1)
            bar.set_postfix(success=sum(r["success"] for r in records))
    finally:
        worker.close()
        bar.close()
    return records, infos


def evaluate(cfg: EvalConfig, command: str | None = None) -> dict[str, Any]:
    """Run the evaluation of ``cfg`` and write ``<out_dir>/results.json``; return the results dict.

    Raises:
        ValueError: Unknown suite, task or policy spec (before anything is built), or with
            ``vector_envs > 1`` a policy without ``infer_batch`` (before any env process starts).
        RuntimeError: With ``vector_envs > 1``, an env process that failed or died (naming its episode).
    """
    t0 = time.perf_counter()
    validate_spec(cfg.policy)
    tasks = resolve_tasks(cfg.suite, cfg.tasks)
    if is_url(cfg.policy):
        cfg = adopt_server_contract(cfg)
    batch_policy = None
    if cfg.vector_envs > 1:
        from sim.vector_eval import check_batch_policy

        batch_policy = make_policy(cfg.policy, None, seed=cfg.seed)
        try:
            check_batch_policy(cfg.policy, batch_policy)
        except ValueError:
            _close_policy(batch_policy)
            raise
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump_config_atomic(cfg, out_dir / "config.yaml")
    cap = cfg.max_videos_per_task
    jobs = [
        Job(ti, name, cfg.first_init_state + i, cfg.video and (cap is None or i < cap))
        for ti, name in tasks
        for i in range(cfg.episodes)
    ]
    if batch_policy is not None:
        from sim.vector_eval import run_jobs_vector

        try:
            records, infos = run_jobs_vector(cfg, jobs, batch_policy)
        finally:
            _close_policy(batch_policy)
    elif cfg.num_workers > 1 or cfg.force_ray:
        records, infos = _run_jobs_ray(cfg, jobs)
    else:
        records, infos = _run_jobs_local(cfg, jobs)
    results = summarize(cfg, records, infos, [n for _, n in tasks], wall_s=time.perf_counter() - t0)
    results["command"] = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    write_json_atomic(out_dir / "results.json", results)
    logger.info("wrote %s", out_dir / "results.json")
    return results


def _close_policy(policy: Any) -> None:
    """Close a policy that holds a connection (a server client); others have nothing to close."""
    close = getattr(policy, "close", None)
    if callable(close):
        close()


def adopt_server_contract(cfg: EvalConfig) -> EvalConfig:
    """Render at the image size the server announces in ``/metadata`` (nothing is set twice by hand).

    A checkpoint in this process resizes frames itself; a server checks them against its contract, so
    the cameras render at the size it declares.
    """
    policy = make_policy(cfg.policy)
    try:
        size = policy_metadata(policy).get("image_size")
    finally:
        close = getattr(policy, "close", None)
        if callable(close):
            close()
    if size is None:
        return cfg
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if h != w:
        raise ValueError(
            f"the server at {cfg.policy} expects {h}x{w} images; the sim renders square cameras only"
        )
    if h != cfg.render.image_size:
        logger.info("rendering at %dx%d, the image size the server at %s announces", h, w, cfg.policy)
        cfg = dataclasses.replace(cfg, render=dataclasses.replace(cfg.render, image_size=h))
    return cfg


def _run_jobs_ray(cfg: EvalConfig, jobs: list[Job]) -> tuple:
    """Run jobs on ``cfg.num_workers`` Ray actors; return (records in job order, info of each task)."""
    import ray
    from ray.util import ActorPool

    bar = tqdm(total=len(jobs), desc=f"eval {cfg.suite} ({cfg.num_workers} workers)", unit="ep", disable=None)
    started = _start_ray(cfg.num_workers)
    try:
        runtime_env = {"env_vars": worker_env_vars(cfg.num_workers)}
        actor_cls = ray.remote(num_cpus=1, runtime_env=runtime_env)(EvalWorker)
        actors = [actor_cls.remote(cfg) for _ in range(min(cfg.num_workers, len(jobs)))]
        pool = ActorPool(actors)
        by_key: dict[tuple[str, int], dict[str, Any]] = {}
        infos: dict[str, dict[str, Any]] = {}
        for rec, info in pool.map_unordered(lambda a, j: a.run.remote(j), jobs):
            by_key[(rec["task"], rec["init_state"])] = rec
            infos[rec["task"]] = info
            bar.update(1)
            bar.set_postfix(success=sum(r["success"] for r in by_key.values()))
        ray.get([a.close.remote() for a in actors])
        for a in actors:
            ray.kill(a)
    finally:
        bar.close()
        if started:
            ray.shutdown()
    return [by_key[(j.task, j.init_state)] for j in jobs], infos


def summarize(
    cfg: EvalConfig,
    records: list[dict[str, Any]],
    infos: dict[str, dict[str, Any]],
    task_order: list[str],
    wall_s: float,
) -> dict[str, Any]:
    """Build the results document (DESIGN.md "Eval results") from per-episode records."""
    per_task: dict[str, dict[str, Any]] = {}
    for name in task_order:
        recs = [r for r in records if r["task"] == name]
        k, n = sum(bool(r["success"]) for r in recs), len(recs)
        lo, hi = wilson_ci(k, n)
        per_task[name] = {
            "instruction": infos[name]["instruction"],
            "success_rate": k / n if n else 0.0,
            "successes": k,
            "episodes": n,
            "ci95": [round(lo, 4), round(hi, 4)],
            "mean_steps": float(np.mean([r["steps"] for r in recs])) if recs else 0.0,
        }
    total_k = sum(t["successes"] for t in per_task.values())
    total_n = sum(t["episodes"] for t in per_task.values())
    first = infos[task_order[0]]
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "suite": cfg.suite,
        "policy": cfg.policy,
        "policy_id": first["policy_id"],
        "policy_metadata": first["policy_metadata"],
        "seed": cfg.seed,
        "num_workers": cfg.num_workers,
        "ray": cfg.num_workers > 1 or cfg.force_ray,
        "mean_success": float(np.mean([t["success_rate"] for t in per_task.values()])),
        "overall_success": total_k / total_n if total_n else 0.0,
        "overall_ci95": [round(v, 4) for v in wilson_ci(total_k, total_n)],
        "tasks": per_task,
        "episodes": records,
        "protocol": {
            "episodes_per_task": cfg.episodes,
            "init_states": [cfg.first_init_state, cfg.first_init_state + cfg.episodes - 1],
            "init_split": cfg.init_split,
            "max_steps": {n: infos[n]["max_steps"] for n in task_order},
            "task_max_steps": {n: infos[n]["task_max_steps"] for n in task_order},
            "max_steps_override": cfg.max_steps,
            "wait_steps": {n: infos[n]["wait_steps"] for n in task_order},
            "replan_every": first["replan_every"],
            "vector_envs": cfg.vector_envs,
            "control_fps": first["control_fps"],
            "render": _jsonable(asdict(cfg.render)),
        },
        "versions": {
            **package_versions(),
            **{k: v for i in infos.values() for k, v in i["versions"].items()},
        },
        "wall_time_s": round(wall_s, 3),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def format_table(results: dict[str, Any]) -> str:
    """A plain-text success table: one row per task, then the mean."""
    rows = [
        (n, t["successes"], t["episodes"], t["success_rate"], t["ci95"]) for n, t in results["tasks"].items()
    ]
    w = max([len("task"), *(len(r[0]) for r in rows)])
    lines = [f"{'task':<{w}}  {'success':>9}  {'rate':>6}  95% CI", "-" * (w + 34)]
    for name, k, n, rate, (lo, hi) in rows:
        lines.append(f"{name:<{w}}  {f'{k}/{n}':>9}  {rate:6.1%}  [{lo:.2f}, {hi:.2f}]")
    lines.append("-" * (w + 34))
    lines.append(f"{'mean':<{w}}  {'':>9}  {results['mean_success']:6.1%}")
    lines.append(
        f"policy={results['policy_id']}  suite={results['suite']}  wall={results['wall_time_s']:.1f}s"
    )
    return "\n".join(lines)


@draccus.wrap()
def eval_main(cfg: EvalConfig) -> dict[str, Any]:
    """CLI entry: evaluate, print the success table and where results went."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    results = evaluate(cfg)
    print(format_table(results))
    print(f"results: {Path(cfg.out_dir) / 'results.json'}")
    return results


def underscore_flags(argv: list[str]) -> list[str]:
    """Accept ``--num-workers=2`` as well as draccus's ``--num_workers=2`` (flag names only, not values)."""
    out = []
    for a in argv:
        if a.startswith("--") and not a.startswith("---"):
            key, sep, val = a[2:].partition("=")
            a = "--" + key.replace("-", "_") + sep + val
        out.append(a)
    return out


def main() -> None:
    """Console script ``vla-sim-eval``."""
    sys.argv[1:] = underscore_flags(sys.argv[1:])
    eval_main()


if __name__ == "__main__":
    main()

"""Batched ("vector env") evaluation: one policy in this process, N env subprocesses stepping MuJoCo.

`sim.run_eval` with ``--vector_envs=N`` (N > 1) comes here. Each env worker is a ``spawn``-ed process
that builds its own env (`sim.suites.make_env`, rebuilt when the task changes), so nothing MuJoCo-related
crosses a process boundary: only task names, init-state indices, seeds, observations (numpy) and actions
go through the pipes. A job queue hands each worker a new episode as soon as its last one ends.

Each round, the main process waits until every busy worker has an observation that needs a new chunk, then
calls ``policy.infer_batch(observations)`` once for all of them and sends each worker the first
``replan_every`` actions of its chunk (`sim.policies.resolve_replan`, as `ChunkExecutor` does). The worker
executes them one by one with exactly the loop of `sim.run_eval.run_episode` (same seeded reset, success,
termination, truncation and step limit), so an episode's records match the serial path's.

Commands a worker understands (``(name, args)`` over its `Pipe`; each answered ``("ok", value)`` or, after
which the worker exits, ``("error", message)``):

- ``reset(task, init_state, seed, video, keep_actions)`` -> ``(obs, env facts of the task)``;
- ``step(actions (n, 7), subgoal_image or None)`` -> ``{"obs", "steps", "done", "success"}``, plus at the
  end of the episode ``wall_s``, ``video`` (the mp4 path, written by the worker) and ``actions`` (every
  executed action, when ``keep_actions``);
- ``close()``.
"""

from __future__ import annotations

import collections
import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sim.eval_configs import EvalConfig
from sim.policies import executed_chunk, make_policy, policy_id, policy_metadata, resolve_replan
from sim.run_eval import (
    Job,
    _close_policy,
    _jsonable,
    control_fps,
    episode_seed,
    package_versions,
    step_limit,
    video_frame,
    video_path,
    worker_env_vars,
    write_video,
)

# Seconds a worker gets to close its env and exit after ``close`` before it is terminated.
_CLOSE_TIMEOUT_S = 10.0


def check_batch_policy(spec: str, policy: Any) -> None:
    """Refuse a policy that cannot answer several envs in one call.

    Raises:
        ValueError: ``policy`` has no callable ``infer_batch``.
    """
    if not callable(getattr(policy, "infer_batch", None)):
        raise ValueError(
            f"vector_envs > 1 needs a policy with infer_batch(list_of_obs) (a checkpoint directory, "
            f"vla.InferencePolicy); policy {spec!r} ({type(policy).__name__}) has none. Run it with "
            "--vector_envs=1 (and --num_workers=N for parallel episodes)."
        )


class _EnvWorker:
    """The env side of one worker process: one env, the episode in progress and its video frames."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg = cfg
        self._env: Any = None
        self._task: str | None = None
        self._facts: dict[str, Any] = {}
        # The episode in progress (set by `reset`).
        self._obs: dict[str, Any] = {}
        self._t0 = 0.0
        self._init_state = 0
        self._steps = 0
        self._limit = 0
        self._video = False
        self._frames: list[np.ndarray] = []
        self._actions: list[np.ndarray] | None = None

    def _ensure(self, task: str) -> None:
        from sim.suites import make_env

        if self._task == task:
            return
        self.close()
        self._env = make_env(self.cfg.suite, task, render=self.cfg.render)
        self._env.use_init_split(self.cfg.init_split)
        self._task = task
        t = self._env.task
        self._facts = {  # the env half of `EvalWorker.info`
            "instruction": str(getattr(t, "instruction", "")),
            "max_steps": step_limit(self._env, self.cfg.max_steps),
            "task_max_steps": int(t.max_steps),
            "wait_steps": int(getattr(t, "wait_steps", 0)),
            "control_fps": control_fps(self._env),
            "versions": package_versions(),
        }

    def reset(
        self, task: str, init_state: int, seed: int, video: bool, keep_actions: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode from fixed init state ``init_state``; return its first obs and the env facts."""
        self._ensure(task)
        self._t0 = time.perf_counter()
        self._init_state = int(init_state)
        obs, _info = self._env.reset(seed=seed, options={"init_state": int(init_state)})
        self._obs = obs
        self._steps = 0
        self._limit = step_limit(self._env, self.cfg.max_steps)
        self._video = bool(video)
        self._frames = []
        self._actions = [] if keep_actions else None
        return obs, self._facts

    def step(self, actions: np.ndarray, subgoal: np.ndarray | None) -> dict[str, Any]:
        """Execute ``actions`` `(n, 7)` one by one, stopping early where `run_episode` would."""
        done = success = False
        for action in actions:
            if self._video:
                self._frames.append(video_frame(self._obs, subgoal))
            if self._actions is not None:
                self._actions.append(np.array(action, copy=True))
            self._obs, _reward, terminated, truncated, info = self._env.step(action)
            self._steps += 1
            if bool(info.get("success", False)) or terminated:
                done, success = True, bool(info.get("success", terminated))
                break
            if truncated or self._steps >= self._limit:
                done = True
                break
        out: dict[str, Any] = {"obs": self._obs, "steps": self._steps, "done": done, "success": success}
        if done:
            out["wall_s"] = time.perf_counter() - self._t0
            out["video"] = None
            if self._video:
                path = video_path(self.cfg, self._task, self._init_state, success)
                write_video(path, self._frames, fps=control_fps(self._env))
                out["video"] = str(path)
            if self._actions is not None:
                out["actions"] = np.stack(self._actions).astype(np.float32)
            self._frames = []
        return out

    def close(self) -> None:
        """Close the env."""
        if self._env is not None:
            self._env.close()
            self._env = None
            self._task = None


def _worker_main(conn: Connection, cfg: EvalConfig) -> None:
    """Entry of a worker process: answer commands until ``close``, EOF or the first error."""
    # Ctrl-C reaches the whole process group; the main process handles it and shuts the workers down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker = _EnvWorker(cfg)
    try:
        while True:
            try:
                name, args = conn.recv()
            except EOFError:  # the main process went away
                break
            if name == "close":
                break
            try:
                result = getattr(worker, name)(*args)
            except Exception as e:
                tb = traceback.format_exc()
                conn.send(("error", f"{type(e).__name__}: {e}\n\nworker traceback:\n{tb}"))
                break
            conn.send(("ok", result))
    finally:
        with contextlib.suppress(Exception):
            worker.close()
        conn.close()


@dataclass
class _Slot:
    """The main process's view of one worker: its process, pipe, episode and pending command."""

    index: int
    process: BaseProcess
    conn: Connection
    job: int | None = None  # position in the job list of the episode it runs
    pending: str | None = None  # "reset" or "step" while a reply is outstanding
    obs: dict[str, Any] | None = None


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables while worker processes start (they inherit them), then restore."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _chunk(out: Any, replan_every: int | None, job: Job) -> np.ndarray:
    """`sim.policies.executed_chunk`, its error naming the episode."""
    try:
        return executed_chunk(out, replan_every)
    except ValueError as e:
        raise ValueError(f"{e} (for {_episode(job)})") from e


def _episode(job: Job) -> str:
    return f"task {job.task!r}, init state {job.init_state}"


def _send(slot: _Slot, job: Job, name: str, args: tuple) -> None:
    try:
        slot.conn.send((name, args))
    except (BrokenPipeError, ConnectionError, EOFError) as e:
        raise _died(slot, job) from e
    slot.pending = name


def _died(slot: _Slot, job: Job) -> RuntimeError:
    slot.process.join(timeout=1.0)
    return RuntimeError(
        f"vector env worker {slot.index} (pid {slot.process.pid}) died (exit code {slot.process.exitcode}) "
        f"while running {_episode(job)}; its env may have crashed (see the worker's stderr above)"
    )


def _recv(slot: _Slot, job: Job) -> Any:
    try:
        status, payload = slot.conn.recv()
    except (EOFError, ConnectionError, OSError) as e:
        raise _died(slot, job) from e
    if status != "ok":
        raise RuntimeError(f"vector env worker {slot.index} failed on {_episode(job)}: {payload}")
    slot.pending = None
    return payload


def _shutdown(slots: list[_Slot]) -> None:
    """Ask every worker to close, then terminate (and at last kill) those still alive; no orphans."""
    for s in slots:
        with contextlib.suppress(OSError, ValueError):
            s.conn.send(("close", ()))
    deadline = time.monotonic() + _CLOSE_TIMEOUT_S
    for s in slots:
        s.process.join(timeout=max(0.0, deadline - time.monotonic()))
    for s in slots:
        if s.process.is_alive():
            s.process.terminate()
            s.process.join(timeout=5.0)
        if s.process.is_alive():
            s.process.kill()
            s.process.join()
        s.conn.close()


def run_jobs_vector(
    cfg: EvalConfig,
    jobs: list[Job],
    policy: Any = None,
    *,
    actions_out: dict[tuple[str, int], np.ndarray] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Run ``jobs`` on ``cfg.vector_envs`` env processes around one batched policy in this process.

    ``policy.reset()`` is called at the start of every episode, but episodes of other envs are in flight at
    the same time, so the policy must be stateless across ``infer_batch`` calls: each call answers each
    observation on its own. `vla.InferencePolicy` (the CoT-VLA policy) is: ``infer_batch`` never reads
    its action queue.

    The workers are ``spawn``-ed: they import the main module again, so a script that calls this (or
    `sim.run_eval.evaluate` with ``vector_envs > 1``) must do so under ``if __name__ == "__main__":``.

    Args:
        cfg: The evaluation config (suite, render, seeds, step limit, replanning, videos).
        jobs: Episodes to run.
        policy: An object with ``infer_batch(list_of_obs) -> list[{"actions": (chunk, 7), ...}]``; None
            builds ``make_policy(cfg.policy, None, seed=cfg.seed)`` (and closes it at the end).
        actions_out: If given, filled with every episode's executed actions `(steps, 7)` float32 as the
            worker passed them to ``env.step``, keyed by ``(task, init_state)`` (for tests).

    Returns:
        ``(records in job order, info of each task)``, both as `sim.run_eval.EvalWorker` makes them.

    Raises:
        ValueError: The policy has no ``infer_batch`` or returns malformed actions.
        RuntimeError: A worker raised or died; the message names the task and init state.
    """
    if not jobs:
        return [], {}
    own = policy is None
    if own:
        policy = make_policy(cfg.policy, None, seed=cfg.seed)
    slots: list[_Slot] = []
    n_envs = min(cfg.vector_envs, len(jobs))
    bar = tqdm(total=len(jobs), desc=f"eval {cfg.suite} ({n_envs} envs)", unit="ep", disable=None)
    try:
        check_batch_policy(cfg.policy, policy)
        replan_every = resolve_replan(policy, cfg.replan_every)
        policy_facts = {  # the policy half of `EvalWorker.info`
            "policy_id": policy_id(policy, cfg.policy),
            "policy_metadata": _jsonable(policy_metadata(policy)),
            "replan_every": replan_every,
        }
        records: list[dict[str, Any] | None] = [None] * len(jobs)
        infos: dict[str, dict[str, Any]] = {}
        queue = collections.deque(range(len(jobs)))
        ctx = mp.get_context("spawn")
        with _environ(worker_env_vars(n_envs)):
            for i in range(n_envs):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker_main, args=(child, cfg), name=f"vector-env-{i}", daemon=True
                )
                proc.start()
                child.close()  # the worker holds the other end; EOF then means it died
                slots.append(_Slot(i, proc, parent))

        def start_next(slot: _Slot) -> None:
            slot.job, slot.obs = (queue.popleft(), None) if queue else (None, None)
            if slot.job is None:
                return
            job = jobs[slot.job]
            reset = getattr(policy, "reset", None)
            if callable(reset):
                reset()
            seed = episode_seed(cfg.seed, job.task_index, job.init_state)
            _send(slot, job, "reset", (job.task, job.init_state, seed, job.video, actions_out is not None))

        for s in slots:
            start_next(s)
        while True:
            # Gather: every busy worker's reply, until each one holds an obs that needs a new chunk.
            while busy := {s.conn: s for s in slots if s.pending is not None}:
                for conn in wait(list(busy)):
                    s = busy[conn]
                    job = jobs[s.job]
                    kind = s.pending
                    reply = _recv(s, job)
                    if kind == "reset":
                        s.obs, facts = reply
                        infos[job.task] = {**facts, **policy_facts}
                        infos[job.task]["versions"] = {**package_versions(), **facts["versions"]}
                    elif not reply["done"]:
                        s.obs = reply["obs"]
                    else:
                        records[s.job] = _record(cfg, job, reply)
                        if actions_out is not None:
                            actions_out[(job.task, job.init_state)] = reply["actions"]
                        bar.update(1)
                        bar.set_postfix(success=sum(bool(r and r["success"]) for r in records))
                        start_next(s)
            ready = [s for s in slots if s.job is not None]
            if not ready:
                break
            outs = policy.infer_batch([s.obs for s in ready])
            if len(outs) != len(ready):
                raise ValueError(
                    f"policy.infer_batch returned {len(outs)} outputs for {len(ready)} observations"
                )
            for s, out in zip(ready, outs, strict=True):
                job = jobs[s.job]
                sub = out.get("subgoal_image") if job.video and isinstance(out, dict) else None
                actions = _chunk(out, replan_every, job)
                _send(s, job, "step", (actions, None if sub is None else np.asarray(sub)))
    finally:
        _shutdown(slots)
        bar.close()
        if own:
            _close_policy(policy)
    missing = [_episode(jobs[i]) for i, r in enumerate(records) if r is None]
    if missing:  # cannot happen unless the loop above is broken; never return a silently short list
        raise RuntimeError(f"vector eval finished without a record for {missing}")
    return [r for r in records if r is not None], infos


def _record(cfg: EvalConfig, job: Job, reply: dict[str, Any]) -> dict[str, Any]:
    """An episode's record, with exactly the keys and values of `sim.run_eval.EvalWorker.run`."""
    rec: dict[str, Any] = {
        "task": job.task,
        "init_state": job.init_state,
        "success": bool(reply["success"]),
        "steps": int(reply["steps"]),
        "wall_s": round(float(reply["wall_s"]), 4),
        "seed": episode_seed(cfg.seed, job.task_index, job.init_state),
    }
    if job.video:
        rec["video"] = reply["video"]
    return rec

"""Robot-side action-chunk broker: one action per control step from chunks fetched ahead of time.

The policy predicts a chunk of ``chunk_size`` actions (the predicted horizon) of which the robot executes
``n_action_steps`` (the executed horizon) before it uses a fresher chunk. :class:`ActionChunkBroker`
keeps the two apart and hides the server's latency:

* when ``prefetch_steps`` or fewer executable actions are left, it sends the newest observation to the
  policy in a background thread;
* a chunk computed from the observation of step ``s`` that arrives at step ``t`` is used from its index
  ``t - s`` on, so actions line up with the steps they were planned for; its executed horizon counts
  from ``s`` (steps ``s .. s + n_action_steps - 1``), so with a latency of ``d`` steps and
  ``prefetch_steps = d`` a new chunk is requested every ``n_action_steps - d`` steps;
* for the first ``blend_steps`` steps after a switch, the outgoing and incoming chunks are mixed with a
  linear ramp, so the arm does not jump at chunk boundaries;
* when the executed horizon runs out and no fresh chunk has come within ``max_wait_s``, it holds the
  last action (never zeros, which would mean "open the gripper halfway" in the normalized action space).

The policy can be a :class:`policy_server.client.PolicyClient` or any in-process object with
``infer(obs) -> {"actions": (chunk, A)}`` and ``reset()``. This module imports numpy only.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

__all__ = ["ActionChunkBroker", "BrokerStats", "ChunkPolicy"]

logger = logging.getLogger(__name__)


class ChunkPolicy(Protocol):
    """Anything the broker can drive (an in-process policy or a :class:`PolicyClient`)."""

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Return ``{"actions": (chunk, A)}`` for one observation."""
        ...

    def reset(self) -> None:
        """Start a new episode."""
        ...


@dataclass
class BrokerStats:
    """Counters of one episode.

    Args:
        steps: Actions handed out.
        fetches: Chunks requested.
        chunks: Chunks received and used.
        failures: Requests that raised.
        holds: Steps that repeated the last action because no fresh chunk was ready.
        blended: Steps whose action mixed two chunks.
        last_latency_s: Wall time of the latest completed request.
    """

    steps: int = 0
    fetches: int = 0
    chunks: int = 0
    failures: int = 0
    holds: int = 0
    blended: int = 0
    last_latency_s: float = float("nan")


class ActionChunkBroker:
    """Hands out one action per control step and keeps the next chunk coming.

    Args:
        policy: The chunk policy (client or in-process).
        n_action_steps: Executed horizon per chunk; default: ``policy.metadata["n_action_steps"]`` when
            the policy has metadata, else the full chunk.
        prefetch_steps: Ask for the next chunk when this many executable actions (or fewer) are left.
            Set it to about the server latency times the control rate. 0 asks only when the chunk has run
            out.
        blend_steps: Steps over which the outgoing and incoming chunks are cross-faded (0: switch hard).
        max_wait_s: How long :meth:`step` waits for an in-flight chunk once the executed horizon has run
            out, before it holds the last action. ``None`` waits as long as the request takes (use this
            in simulation, where there is no wall clock to keep up with).
        hold: ``"last"`` repeats the last action; ``"stop"`` repeats its gripper command with zero motion
            (for delta-pose control, where repeating a motion keeps the arm moving).
        first_timeout_s: How long the first call of an episode waits for its first chunk.
        max_consecutive_failures: Raise after this many failed requests in a row.
    """

    def __init__(
        self,
        policy: ChunkPolicy,
        *,
        n_action_steps: int | None = None,
        prefetch_steps: int = 2,
        blend_steps: int = 2,
        max_wait_s: float | None = 0.0,
        hold: Literal["last", "stop"] = "last",
        first_timeout_s: float = 60.0,
        max_consecutive_failures: int = 5,
    ) -> None:
        if prefetch_steps < 0 or blend_steps < 0:
            raise ValueError("prefetch_steps and blend_steps must be >= 0")
        if hold not in ("last", "stop"):
            raise ValueError(f"hold must be 'last' or 'stop', got {hold!r}")
        if n_action_steps is None:
            md = getattr(policy, "metadata", None)
            if isinstance(md, dict) and md.get("n_action_steps"):
                n_action_steps = int(md["n_action_steps"])
        if n_action_steps is not None and n_action_steps <= 0:
            raise ValueError(f"n_action_steps must be positive, got {n_action_steps}")
        self.policy = policy
        self.n_action_steps = n_action_steps
        self.prefetch_steps = prefetch_steps
        self.blend_steps = blend_steps
        self.max_wait_s = max_wait_s
        self.hold = hold
        self.first_timeout_s = first_timeout_s
        self.max_consecutive_failures = max_consecutive_failures
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-broker")
        self._lock = threading.Lock()
        self._reset_state()

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        self.stats = BrokerStats()
        self._step = 0
        self._plan: np.ndarray | None = None  # actions for steps _plan_start, _plan_start + 1, ...
        self._plan_start = 0
        self._exec_end = 0  # first step past the executed horizon of the current chunk
        self._pending: tuple[Future[dict[str, Any]], int, float] | None = None
        self._last_action: np.ndarray | None = None
        self._consecutive_failures = 0
        self._last_error: BaseException | None = None

    def reset(self) -> None:
        """Forget the current chunk and any in-flight request (its reply is dropped); reset the policy."""
        with self._lock:
            self._reset_state()
        self.policy.reset()

    def close(self) -> None:
        """Stop the background thread (after the in-flight request, if any)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def metadata(self) -> dict[str, Any]:
        """The wrapped policy's metadata (empty if it has none)."""
        md = getattr(self.policy, "metadata", None)
        return md if isinstance(md, dict) else {}

    # ------------------------------------------------------------------ control loop
    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Policy-interface form of :meth:`step`: ``{"actions": (1, A)}``."""
        return {"actions": self.step(obs)[None, :]}

    def step(self, obs: dict[str, Any]) -> np.ndarray:
        """Return the action for this control step.

        Args:
            obs: The current observation (sent to the policy when a new chunk is due).

        Returns:
            float32 `(A,)`.

        Raises:
            RuntimeError: No first chunk within ``first_timeout_s``, or ``max_consecutive_failures``
                requests failed in a row.
        """
        with self._lock:
            self._collect(block_s=0.0)
            if self._plan is None:
                # Episode start: nothing to hold yet, so wait for the first chunk (retrying failures).
                give_up = time.monotonic() + self.first_timeout_s
                while self._plan is None and time.monotonic() < give_up:
                    if self._pending is None:
                        self._submit(obs)
                    self._collect(block_s=max(0.0, give_up - time.monotonic()))
                if self._plan is None:
                    raise RuntimeError(
                        f"no action chunk within {self.first_timeout_s}s at episode start "
                        f"(last error: {self._last_error!r})"
                    )
            t = self._step
            if self._pending is None and self._exec_end - t <= self.prefetch_steps:
                self._submit(obs)
            if t >= self._exec_end and self._pending is not None:
                self._collect(block_s=self.max_wait_s)
                if t >= self._exec_end and self._pending is None and self._consecutive_failures:
                    self._submit(obs)  # the request failed; try again right away
            if t < self._exec_end:
                assert self._plan is not None
                action = self._plan[t - self._plan_start].copy()
            else:
                action = self._hold_action()
                self.stats.holds += 1
            self._last_action = action
            self._step += 1
            self.stats.steps += 1
            return action

    # ------------------------------------------------------------------ internals
    def _hold_action(self) -> np.ndarray:
        assert self._last_action is not None
        a = self._last_action.copy()
        if self.hold == "stop":
            a[:-1] = 0.0
        return a

    def _submit(self, obs: dict[str, Any]) -> None:
        start = self._step
        self._pending = (self._pool.submit(self.policy.infer, obs), start, time.monotonic())
        self.stats.fetches += 1

    def _collect(self, block_s: float | None) -> None:
        """Take the in-flight reply if it is done (waiting up to ``block_s``; None waits forever)."""
        if self._pending is None:
            return
        fut, start, t0 = self._pending
        if block_s is not None and block_s <= 0:
            if not fut.done():
                return
        else:
            try:
                fut.result(timeout=block_s)
            except TimeoutError:
                return
            except Exception:  # reported below through fut.exception()
                logger.debug("chunk request failed", exc_info=True)
        self._pending = None
        self.stats.last_latency_s = time.monotonic() - t0
        err = fut.exception()
        if err is not None:
            self.stats.failures += 1
            self._consecutive_failures += 1
            self._last_error = err
            logger.warning("chunk request failed (%d in a row): %s", self._consecutive_failures, err)
            if self._consecutive_failures >= self.max_consecutive_failures:
                raise RuntimeError(
                    f"{self._consecutive_failures} chunk requests failed in a row; last error: {err!r}"
                ) from err
            return
        self._consecutive_failures = 0
        self._install(np.asarray(fut.result()["actions"], dtype=np.float32), start)

    def _install(self, chunk: np.ndarray, start: int) -> None:
        if chunk.ndim != 2 or chunk.shape[0] == 0:
            raise ValueError(f"policy returned actions of shape {chunk.shape}; expected (chunk, A)")
        n_exec = min(self.n_action_steps or chunk.shape[0], chunk.shape[0])
        t = self._step
        offset = t - start  # steps that passed while the request was in flight
        if offset >= chunk.shape[0]:
            logger.warning("chunk arrived %d steps late, past its predicted horizon; dropped", offset)
            return
        new = chunk[offset:].copy()
        n_blend = 0
        if self._plan is not None and self.blend_steps > 0 and self._last_action is not None:
            old_idx = t - self._plan_start
            old = self._plan[old_idx:] if 0 <= old_idx < len(self._plan) else self._plan[:0]
            n_blend = min(self.blend_steps, len(old), len(new))
            if n_blend:
                # weights (1 .. n)/(n + 1) on the incoming chunk: a linear ramp from old to new.
                w = (np.arange(1, n_blend + 1, dtype=np.float32) / (self.blend_steps + 1))[:, None]
                new[:n_blend] = (1.0 - w) * old[:n_blend] + w * new[:n_blend]
                self.stats.blended += n_blend
        self._plan = new
        self._plan_start = t
        # Executed horizon counts from the chunk's own start; a late chunk still gets at least one step.
        self._exec_end = max(start + n_exec, t + 1)
        self.stats.chunks += 1

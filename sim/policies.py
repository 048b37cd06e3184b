"""Policies that sim talks to, and the chunk executor that runs their action chunks.

`sim` knows nothing of models: everything here speaks the policy interface of DESIGN.md
(`reset()`, `infer(obs) -> {"actions": float32 (chunk, 7), ...}`). `make_policy(spec, env)` builds one
from a spec string:

- ``"expert"``: the suite's scripted expert for ``env`` (`sim.experts.make_expert`);
- ``"random"`` (or ``"random:<seed>"``): uniform actions in [-1, 1];
- a checkpoint directory: `vla.load_policy(path, device=$VLA_POLICY_DEVICE or "cpu")` (imported lazily;
  sim never imports models otherwise);
- an ``http://`` / ``https://`` / ``ws://`` / ``wss://`` URL: `policy_server.client.PolicyClient(url)`
  (API key from ``$VLA_SERVE_API_KEY``).

`ChunkExecutor` executes ``replan_every`` actions of each chunk, then asks the policy again. Its default
comes from the policy's own inference contract (``metadata["n_action_steps"]``) so the executed horizon is
never set twice by hand (lerobot#4614).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

logger = logging.getLogger(__name__)

ACTION_DIM = 7
URL_SCHEMES = ("http://", "https://", "ws://", "wss://")
BUILTIN_SPECS = ("expert", "random")


@runtime_checkable
class Policy(Protocol):
    """The policy interface of DESIGN.md (in-process policy, scripted expert or remote client)."""

    def reset(self) -> None:
        """Start a new episode."""

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Return at least ``{"actions": float32 (chunk, 7)}`` for one observation."""


class RandomPolicy:
    """Uniform random actions in the normalized action range [-1, 1], seeded.

    Args:
        seed: Seed of the generator; `reset(seed=...)` re-seeds it so episode i is reproducible.
        chunk: Actions per chunk.
    """

    def __init__(self, seed: int = 0, chunk: int = 10) -> None:
        if chunk < 1:
            raise ValueError(f"RandomPolicy chunk must be >= 1, got {chunk}")
        self.seed = seed
        self.chunk = chunk
        self.metadata = {"policy_id": f"random:{seed}", "n_action_steps": chunk}
        self._rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Re-seed the generator (with ``seed`` if given, else the constructor's seed)."""
        self._rng = np.random.default_rng(self.seed if seed is None else seed)

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Return a ``(chunk, 7)`` float32 chunk drawn uniformly from [-1, 1]."""
        return {"actions": self._rng.uniform(-1.0, 1.0, (self.chunk, ACTION_DIM)).astype(np.float32)}


def is_url(spec: str) -> bool:
    """Whether ``spec`` names a remote policy server."""
    return spec.startswith(URL_SCHEMES)


def needs_env(spec: str) -> bool:
    """Whether the policy is built per environment (the expert reads privileged state of its env)."""
    return spec == "expert"


def validate_spec(spec: str) -> None:
    """Refuse a spec that names nothing, with a message listing what a spec can be.

    Raises:
        ValueError: ``spec`` is not a builtin, a URL or an existing directory.
    """
    if spec in BUILTIN_SPECS or spec.startswith("random:") or is_url(spec):
        if spec.startswith("random:"):
            _random_seed(spec)
        return
    if os.path.isdir(spec):
        return
    raise ValueError(
        f"Unknown policy spec {spec!r}: use 'expert', 'random' (or 'random:<seed>'), a checkpoint "
        f"directory that exists, or a server URL starting with one of {', '.join(URL_SCHEMES)}."
    )


def _random_seed(spec: str) -> int:
    try:
        return int(spec.split(":", 1)[1])
    except ValueError as e:
        raise ValueError(f"Policy spec {spec!r}: the seed after 'random:' must be an integer.") from e


def make_policy(spec: str, env: Any = None, *, seed: int = 0) -> Policy:
    """Build a policy from a spec string.

    Args:
        spec: ``"expert"``, ``"random"``, ``"random:<seed>"``, a checkpoint directory or a server URL.
        env: The `SimEnv` the policy acts in (required for ``"expert"``).
        seed: Seed for ``"random"`` when the spec carries none.

    Returns:
        An object with ``reset()`` and ``infer(obs) -> {"actions": (chunk, 7)}``.

    Raises:
        ValueError: Unknown spec, or ``"expert"`` without an env.
        RuntimeError: A checkpoint or URL whose loader is not installed or failed to load it.
    """
    validate_spec(spec)
    if spec == "expert":
        if env is None:
            raise ValueError("make_policy('expert') needs the env: the expert reads its privileged state.")
        from sim.experts import make_expert

        return make_expert(env)
    if spec == "random" or spec.startswith("random:"):
        return RandomPolicy(seed=_random_seed(spec) if ":" in spec else seed)
    if is_url(spec):
        try:
            from policy_server.client import PolicyClient
        except ImportError as e:
            raise RuntimeError(
                f"Policy spec {spec!r} is a server URL but policy_server.client cannot be imported ({e}); "
                "install the stack with `pip install -e .`."
            ) from e
        # The key comes from the environment (as `vla-serve` reads it), so it never lands in a config
        # file or in results.json.
        return PolicyClient(spec, api_key=os.environ.get("VLA_SERVE_API_KEY") or None)
    try:
        from vla import load_policy
        from vla.peers import is_peer_checkpoint, load_peer
    except ImportError as e:
        raise RuntimeError(
            f"Policy spec {spec!r} is a directory, but `vla.load_policy` cannot be imported ({e}); a "
            "checkpoint needs the vla package (pip install -e .)."
        ) from e
    device = os.environ.get("VLA_POLICY_DEVICE") or "cpu"
    try:
        if is_peer_checkpoint(spec):  # another project's policy trained on our data (vla/peers)
            return load_peer(Path(spec), device=device)
        return load_policy(Path(spec), device=device)
    except Exception as e:
        raise RuntimeError(
            f"Could not load a checkpoint from {spec!r} onto device {device!r} ($VLA_POLICY_DEVICE): "
            f"{type(e).__name__}: {e}. A checkpoint directory holds config.json (or .yaml) and "
            "model.safetensors (DESIGN.md 'Checkpoint')."
        ) from e


def policy_metadata(policy: Any) -> dict[str, Any]:
    """The policy's inference contract: ``policy.metadata`` (a dict, or a method returning one), else {}."""
    meta = getattr(policy, "metadata", None)
    if callable(meta):
        meta = meta()
    if meta is None and callable(getattr(policy, "get_server_metadata", None)):
        meta = policy.get_server_metadata()  # openpi's client
    return dict(meta) if isinstance(meta, dict) else {}


def policy_id(policy: Any, spec: str) -> str:
    """Name of the policy for results: metadata ``policy_id`` or ``model_id``, else the spec."""
    meta = policy_metadata(policy)
    return str(meta.get("policy_id") or meta.get("model_id") or meta.get("name") or spec)


def resolve_replan(policy: Any, replan_every: int | None) -> int | None:
    """Executed steps per chunk: explicit, else the policy's ``n_action_steps``, else None (whole chunk).

    Raises:
        ValueError: A non-positive value.
    """
    if replan_every is None:
        value = policy_metadata(policy).get("n_action_steps")
        replan_every = int(value) if value is not None else None
    if replan_every is not None and replan_every < 1:
        raise ValueError(f"replan_every must be >= 1 (or None for the whole chunk), got {replan_every}")
    return replan_every


def executed_chunk(out: Any, replan_every: int | None) -> np.ndarray:
    """The actions `(n, 7)` float32 to execute from one policy output: its chunk, cut to ``replan_every``.

    Raises:
        ValueError: ``out`` is not a dict with ``actions``, or the actions are not `(chunk, 7)`.
    """
    if not isinstance(out, dict) or "actions" not in out:
        raise ValueError(f"policy.infer must return a dict with 'actions', got {type(out).__name__}")
    actions = np.asarray(out["actions"], dtype=np.float32)
    if actions.ndim == 1:
        actions = actions[None]
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or actions.shape[0] < 1:
        raise ValueError(f"policy actions must have shape (chunk, {ACTION_DIM}), got {actions.shape}")
    n = actions.shape[0] if replan_every is None else min(replan_every, actions.shape[0])
    return actions[:n].copy()


class ChunkExecutor:
    """Runs a chunking policy one action at a time: executes ``replan_every`` actions, then re-queries.

    Args:
        policy: Any object with the policy interface.
        replan_every: Executed steps per chunk; None takes the policy's ``metadata["n_action_steps"]``,
            and without one the whole chunk.
    """

    def __init__(self, policy: Any, replan_every: int | None = None) -> None:
        self.policy = policy
        self.replan_every = resolve_replan(policy, replan_every)
        self._queue: deque[np.ndarray] = deque()
        self.last_output: dict[str, Any] = {}
        self.num_queries = 0

    def reset(self, seed: int | None = None) -> None:
        """Clear the queue and reset the policy (re-seeding it when it takes a seed)."""
        self._queue.clear()
        self.last_output = {}
        self.num_queries = 0
        if seed is not None and isinstance(self.policy, RandomPolicy):
            self.policy.reset(seed=seed)
        else:
            self.policy.reset()

    def act(self, obs: dict[str, Any]) -> np.ndarray:
        """Return the next action ``(7,)`` float32, querying the policy when the queue is empty.

        Raises:
            ValueError: The policy returned no ``actions`` or actions of the wrong shape.
        """
        if not self._queue:
            out = self.policy.infer(obs)
            self._queue.extend(executed_chunk(out, self.replan_every))
            self.last_output = out
            self.num_queries += 1
        return self._queue.popleft()

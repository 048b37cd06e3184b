"""Request validation: every observation is checked against the checkpoint's contract before the model.

The contract (:class:`ObservationSpec`) comes from the policy's ``metadata`` (DESIGN.md: a checkpoint
carries its inference contract). A request that breaks it raises a typed error from
:mod:`policy_server.protocol` whose message says what was received, what was expected and how to fix it;
the server turns that into a 4xx reply, never a crash. This module imports numpy only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from policy_server.protocol import (
    DEADLINE_KEY,
    IMAGE_KEY_PREFIX,
    OPENPI_KEY_MAP,
    REQUEST_ID_KEY,
    STATE_KEY,
    TASK_KEY,
    TIMESTAMP_KEY,
    InternalServerError,
    InvalidObservationError,
)

__all__ = ["ObservationSpec", "RequestMeta", "postprocess_actions", "validate_observation"]

MAX_TASK_CHARS = 2000
MAX_REQUEST_ID_CHARS = 128


@dataclass(frozen=True)
class ObservationSpec:
    """What a checkpoint accepts and returns.

    Args:
        image_shapes: Full camera key (``observation.images.<name>``) to its ``(H, W, 3)`` shape.
        state_dim: Length of ``observation.state``.
        action_dim: Length of one action.
        chunk_size: Actions per predicted chunk.
        action_low: Lower bound per action dimension ``(action_dim,)``.
        action_high: Upper bound per action dimension ``(action_dim,)``.
        max_image_side: When set, images of any ``(H, W, 3)`` with ``H, W <= max_image_side`` are
            accepted (the policy resizes them); when None, the shape must match exactly.
    """

    image_shapes: dict[str, tuple[int, int, int]]
    state_dim: int
    action_dim: int
    chunk_size: int
    action_low: np.ndarray
    action_high: np.ndarray
    max_image_side: int | None = None

    def __post_init__(self) -> None:
        if not self.image_shapes:
            raise ValueError("ObservationSpec needs at least one camera in image_shapes")
        for key, shape in self.image_shapes.items():
            if not key.startswith(IMAGE_KEY_PREFIX):
                raise ValueError(f"camera key {key!r} must start with {IMAGE_KEY_PREFIX!r}")
            if len(shape) != 3 or shape[2] != 3 or min(shape) <= 0:
                raise ValueError(f"image shape for {key!r} must be (H, W, 3), got {shape}")
        if self.state_dim <= 0 or self.action_dim <= 0 or self.chunk_size <= 0:
            raise ValueError("state_dim, action_dim and chunk_size must be positive")
        if self.action_low.shape != (self.action_dim,) or self.action_high.shape != (self.action_dim,):
            raise ValueError(
                f"action_low/high must have shape ({self.action_dim},), got "
                f"{self.action_low.shape} and {self.action_high.shape}"
            )
        if not np.all(self.action_low <= self.action_high):
            raise ValueError("action_low must be <= action_high in every dimension")

    @classmethod
    def from_metadata(cls, md: dict[str, Any], max_image_side: int | None = None) -> ObservationSpec:
        """Build the spec from a policy's ``metadata`` dict.

        Args:
            md: Policy metadata with ``camera_keys``, ``image_size`` (``[H, W]`` or a per-camera
                mapping), ``state_dim``, ``action_dim``, ``chunk_size`` and optionally ``action_low`` /
                ``action_high`` (default ``[-1, 1]``, the OSC_POSE normalized range).
            max_image_side: See the class docstring (None: exact image shapes).

        Returns:
            The spec.

        Raises:
            ValueError: When a needed field is missing; the message names it.
        """
        missing = [
            k for k in ("camera_keys", "image_size", "state_dim", "action_dim", "chunk_size") if k not in md
        ]
        if missing:
            raise ValueError(f"policy metadata lacks {missing}; it has {sorted(md)}")
        size = md["image_size"]
        shapes: dict[str, tuple[int, int, int]] = {}
        for cam in md["camera_keys"]:
            key = cam if str(cam).startswith(IMAGE_KEY_PREFIX) else IMAGE_KEY_PREFIX + str(cam)
            s = size.get(key, size.get(str(cam))) if isinstance(size, dict) else size
            if isinstance(s, int):
                s = (s, s)
            hw = tuple(int(v) for v in np.asarray(s).reshape(-1)[:2])
            shapes[key] = (hw[0], hw[1], 3)
        adim = int(md["action_dim"])
        low = np.asarray(md.get("action_low", -np.ones(adim)), dtype=np.float32).reshape(-1)
        high = np.asarray(md.get("action_high", np.ones(adim)), dtype=np.float32).reshape(-1)
        if low.size == 1:
            low = np.full(adim, low[0], np.float32)
        if high.size == 1:
            high = np.full(adim, high[0], np.float32)
        return cls(
            image_shapes=shapes,
            state_dim=int(md["state_dim"]),
            action_dim=adim,
            chunk_size=int(md["chunk_size"]),
            action_low=low,
            action_high=high,
            max_image_side=max_image_side,
        )


@dataclass(frozen=True)
class RequestMeta:
    """Fields of a request that are not observation: echoed back so the robot can drop stale replies.

    Args:
        request_id: Client-chosen id (or one the server made up).
        timestamp: The observation's capture time as the client sent it, or None.
        deadline_s: Client-requested deadline in seconds, or None for the server default.
    """

    request_id: str | None = None
    timestamp: float | None = None
    deadline_s: float | None = None


def _fail(msg: str, meta: RequestMeta | None = None) -> InvalidObservationError:
    return InvalidObservationError(msg, request_id=meta.request_id if meta else None)


def _parse_meta(raw: dict[str, Any]) -> RequestMeta:
    rid = raw.get(REQUEST_ID_KEY)
    if rid is not None:
        if isinstance(rid, bytes):
            rid = rid.decode("utf-8", errors="replace")
        if isinstance(rid, np.generic):
            rid = rid.item()
        if not isinstance(rid, str | int) or isinstance(rid, bool):
            raise _fail(f"'{REQUEST_ID_KEY}' must be a string or integer, got {type(rid).__name__}")
        rid = str(rid)
        if len(rid) > MAX_REQUEST_ID_CHARS:
            raise _fail(f"'{REQUEST_ID_KEY}' is {len(rid)} characters; keep it under {MAX_REQUEST_ID_CHARS}")
    meta = RequestMeta(request_id=rid)
    ts = raw.get(TIMESTAMP_KEY)
    if ts is not None:
        ts = _as_finite_float(ts, TIMESTAMP_KEY, meta)
    dl = raw.get(DEADLINE_KEY)
    if dl is not None:
        dl = _as_finite_float(dl, DEADLINE_KEY, meta)
        if dl <= 0:
            raise _fail(f"'{DEADLINE_KEY}' must be > 0 seconds, got {dl}", meta)
    return RequestMeta(request_id=rid, timestamp=ts, deadline_s=dl)


def _as_finite_float(v: Any, name: str, meta: RequestMeta) -> float:
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _fail(f"'{name}' must be a number, got {type(v).__name__}", meta)
    f = float(v)
    if not math.isfinite(f):
        raise _fail(f"'{name}' must be finite, got {f}", meta)
    return f


def _map_openpi_keys(raw: dict[str, Any], meta: RequestMeta) -> dict[str, Any]:
    if not any(k in raw for k in OPENPI_KEY_MAP):
        return raw
    out = dict(raw)
    for theirs, ours in OPENPI_KEY_MAP.items():
        if theirs in out:
            if ours in raw:
                raise _fail(f"observation has both {theirs!r} (openpi) and {ours!r}; send only one", meta)
            out[ours] = out.pop(theirs)
    return out


def _check_image(
    key: str, img: Any, expected: tuple[int, int, int], meta: RequestMeta, max_side: int | None = None
) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise _fail(
            f"{key!r} must be a numpy uint8 array of shape {expected}, got {type(img).__name__}", meta
        )
    if img.dtype != np.uint8:
        hint = " (scale floats in [0, 1] by 255 and cast to uint8)" if img.dtype.kind == "f" else ""
        raise _fail(f"{key!r} has dtype {img.dtype}; it must be uint8{hint}", meta)
    if max_side is not None and img.ndim == 3 and img.shape[2] == 3:
        if min(img.shape[:2]) < 1 or max(img.shape[:2]) > max_side:
            raise _fail(
                f"{key!r} has shape {img.shape}; height and width must be within [1, {max_side}]", meta
            )
        return img
    if img.shape != expected:
        if img.ndim == 3 and img.shape[0] == 3 and img.shape[1:] == expected[:2]:
            raise _fail(f"{key!r} has shape {img.shape} (channels first); transpose it to {expected}", meta)
        raise _fail(
            f"{key!r} has shape {img.shape}; this checkpoint expects {expected} (height, width, RGB; "
            "see image_shapes in /metadata), so resize it on the robot side",
            meta,
        )
    return img


def _check_state(state: Any, dim: int, meta: RequestMeta) -> np.ndarray:
    if isinstance(state, list | tuple):
        raise _fail(f"{STATE_KEY!r} must be a numpy float array of shape ({dim},), got a Python list", meta)
    if not isinstance(state, np.ndarray):
        raise _fail(
            f"{STATE_KEY!r} must be a numpy float array of shape ({dim},), got {type(state).__name__}", meta
        )
    if state.dtype.kind != "f":
        raise _fail(
            f"{STATE_KEY!r} has dtype {state.dtype}; it must be a float array (float32 preferred)", meta
        )
    if state.shape != (dim,):
        raise _fail(f"{STATE_KEY!r} has shape {state.shape}; this checkpoint expects ({dim},)", meta)
    with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, reported below
        out = state.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        idx = np.flatnonzero(bad).tolist()
        raise _fail(
            f"{STATE_KEY!r} has non-finite values (NaN/inf, or beyond float32 range) at indices {idx}; "
            "check the robot's state readout",
            meta,
        )
    return out


def _check_task(task: Any, meta: RequestMeta) -> str:
    if isinstance(task, np.ndarray) and task.shape == () and task.dtype.kind in "US":
        task = task.item()
    if isinstance(task, bytes):
        try:
            task = task.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(
                f"{TASK_KEY!r} bytes are not valid UTF-8; send the instruction as a string", meta
            ) from None
    if not isinstance(task, str):
        raise _fail(f"{TASK_KEY!r} must be the instruction string, got {type(task).__name__}", meta)
    if not task.strip():
        raise _fail(f"{TASK_KEY!r} is empty; send the language instruction", meta)
    if len(task) > MAX_TASK_CHARS:
        raise _fail(f"{TASK_KEY!r} is {len(task)} characters; keep it under {MAX_TASK_CHARS}", meta)
    return task


def validate_observation(raw: Any, spec: ObservationSpec) -> tuple[dict[str, Any], RequestMeta]:
    """Check a decoded request and return the clean observation and its meta fields.

    openpi's LIBERO keys (``observation/image``, ``observation/wrist_image``, ``observation/state``,
    ``prompt``) are accepted and renamed to ours. Unknown extra keys are ignored.

    Args:
        raw: The decoded request body.
        spec: The checkpoint's contract.

    Returns:
        ``(obs, meta)``: ``obs`` holds exactly the camera keys, ``observation.state`` (float32) and
        ``task``; ``meta`` the request id, observation timestamp and deadline.

    Raises:
        InvalidObservationError: With a message naming the key, what came and what is expected.
    """
    if not isinstance(raw, dict):
        raise _fail(f"the request must be a msgpack map of observation keys, got {type(raw).__name__}")
    bad_keys = [k for k in raw if not isinstance(k, str)]
    if bad_keys:
        raise _fail(f"observation keys must be strings, got {bad_keys[:3]!r}")
    meta = _parse_meta(raw)
    raw = _map_openpi_keys(raw, meta)
    required = [*spec.image_shapes, STATE_KEY, TASK_KEY]
    missing = [k for k in required if k not in raw]
    if missing:
        got = sorted(k for k in raw if k not in (REQUEST_ID_KEY, TIMESTAMP_KEY, DEADLINE_KEY))
        raise _fail(f"observation is missing {missing}; it has {got}. Required keys: {required}", meta)
    obs: dict[str, Any] = {}
    for key, shape in spec.image_shapes.items():
        obs[key] = _check_image(key, raw[key], shape, meta, spec.max_image_side)
    obs[STATE_KEY] = _check_state(raw[STATE_KEY], spec.state_dim, meta)
    obs[TASK_KEY] = _check_task(raw[TASK_KEY], meta)
    return obs, meta


def postprocess_actions(actions: Any, spec: ObservationSpec) -> tuple[np.ndarray, int]:
    """Check the model's action chunk and clip it to the declared range.

    Args:
        actions: The policy's ``actions`` output, `(chunk, action_dim)`.
        spec: The checkpoint's contract.

    Returns:
        ``(actions, n_clipped)``: float32 `(chunk, action_dim)` within ``[action_low, action_high]``, and
        how many entries were clipped.

    Raises:
        InternalServerError: When the output has the wrong shape or is not finite; such a chunk must
            never reach a robot.
    """
    a = np.asarray(actions, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != spec.action_dim:
        raise InternalServerError(
            f"policy returned actions of shape {a.shape}; expected (chunk, {spec.action_dim})"
        )
    if not np.isfinite(a).all():
        raise InternalServerError("policy returned non-finite actions; refusing to send them to a robot")
    clipped = np.clip(a, spec.action_low, spec.action_high)
    n = int(np.count_nonzero(clipped != a))
    return clipped, n

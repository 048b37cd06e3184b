"""Wire protocol shared by the policy server and its clients: msgpack-numpy codec, keys, typed errors.

This module imports numpy and msgpack only (never torch): a robot installs the client alone.

Encoding (byte-compatible with ``openpi_client.msgpack_numpy``, so openpi clients and ours interoperate):

* a numpy array becomes the map ``{b"__ndarray__": True, b"data": <raw bytes, C order>,
  b"dtype": <dtype.str, e.g. "<f4">, b"shape": [..]}``;
* a numpy scalar becomes ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": <dtype.str>}``;
* everything else is plain msgpack (str, bytes, int, float, bool, None, lists, maps; tuples come back as
  lists; ``np.float64`` / ``np.str_`` scalars subclass float / str and so arrive as plain float / str).

Unlike a bare ``np.ndarray(buffer=...)`` decode, :func:`unpackb` checks every array header before it
touches the data: only bool / int / uint / float / str / bytes dtypes (no object, void, complex or datetime
arrays), a shape of non-negative integers, and a payload whose length matches shape times item size.
Anything else raises :class:`BadRequestError` with a message saying what was wrong. There is no pickle
anywhere.

Versioning: :data:`PROTOCOL_VERSION` is announced in ``/metadata`` (and the websocket's first frame) and
echoed in every reply; an HTTP client may send it in the :data:`VERSION_HEADER` header and the server
refuses a version it does not speak.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import msgpack
import numpy as np

__all__ = [
    "API_KEY_HEADER",
    "CONTENT_TYPE",
    "META_KEYS",
    "OPENPI_KEY_MAP",
    "PROTOCOL_VERSION",
    "VERSION_HEADER",
    "BadRequestError",
    "DeadlineExceededError",
    "InternalServerError",
    "InvalidObservationError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "PolicyServerError",
    "UnauthorizedError",
    "error_from_payload",
    "packb",
    "unpackb",
]

PROTOCOL_VERSION = 1
"""Version of the request/reply layout. Bumped on any incompatible change."""

CONTENT_TYPE = "application/msgpack"
VERSION_HEADER = "X-VLA-Protocol"
API_KEY_HEADER = "Authorization"
"""Carries ``Api-Key <key>``, exactly as ``openpi_client.WebsocketClientPolicy`` sends it."""

# Observation keys (DESIGN.md "Interfaces"): LeRobot conventions, the same in sim, datasets and on the wire.
IMAGE_KEY_PREFIX = "observation.images."
STATE_KEY = "observation.state"
TASK_KEY = "task"

# Optional request fields that are not part of the observation. They are echoed in the reply so a robot
# can drop a stale answer (request id, observation timestamp) and can tighten the server's deadline.
REQUEST_ID_KEY = "request_id"
TIMESTAMP_KEY = "timestamp"
DEADLINE_KEY = "deadline_s"
META_KEYS = (REQUEST_ID_KEY, TIMESTAMP_KEY, DEADLINE_KEY)

OPENPI_KEY_MAP = {
    "observation/image": "observation.images.agentview",
    "observation/wrist_image": "observation.images.wrist",
    "observation/state": STATE_KEY,
    "prompt": TASK_KEY,
}
"""openpi's LIBERO observation keys (``examples/libero/main.py``) mapped to ours."""

_ALLOWED_KINDS = frozenset("biufUS")
_KIND_NAMES = {
    "O": "object",
    "V": "void/structured",
    "c": "complex",
    "M": "datetime",
    "m": "timedelta",
}


# --------------------------------------------------------------------------------------------------
# Typed errors. Each maps to one HTTP status and a stable ``code`` string; the JSON error body is
# ``{"error": {"code": ..., "status": ..., "message": ..., "request_id": ...}}``.
# --------------------------------------------------------------------------------------------------
class PolicyServerError(Exception):
    """Base of every error the server reports; carries an HTTP status and a stable code."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def to_payload(self) -> dict[str, Any]:
        """Return the JSON-able error body sent to clients."""
        return {
            "error": {
                "code": self.code,
                "status": self.status,
                "message": self.message,
                "request_id": self.request_id,
            }
        }


class BadRequestError(PolicyServerError):
    """The body could not be decoded (truncated or malformed msgpack, bad array header, wrong version)."""

    status = 400
    code = "bad_request"


class UnauthorizedError(PolicyServerError):
    """The API key is missing or wrong."""

    status = 401
    code = "unauthorized"


class PayloadTooLargeError(PolicyServerError):
    """The body is larger than the server's ``max_body_bytes``."""

    status = 413
    code = "payload_too_large"


class InvalidObservationError(PolicyServerError):
    """The observation decoded but does not match the checkpoint's contract (keys, dtypes, shapes, NaN)."""

    status = 422
    code = "invalid_observation"


class InternalServerError(PolicyServerError):
    """The policy failed on a valid observation (a server bug, not the client's)."""

    status = 500
    code = "internal"
    retryable = True


class NotReadyError(PolicyServerError):
    """The model is not loaded and warmed up yet."""

    status = 503
    code = "not_ready"
    retryable = True


class OverloadedError(PolicyServerError):
    """The server's queue is full; try again later or add replicas."""

    status = 503
    code = "overloaded"
    retryable = True


class DeadlineExceededError(PolicyServerError):
    """No answer within the request's deadline."""

    status = 504
    code = "deadline_exceeded"
    retryable = True


_ERRORS_BY_CODE: dict[str, type[PolicyServerError]] = {
    cls.code: cls
    for cls in (
        BadRequestError,
        UnauthorizedError,
        PayloadTooLargeError,
        InvalidObservationError,
        InternalServerError,
        NotReadyError,
        OverloadedError,
        DeadlineExceededError,
    )
}
_ERRORS_BY_STATUS: dict[int, type[PolicyServerError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: UnauthorizedError,
    413: PayloadTooLargeError,
    422: InvalidObservationError,
    500: InternalServerError,
    502: InternalServerError,
    503: OverloadedError,
    504: DeadlineExceededError,
}


def error_from_payload(payload: Any, status: int | None = None) -> PolicyServerError:
    """Rebuild a typed error from a server's error body (or from a bare status when the body is not ours).

    Args:
        payload: The decoded JSON error body, or anything else (text, None) from a proxy in between.
        status: The HTTP status, used when the body does not name a known code.

    Returns:
        An instance of the matching :class:`PolicyServerError` subclass.
    """
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        err = payload["error"]
        cls = _ERRORS_BY_CODE.get(str(err.get("code")))
        if cls is None:
            cls = _ERRORS_BY_STATUS.get(int(err.get("status") or status or 500), PolicyServerError)
        rid = err.get("request_id")
        return cls(str(err.get("message", "")), request_id=str(rid) if rid is not None else None)
    cls = _ERRORS_BY_STATUS.get(status or 500, PolicyServerError)
    text = payload if isinstance(payload, str) else repr(payload)
    return cls(f"HTTP {status}: {text[:500]}")


# --------------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------------
def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic):
        kind = obj.dtype.kind
        if kind not in _ALLOWED_KINDS:
            raise TypeError(
                f"cannot send a numpy {_KIND_NAMES.get(kind, kind)} dtype ({obj.dtype}); convert it to a "
                "bool, integer, float or string dtype first"
            )
        if isinstance(obj, np.ndarray):
            return {
                b"__ndarray__": True,
                b"data": obj.tobytes(),  # C order, also for non-contiguous views
                b"dtype": obj.dtype.str,
                b"shape": list(obj.shape),
            }
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode an object of type {type(obj).__name__}; send numpy arrays or plain data")


def packb(obj: Any) -> bytes:
    """Encode ``obj`` (nested dicts/lists of numpy arrays, scalars and plain values) as msgpack bytes.

    Args:
        obj: The value to encode.

    Returns:
        The msgpack bytes.

    Raises:
        TypeError: For an unsupported type or dtype (objects, complex, structured arrays).
    """
    return msgpack.packb(obj, default=_encode_hook, use_bin_type=True)


def _get(obj: dict[Any, Any], key: str) -> Any:
    if key.encode() in obj:
        return obj[key.encode()]
    return obj.get(key)


def _decode_dtype(raw: Any) -> np.dtype[Any]:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str) or len(raw) > 16:
        raise BadRequestError(f"array dtype must be a short numpy dtype string such as '<f4', got {raw!r}")
    try:
        dtype = np.dtype(raw)
    except TypeError as e:
        raise BadRequestError(f"unknown array dtype {raw!r}: {e}") from None
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BadRequestError(
            f"array dtype {raw!r} ({_KIND_NAMES.get(dtype.kind, dtype.kind)}) is not accepted; "
            "send bool, integer, float or string arrays"
        )
    return dtype


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        dtype = _decode_dtype(_get(obj, "dtype"))
        shape_raw = _get(obj, "shape")
        if not isinstance(shape_raw, list | tuple) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape_raw
        ):
            raise BadRequestError(f"array shape must be a list of non-negative integers, got {shape_raw!r}")
        shape = tuple(shape_raw)
        data = _get(obj, "data")
        if not isinstance(data, bytes):
            raise BadRequestError(f"array data must be msgpack bin, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if len(data) != expected:
            raise BadRequestError(
                f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes of data, "
                f"got {len(data)} (truncated or mislabelled array)"
            )
        if dtype.itemsize == 0:
            return np.zeros(shape, dtype=dtype)
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        dtype = _decode_dtype(_get(obj, "dtype"))
        value = _get(obj, "data")
        if not isinstance(value, bool | int | float | str | bytes):
            raise BadRequestError(f"numpy scalar data must be a plain value, got {type(value).__name__}")
        try:
            return dtype.type(value)
        except (TypeError, ValueError, OverflowError) as e:
            raise BadRequestError(f"cannot make a {dtype.str} scalar from {value!r}: {e}") from None
    return obj


def unpackb(data: bytes | bytearray | memoryview, *, max_bytes: int | None = None) -> Any:
    """Decode msgpack-numpy bytes produced by :func:`packb` or by ``openpi_client.msgpack_numpy``.

    Arrays come back read-only (they view the received buffer); copy them before writing in place.

    Args:
        data: The encoded bytes.
        max_bytes: Refuse inputs longer than this many bytes.

    Returns:
        The decoded value. Map keys sent as bytes stay bytes, as in openpi's codec.

    Raises:
        PayloadTooLargeError: ``data`` is longer than ``max_bytes``.
        BadRequestError: Truncated or malformed input, extra trailing bytes, or a refused array header.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"message of {len(data)} bytes exceeds the limit of {max_bytes} bytes; send smaller images "
            "(the checkpoint's image size is in /metadata)"
        )
    try:
        return msgpack.unpackb(bytes(data), object_hook=_decode_hook, raw=False, strict_map_key=False)
    except PolicyServerError:
        raise
    except msgpack.ExtraData:
        raise BadRequestError("msgpack message has extra bytes after the first object") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        # msgpack raises ValueError("Unpack failed: incomplete input") for a truncated message.
        raise BadRequestError(f"body is not a valid msgpack-numpy message ({e}); was it truncated?") from None

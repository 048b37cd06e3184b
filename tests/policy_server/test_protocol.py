"""Wire codec: every dtype and shape round trips; openpi's codec interoperates; bad input is refused."""

import math

import msgpack
import numpy as np
import pytest

from policy_server import protocol
from policy_server.protocol import BadRequestError, PayloadTooLargeError, packb, unpackb

DTYPES = [
    np.bool_,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.uint8,
    np.uint16,
    np.uint32,
    np.uint64,
    np.float16,
    np.float32,
    np.float64,
]
SHAPES = [(), (0,), (1,), (7,), (3, 4), (0, 5), (2, 3, 4), (32, 32, 3), (1, 1, 1, 1, 2)]


def _random(dtype, shape, rng):
    if dtype is np.bool_:
        return np.asarray(rng.integers(0, 2, size=shape), dtype=bool)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.asarray(
            rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True), dtype=dtype
        )
    return np.asarray(rng.standard_normal(size=shape) * 1e3, dtype=dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)) or "scalar")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_array_round_trip(dtype, shape):
    rng = np.random.default_rng(0)
    a = _random(dtype, shape, rng)
    b = unpackb(packb({"a": a}))["a"]
    assert isinstance(b, np.ndarray)
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_scalar_round_trip(dtype):
    x = np.dtype(dtype).type(1)
    y = unpackb(packb(x))
    if dtype is np.float64:
        # np.float64 subclasses Python float, so msgpack writes it natively (as openpi's codec does).
        assert type(y) is float
        assert y == 1.0
    else:
        assert type(y) is type(x)
        assert y == x


def test_special_floats_and_byte_orders_and_views():
    a = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-40], np.float32)
    b = unpackb(packb(a))
    assert np.array_equal(np.isnan(a), np.isnan(b))
    assert np.signbit(b[3])
    np.testing.assert_array_equal(a[1:], b[1:])
    big = np.arange(6, dtype=">f8").reshape(2, 3)
    out = unpackb(packb(big))
    assert out.dtype == np.dtype(">f8")
    np.testing.assert_array_equal(out, big)
    base = np.arange(24, dtype=np.int32).reshape(4, 6)
    for view in (base.T, base[:, ::2], base[::-1]):
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(unpackb(packb(view)), view)


def test_strings_and_nested_plain_data():
    obj = {
        "task": "pick up the red cube",
        "unicode": "grasp ☕ – ok",
        "bytes": b"\x00\x01\xff",
        "ints": [0, -1, 2**63 - 1, -(2**63)],
        "floats": [0.5, -1e300, math.inf],
        "flags": [True, False, None],
        "nested": {"a": {"b": [np.arange(3, dtype=np.uint8), {"c": np.float32(2.5)}]}},
        "str_array": np.array(["put", "the bowl"]),
        "bytes_array": np.array([b"ab", b"c"]),
        "empty": {},
    }
    out = unpackb(packb(obj))
    assert out["task"] == obj["task"]
    assert out["unicode"] == obj["unicode"]
    assert out["bytes"] == obj["bytes"]
    assert out["ints"] == obj["ints"]
    assert out["floats"] == obj["floats"]
    assert out["flags"] == obj["flags"]
    np.testing.assert_array_equal(out["nested"]["a"]["b"][0], np.arange(3, dtype=np.uint8))
    assert out["nested"]["a"]["b"][1]["c"] == np.float32(2.5)
    assert out["str_array"].dtype.kind == "U"
    assert list(out["str_array"]) == ["put", "the bowl"]
    assert list(out["bytes_array"]) == [b"ab", b"c"]
    assert out["empty"] == {}


def test_tuples_come_back_as_lists():
    assert unpackb(packb({"t": (1, 2)})) == {"t": [1, 2]}


def test_interoperates_with_openpi_codec():
    openpi = pytest.importorskip("openpi_client.msgpack_numpy")
    obs = {
        "observation/image": np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3),
        "observation/state": np.linspace(-1, 1, 8),
        "prompt": "open the drawer",
        "scalar": np.float32(0.25),
    }
    ours = unpackb(openpi.packb(obs))
    theirs = openpi.unpackb(packb(obs))
    for out in (ours, theirs):
        np.testing.assert_array_equal(out["observation/image"], obs["observation/image"])
        assert out["observation/state"].dtype == np.float64
        np.testing.assert_array_equal(out["observation/state"], obs["observation/state"])
        assert out["prompt"] == "open the drawer"
        assert out["scalar"] == np.float32(0.25)
    assert packb(obs) == openpi.packb(obs)  # byte-identical encoding


@pytest.mark.parametrize("dtype", [np.complex64, object, np.dtype([("x", "<f4")]), "datetime64[s]"])
def test_encode_refuses_unsafe_dtypes(dtype):
    arr = np.zeros(2, dtype=dtype)
    with pytest.raises(TypeError, match="cannot send"):
        packb({"a": arr})


def test_encode_refuses_unknown_objects():
    with pytest.raises(TypeError, match="cannot encode an object of type"):
        packb({"a": object()})


def _header(dtype, shape, data):
    return msgpack.packb({"x": {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}})


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (_header("|O", [2], b"\x00" * 16), "not accepted"),
        (_header("<c8", [1], b"\x00" * 8), "not accepted"),
        (_header("|V4", [1], b"\x00" * 4), "not accepted"),
        (_header("nonsense", [1], b"\x00"), "unknown array dtype"),
        (_header("<f4", [4], b"\x00" * 12), "needs 16 bytes"),
        (_header("<f4", [-1], b""), "non-negative"),
        (_header("<f4", "3", b"\x00" * 12), "non-negative"),
        (_header("<f4", [3], "text"), "must be msgpack bin"),
        (_header("<f4", [2**40, 2**40], b""), "needs"),
        (msgpack.packb({"x": {b"__npgeneric__": True, b"data": [1], b"dtype": "<f4"}}), "plain value"),
        (packb({"a": np.zeros(100, np.float32)})[:-7], "truncated"),
        (b"\xc1", "not a valid msgpack"),
        (packb({"a": 1}) + b"\x00", "extra bytes"),
    ],
    ids=[
        "object",
        "complex",
        "void",
        "bad-dtype",
        "short-data",
        "negative-dim",
        "shape-not-list",
        "data-not-bin",
        "huge-shape",
        "scalar-not-plain",
        "truncated",
        "reserved-byte",
        "trailing-bytes",
    ],
)
def test_decode_refuses_malformed(payload, match):
    with pytest.raises(BadRequestError, match=match) as info:
        unpackb(payload)
    assert info.value.status == 400


def test_decode_size_limit():
    body = packb({"a": np.zeros(2048, np.uint8)})
    assert unpackb(body, max_bytes=len(body))["a"].shape == (2048,)
    with pytest.raises(PayloadTooLargeError, match="exceeds the limit") as info:
        unpackb(body, max_bytes=len(body) - 1)
    assert info.value.status == 413


def test_decoded_arrays_are_read_only_views():
    out = unpackb(packb({"a": np.zeros(4, np.float32)}))["a"]
    with pytest.raises(ValueError, match="read-only"):
        out[0] = 1.0


@pytest.mark.parametrize(
    "cls",
    [
        protocol.BadRequestError,
        protocol.UnauthorizedError,
        protocol.PayloadTooLargeError,
        protocol.InvalidObservationError,
        protocol.InternalServerError,
        protocol.NotReadyError,
        protocol.OverloadedError,
        protocol.DeadlineExceededError,
    ],
)
def test_error_payload_round_trip(cls):
    err = cls("what to fix", request_id="r1")
    back = protocol.error_from_payload(err.to_payload(), err.status)
    assert type(back) is cls
    assert back.message == "what to fix"
    assert back.request_id == "r1"
    assert back.retryable == (err.status >= 500)


def test_error_from_foreign_body_uses_status():
    err = protocol.error_from_payload("upstream connect error", 503)
    assert isinstance(err, protocol.OverloadedError)
    assert "upstream connect error" in err.message
    assert isinstance(protocol.error_from_payload({"detail": "x"}, 422), protocol.InvalidObservationError)

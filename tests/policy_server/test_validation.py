"""Observation validation against a checkpoint's contract, openpi key mapping, action clipping."""

import numpy as np
import pytest

from policy_server.protocol import InternalServerError, InvalidObservationError
from policy_server.validation import ObservationSpec, postprocess_actions, validate_observation

AGENT = "observation.images.agentview"
WRIST = "observation.images.wrist"

METADATA = {
    "camera_keys": [AGENT, WRIST],
    "image_size": [32, 32],
    "state_dim": 8,
    "action_dim": 7,
    "chunk_size": 10,
    "action_low": [-1.0] * 7,
    "action_high": [1.0] * 7,
}


@pytest.fixture
def spec():
    return ObservationSpec.from_metadata(METADATA)


def good_obs():
    rng = np.random.default_rng(0)
    return {
        AGENT: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        WRIST: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        "observation.state": rng.standard_normal(8).astype(np.float32),
        "task": "put the bowl on the plate",
    }


def test_good_observation_passes_and_meta_is_parsed(spec):
    raw = {**good_obs(), "request_id": "abc", "timestamp": np.float64(12.5), "deadline_s": 0.5, "extra": 1}
    obs, meta = validate_observation(raw, spec)
    assert set(obs) == {AGENT, WRIST, "observation.state", "task"}
    assert obs["observation.state"].dtype == np.float32
    assert (meta.request_id, meta.timestamp, meta.deadline_s) == ("abc", 12.5, 0.5)


def test_float64_state_is_accepted_as_float32(spec):
    raw = good_obs()
    raw["observation.state"] = raw["observation.state"].astype(np.float64)
    obs, _ = validate_observation(raw, spec)
    assert obs["observation.state"].dtype == np.float32
    np.testing.assert_allclose(obs["observation.state"], raw["observation.state"], rtol=1e-6)


def test_openpi_keys_are_mapped(spec):
    o = good_obs()
    raw = {
        "observation/image": o[AGENT],
        "observation/wrist_image": o[WRIST],
        "observation/state": o["observation.state"].astype(np.float64),
        "prompt": "pick up the bowl",
    }
    obs, _ = validate_observation(raw, spec)
    assert obs["task"] == "pick up the bowl"
    np.testing.assert_array_equal(obs[AGENT], o[AGENT])
    with pytest.raises(InvalidObservationError, match=r"both 'prompt' .* and 'task'"):
        validate_observation({**raw, "task": "x"}, spec)


def _mutate(key, value):
    o = good_obs()
    if value is KeyError:
        del o[key]
    else:
        o[key] = value
    return o


BAD = [
    ("missing-key", _mutate(WRIST, KeyError), r"missing \['observation.images.wrist'\]"),
    ("wrong-image-shape", _mutate(AGENT, np.zeros((16, 16, 3), np.uint8)), r"expects \(32, 32, 3\)"),
    ("channels-first", _mutate(AGENT, np.zeros((3, 32, 32), np.uint8)), "channels first"),
    ("gray-image", _mutate(AGENT, np.zeros((32, 32), np.uint8)), r"expects \(32, 32, 3\)"),
    ("float-image", _mutate(AGENT, np.zeros((32, 32, 3), np.float32)), "must be uint8.*scale floats"),
    ("image-list", _mutate(AGENT, [[0]]), "must be a numpy uint8 array"),
    ("int-state", _mutate("observation.state", np.zeros(8, np.int32)), "must be a float array"),
    ("state-shape", _mutate("observation.state", np.zeros(7, np.float32)), r"expects \(8,\)"),
    ("state-list", _mutate("observation.state", [0.0] * 8), "Python list"),
    (
        "nan-state",
        _mutate("observation.state", np.array([0, np.nan, 0, 0, 0, 0, 0, 0], np.float32)),
        r"non-finite values .* at indices \[1\]",
    ),
    ("inf-state", _mutate("observation.state", np.array([np.inf] + [0] * 7, np.float32)), "non-finite"),
    ("f64-overflow", _mutate("observation.state", np.array([1e300] + [0] * 7)), "beyond float32 range"),
    ("empty-task", _mutate("task", "  "), "is empty"),
    ("task-not-str", _mutate("task", 3), "must be the instruction string"),
    ("huge-task", _mutate("task", "x" * 5000), "keep it under"),
    ("bad-timestamp", {**good_obs(), "timestamp": "now"}, "'timestamp' must be a number"),
    ("nan-timestamp", {**good_obs(), "timestamp": float("nan")}, "must be finite"),
    ("negative-deadline", {**good_obs(), "deadline_s": -1}, "must be > 0"),
    ("bad-request-id", {**good_obs(), "request_id": [1]}, "string or integer"),
]


@pytest.mark.parametrize(("raw", "match"), [(b[1], b[2]) for b in BAD], ids=[b[0] for b in BAD])
def test_bad_observations_are_refused_with_a_fix(spec, raw, match):
    with pytest.raises(InvalidObservationError, match=match) as info:
        validate_observation(raw, spec)
    assert info.value.status == 422


def test_not_a_map(spec):
    with pytest.raises(InvalidObservationError, match="must be a msgpack map"):
        validate_observation([1, 2], spec)
    with pytest.raises(InvalidObservationError, match="keys must be strings"):
        validate_observation({b"task": "x"}, spec)


def test_resize_mode_accepts_other_sizes_within_bounds():
    spec = ObservationSpec.from_metadata(METADATA, max_image_side=64)
    obs, _ = validate_observation(_mutate(AGENT, np.zeros((48, 64, 3), np.uint8)), spec)
    assert obs[AGENT].shape == (48, 64, 3)
    with pytest.raises(InvalidObservationError, match=r"within \[1, 64\]"):
        validate_observation(_mutate(AGENT, np.zeros((65, 8, 3), np.uint8)), spec)


def test_spec_from_metadata_variants():
    md = {**METADATA, "camera_keys": ["agentview"], "image_size": 24}
    md.pop("action_low")
    md.pop("action_high")
    spec = ObservationSpec.from_metadata(md)
    assert spec.image_shapes == {AGENT: (24, 24, 3)}
    np.testing.assert_array_equal(spec.action_low, -np.ones(7, np.float32))
    with pytest.raises(ValueError, match="lacks \\['state_dim'\\]"):
        ObservationSpec.from_metadata({k: v for k, v in METADATA.items() if k != "state_dim"})


def test_actions_are_clipped_to_the_declared_range(spec):
    a = np.zeros((10, 7), np.float32)
    a[0, 0], a[3, 6], a[9, 2] = 1.5, -3.0, 0.999
    out, n = postprocess_actions(a, spec)
    assert n == 2
    assert out.dtype == np.float32
    assert out[0, 0] == 1.0
    assert out[3, 6] == -1.0
    assert out[9, 2] == np.float32(0.999)
    assert out.min() >= -1
    assert out.max() <= 1


@pytest.mark.parametrize(
    ("actions", "match"),
    [(np.full((10, 7), np.nan), "non-finite"), (np.zeros((10, 6)), "shape"), (np.zeros(7), "shape")],
    ids=["nan", "wrong-dim", "1d"],
)
def test_bad_model_output_never_reaches_the_robot(spec, actions, match):
    with pytest.raises(InternalServerError, match=match):
        postprocess_actions(actions, spec)

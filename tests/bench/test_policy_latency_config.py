"""bench.policy_latency times a policy preset or the ``policy`` section of a train config."""

from __future__ import annotations

import pytest

from bench.policy_latency import HEADLINE_PRESET, load_policy_config


def test_train_config_gives_its_policy_section():
    cfg = load_policy_config(f"configs/train/{HEADLINE_PRESET}.yaml")
    assert cfg.vision.film_dim == 384  # the trained recipe, not the plain base preset
    assert cfg.subgoal_noise == 0.5
    assert cfg.state_dropout == 0.5
    base = load_policy_config("configs/policy/cot_vla_base.yaml")
    assert not base.vision.film_dim
    assert cfg.backbone == base.backbone


def test_not_a_mapping_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="YAML mapping"):
        load_policy_config(str(bad))

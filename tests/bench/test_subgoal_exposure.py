"""bench.subgoal_exposure and CotVlaPolicy.actions_given_codes: actions with true vs own subgoal codes."""

from __future__ import annotations

import json

import pytest
import torch

import vla
from bench import subgoal_exposure as se
from tests.vla.test_aux_target import _windows
from vla.configs import CotVlaConfig
from vla.constants import SUBGOAL_IMAGE
from vla.windows import save_windows


def test_actions_given_own_codes_equal_generate_and_true_codes_equal_training_view():
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny()
    policy = cfg.build().eval()
    batch = cfg.fake_batch(3, seed=2)
    gen = policy.generate(batch)
    torch.testing.assert_close(policy.actions_given_codes(batch, gen["codes"]), gen["actions_norm"])
    true = policy.subgoal_codes(batch[SUBGOAL_IMAGE])
    assert not torch.equal(true, gen["codes"])  # a random model does not predict the subgoal
    a_true = policy.actions_given_codes(batch, true)
    assert not torch.equal(a_true, gen["actions_norm"])  # so the two views differ
    with pytest.raises(ValueError, match="codes must be"):
        policy.actions_given_codes(batch, true[:, :-1])
    with pytest.raises(ValueError, match="needs a CoT policy"):
        CotVlaConfig.tiny(use_cot=False).build().actions_given_codes(batch, true)


def test_action_l1_leaves_padded_steps_out():
    target = torch.zeros(1, 2, 3)
    pred = torch.tensor([[[0.3, 0.3, 0.3], [9.0, 9.0, 9.0]]])
    assert se.action_l1(pred, target, torch.tensor([[False, True]])) == pytest.approx(0.3)
    assert se.action_l1(pred, target, torch.tensor([[False, False]])) == pytest.approx(4.65)


def test_bench_rows_per_checkpoint_and_task(tmp_path):
    win = save_windows(_windows(lengths=(14, 12, 13)), tmp_path / "win")
    a = vla.make_tiny_checkpoint(tmp_path / "a", seed=1)
    path = se.main(
        [
            "--checkpoint",
            f"a={a}",
            "--checkpoint",
            f"a_again={a}",
            "--windows",
            str(win),
            "--per_task",
            "5",
            "--out",
            str(tmp_path / "res"),
        ]
    )
    doc = json.loads(path.read_text())
    rows = doc["rows"]
    assert {(r["checkpoint"], r["task"]) for r in rows} == {
        (c, t)
        for c in ("a", "a_again")
        for t in ("put the red cube on the plate", "put the blue cube in the bin")
    }
    for r in rows:
        assert r["samples"] == 5
        assert 0 <= r["own_code_acc"] <= 1
        assert r["ratio"] == pytest.approx(r["l1_own"] / r["l1_true"], rel=1e-2)
    by = {(r["checkpoint"], r["task"]): r for r in rows}
    for t in (
        "put the red cube on the plate",
        "put the blue cube in the bin",
    ):  # same windows for every checkpoint
        assert by[("a", t)]["l1_true"] == by[("a_again", t)]["l1_true"]
    assert doc["headline"]["ratio_mean_a"] == doc["headline"]["ratio_mean_a_again"]
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    nocot = vla.make_tiny_checkpoint(tmp_path / "n", seed=1, use_cot=False)
    with pytest.raises(SystemExit, match="no subgoal codes"):
        se.main(["--checkpoint", f"n={nocot}", "--windows", str(win), "--out", str(tmp_path / "res")])
    with pytest.raises(SystemExit, match="NAME=PATH"):
        se.main(["--checkpoint", str(a), "--windows", str(win)])

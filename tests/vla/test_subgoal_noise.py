"""Subgoal noise: random codes in the training input of the subgoal block; targets stay the true codes."""

from __future__ import annotations

import pytest
import torch

from vla.configs import CotVlaConfig
from vla.constants import SUBGOAL_IMAGE


def _capture_code_inputs(policy) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    policy.code_embed.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().clone()))
    return seen


def test_training_replaces_up_to_the_share_and_eval_feeds_the_true_codes():
    torch.manual_seed(0)
    policy = CotVlaConfig.tiny(subgoal_noise=0.6).build()
    batch = policy.config.fake_batch(400, seed=0)
    true = policy.subgoal_codes(batch[SUBGOAL_IMAGE])
    seen = _capture_code_inputs(policy)
    policy.train()
    policy(batch)
    wrong = (seen[-1] != true).float()
    v = policy.config.tokenizer.codebook_size
    # share ~ U(0, 0.6) per sample, and a random code equals the true one 1/v of the time
    assert wrong.mean().item() == pytest.approx(0.3 * (1 - 1 / v), abs=0.03)
    per_sample = wrong.mean(1)
    assert per_sample.min().item() < 0.05  # shares differ per sample
    assert per_sample.max().item() > 0.4
    assert int(seen[-1].min()) >= 0
    assert int(seen[-1].max()) < v
    policy.eval()
    policy(batch)
    assert torch.equal(seen[-1], true)


def test_targets_stay_true_and_off_by_default():
    torch.manual_seed(0)
    noisy = CotVlaConfig.tiny(subgoal_noise=1.0).build()
    torch.manual_seed(0)
    plain = CotVlaConfig.tiny().build()
    plain.load_state_dict(noisy.state_dict())
    batch = plain.config.fake_batch(8, seed=1)
    seen = _capture_code_inputs(plain)
    plain.train()
    plain(batch)
    assert torch.equal(seen[-1], plain.subgoal_codes(batch[SUBGOAL_IMAGE]))  # default 0: no noise
    # with noise the subgoal loss is still measured against the true codes: in eval mode (no noise,
    # same weights) the two policies' losses agree exactly
    noisy.eval(), plain.eval()
    _, a = noisy(batch)
    _, b = plain(batch)
    torch.testing.assert_close(a["subgoal_loss"], b["subgoal_loss"], atol=0, rtol=0)
    noisy.train()
    torch.manual_seed(3)
    _, c = noisy(batch)
    assert not torch.equal(c["action_loss"], b["action_loss"])  # all-noise inputs change what actions see
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="subgoal_noise must be in"):
            CotVlaConfig.tiny(subgoal_noise=bad)

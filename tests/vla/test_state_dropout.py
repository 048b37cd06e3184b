"""State dropout: the robot-state token replaced by a learned "no state" embedding on a share of samples."""

from __future__ import annotations

import pytest
import torch

from vla.configs import CotVlaConfig
from vla.constants import OBS_STATE
from vla.policy import Policy


def _state_token(policy, batch) -> torch.Tensor:
    prefix, _ = policy.embed_prefix(batch)
    return prefix[:, policy.config.text_max_tokens]  # [instruction | state | cameras]


def test_default_builds_nothing_and_bad_shares_are_refused():
    torch.manual_seed(0)
    plain = CotVlaConfig.tiny().build()
    torch.manual_seed(0)
    drop = CotVlaConfig.tiny(state_dropout=0.3).build()
    assert not any("state_null" in k for k in plain.state_dict())
    shared = plain.state_dict()
    for k, v in drop.state_dict().items():  # built after the rest: everything else initialises the same
        if k in shared:
            torch.testing.assert_close(v, shared[k], atol=0, rtol=0, msg=k)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="state_dropout must be in"):
            CotVlaConfig.tiny(state_dropout=bad)


def test_training_drops_about_the_share_and_eval_keeps_the_state():
    torch.manual_seed(0)
    policy = CotVlaConfig.tiny(state_dropout=0.25).build()
    with torch.no_grad():
        policy.state_null.normal_()  # tell it apart from any projected state
    batch = policy.config.fake_batch(400, seed=0)
    null = policy.state_null.detach()
    policy.train()
    torch.manual_seed(1)
    with torch.no_grad():
        tok = _state_token(policy, batch)
    dropped = (tok == null).all(-1)
    assert 60 <= dropped.sum().item() <= 140  # 100 expected; binomial sd 8.7
    kept = ~dropped
    with torch.no_grad():
        want = policy.state_proj((batch[OBS_STATE] - policy.state_mean) / policy.state_std)
    torch.testing.assert_close(tok[kept], want[kept])
    policy.eval()
    with torch.no_grad():
        tok_eval = _state_token(policy, batch)
    torch.testing.assert_close(tok_eval, want)  # inference always reads the state


@pytest.mark.parametrize("use_cot", [True, False])
def test_share_one_never_sees_the_state_and_learns_the_null_token(use_cot, tmp_path):
    torch.manual_seed(0)
    policy = CotVlaConfig.tiny(state_dropout=1.0, use_cot=use_cot).build()
    batch = policy.config.fake_batch(3, seed=0)
    other = dict(batch)
    other[OBS_STATE] = batch[OBS_STATE] * 5 + 3
    policy.eval()
    with torch.no_grad():
        a, b = _state_token(policy, batch), _state_token(policy, other)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    policy.train()
    loss, _ = policy(batch)
    loss.backward()
    assert policy.state_null.grad is not None
    assert policy.state_null.grad.abs().sum() > 0
    assert policy.state_proj.weight.grad is None or policy.state_proj.weight.grad.abs().sum() == 0
    with torch.no_grad():
        policy.state_null.add_(1.0)
    back = Policy.from_pretrained(policy.save_pretrained(tmp_path / "ckpt"))
    torch.testing.assert_close(back.state_null, policy.state_null, atol=0, rtol=0)
    assert back.config.state_dropout == 1.0

"""XAttention scoring on the keys' principal subspace (``kernels/xattention/lowrank.py``)."""

from __future__ import annotations

import pytest
import torch

from bench.prefill_attention import mass_recall
from kernels import SparsePrefillConfig
from kernels.block_sparse_attention import index_to_mask
from kernels.testing import PEAKED, needles_kept, structured_qkv
from kernels.xattention import antidiagonal_block_mass_ref, xattn_select
from kernels.xattention.lowrank import key_subspace, project_qk


def _top_energy(k: torch.Tensor, rank: int) -> torch.Tensor:
    """Share of each key head's energy in its exact top-``rank`` eigen-subspace (eigh of K^T K)."""
    kf = k.float().transpose(1, 2)
    ev = torch.linalg.eigvalsh(kf.mT @ kf)  # ascending
    return ev[..., -rank:].sum(-1) / ev.sum(-1)


def _energy(k: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    kf = k.float().transpose(1, 2)
    return (kf @ basis).square().sum((-1, -2)) / kf.square().sum((-1, -2))


def test_subspace_is_orthonormal_and_holds_the_top_energy():
    _, k, _, _ = structured_qkv(2, 2048, 4, 2, 128, seed=1, needle_len=32)
    basis = key_subspace(k, 64)
    assert basis.shape == (2, 2, 128, 64)
    eye = torch.eye(64).expand(2, 2, 64, 64)
    torch.testing.assert_close(basis.mT @ basis, eye, atol=1e-4, rtol=0)
    # from a strided sample and three iterations, within 1 % of the exact top-64 subspace's energy
    assert (_energy(k, basis) >= 0.99 * _top_energy(k, 64)).all()
    # and far more than 64 coordinates picked at random hold
    assert (_energy(k, basis) > _energy(k, torch.eye(128)[:, :64].expand(2, 2, 128, 64)) + 0.1).all()


def test_projection_keeps_logits_of_keys_inside_the_subspace():
    g = torch.Generator().manual_seed(0)
    b, t, hq, hkv, d, r = 1, 256, 4, 2, 64, 8
    mix = torch.randn(b, hkv, r, d, generator=g)
    k = torch.einsum("bthr,bhrd->bthd", torch.randn(b, t, hkv, r, generator=g), mix)  # rank-8 keys
    q = torch.randn(b, t, hq, d, generator=g)
    qp, kp = project_qk(q, k, key_subspace(k, r))
    assert qp.shape == (b, t, hq, r)
    assert kp.shape == (b, t, hkv, r)
    want = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(2, 2))
    got = torch.einsum("bqhd,bkhd->bhqk", qp, kp.repeat_interleave(2, 2))
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("kind", ["diffuse", "peaked"])
@pytest.mark.parametrize("impl", ["reference", "triton"])
def test_rank_half_keeps_needles_and_mass(kind, impl, device):
    """Half the head dim scores almost as well as all of it: needles kept, recall vs oracle, density."""
    kw = PEAKED if kind == "peaked" else {}
    dtype = torch.float16 if impl == "triton" else torch.float32
    q, k, _, needles = structured_qkv(
        1, 2048, 4, 2, 128, dtype=dtype, device=device, seed=7, needle_len=32, needles_per_head=2, **kw
    )
    true = antidiagonal_block_mass_ref(q.float(), k.float(), stride=1, block_size=128)
    masks = {}
    for rank in (0, 64):
        index, _ = xattn_select(
            q, k, stride=16, tau=0.9, block_size=128, impl=impl, row_share=0.1, score_rank=rank
        )
        masks[rank] = index_to_mask(index, 16).cpu()
    assert needles_kept(needles, masks[64], 128) == 1.0
    assert mass_recall(true.cpu(), masks[64]) >= 0.99
    vis = torch.ones(16, 16, dtype=torch.bool).tril()
    dens = {r: (m & vis).float().sum().item() / (vis.sum().item() * 4) for r, m in masks.items()}
    assert dens[64] <= dens[0] + 0.05, dens  # not bought with many more blocks
    if kind == "peaked":
        assert dens[64] < 0.5, dens


def test_triton_and_reference_agree_with_a_rank():
    q, k, _, _ = structured_qkv(1, 1024, 2, 1, 128, dtype=torch.float32, seed=3, needle_len=16)
    kw = {"stride": 8, "block_size": 128, "score_rank": 64, "return_mass": True}
    a, mass_a = xattn_select(q, k, impl="triton", **kw)
    b, mass_b = xattn_select(q, k, impl="reference", **kw)
    torch.testing.assert_close(mass_a, mass_b, atol=2e-3, rtol=2e-3)
    assert (index_to_mask(a, 8) != index_to_mask(b, 8)).float().mean().item() <= 0.02


def test_bad_ranks_are_refused():
    q, k, _, _ = structured_qkv(1, 256, 2, 1, 64, seed=0, needle_len=16)
    for rank in (64, 100, -1):
        with pytest.raises(ValueError, match="score_rank must be in"):
            xattn_select(q, k, stride=8, block_size=64, impl="reference", score_rank=rank)
    with pytest.raises(ValueError, match="score rank must be in"):
        key_subspace(k, 0)
    with pytest.raises(ValueError, match="score_rank must be >= 0"):
        SparsePrefillConfig(method="xattention", score_rank=-2)

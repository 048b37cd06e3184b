"""XAttention: scoring and selection, Triton (interpreter on CPU) vs reference; selection rule; needles."""

from __future__ import annotations

import pytest
import torch

from kernels.block_sparse_attention import block_sparse_attn_ref, index_to_mask
from kernels.block_sparse_attention.index import mask_to_index, visible_blocks
from kernels.testing import PEAKED, assert_close, needles_kept, structured_qkv
from kernels.xattention import antidiagonal_block_mass_ref, xattention_prefill, xattn_select, xattn_select_ref
from kernels.xattention.reference import forced_blocks, select_blocks_ref
from kernels.xattention.triton_fwd import xattn_score_fwd

CASES = [
    # (B, Tq, Tk, Hq, Hkv, D, block, stride, causal)
    (2, 300, 300, 2, 1, 64, 64, 4, True),
    (1, 256, 256, 2, 2, 64, 64, 8, True),
    (1, 200, 320, 2, 1, 64, 64, 16, True),
    (1, 250, 250, 2, 1, 64, 128, 8, False),
    (1, 256, 256, 1, 1, 128, 128, 16, True),
]


def _case_id(c):
    b, tq, tk, hq, hkv, d, bs, s, causal = c
    return f"B{b}-Tq{tq}-Tk{tk}-H{hq}x{hkv}-D{d}-bs{bs}-S{s}-{'causal' if causal else 'full'}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_triton_scoring_and_selection_match_reference(case, dtype, device):
    b, t_q, t_k, h_q, h_kv, d, bs, stride, causal = case
    torch.manual_seed(0)
    q, k, _, _ = structured_qkv(b, t_k, h_q, h_kv, d, dtype=dtype, device=device, seed=11, needle_len=16)
    q = q[:, t_k - t_q :]
    index, mass = xattn_select(
        q, k, stride=stride, tau=0.9, block_size=bs, causal=causal, impl="triton", return_mass=True
    )
    ref_mask, ref_mass = xattn_select_ref(q, k, stride=stride, tau=0.9, block_size=bs, causal=causal)
    assert_close("block-mass", ref_mass, mass, torch.float32)
    mask = index_to_mask(index, ref_mask.shape[-1])
    assert (mask != ref_mask).float().mean().item() <= 0.02


def test_stride_one_is_exact_attention_mass():
    torch.manual_seed(1)
    q, k = torch.randn(1, 150, 2, 32), torch.randn(1, 150, 2, 32)
    mass = antidiagonal_block_mass_ref(q, k, stride=1, block_size=64, causal=True)
    s = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) * 32**-0.5
    s = s.masked_fill(torch.ones(150, 150, dtype=torch.bool).triu(1), float("-inf"))
    p = torch.nn.functional.pad(torch.softmax(s, -1), (0, 42, 0, 42))
    exact = p.view(1, 2, 3, 64, 3, 64).sum(dim=(3, 5))
    assert_close("stride1-mass", exact, mass.double(), torch.float32)


@pytest.mark.parametrize("tau", [0.5, 0.9, 0.99])
def test_selection_rule(tau):
    torch.manual_seed(2)
    q, k, _, _ = structured_qkv(1, 512, 2, 1, 64, seed=5, needle_len=16)
    mask, mass = xattn_select_ref(q, k, stride=8, tau=tau, block_size=64, causal=True)
    vis = visible_blocks(512, 512, 64, True, "cpu")
    forced = forced_blocks(512, 512, 64, "cpu") & vis
    assert bool((mask >= forced).all()), "first and diagonal blocks must be kept"
    assert not bool((mask & ~vis).any()), "kept a block no query can see"
    total = (mass * vis).sum(-1)
    kept = (mass * mask).sum(-1)
    assert bool((kept >= tau * total - 1e-5).all())
    # minimal: dropping the smallest non-forced kept block falls below tau (unless nothing was added)
    extra = torch.where(mask & ~forced, mass, torch.full_like(mass, float("inf")))
    smallest = extra.min(-1).values
    added = torch.isfinite(smallest)
    assert bool((kept[added] - smallest[added] < tau * total[added] + 1e-5).all())


def test_keeps_planted_needles(device):
    torch.manual_seed(3)
    q, k, _, needles = structured_qkv(
        2, 1024, 4, 2, 64, dtype=torch.float16, device=device, seed=9, needle_len=32, needles_per_head=2
    )
    index, _ = xattn_select(q, k, stride=8, tau=0.9, block_size=64, causal=True, impl="triton")
    mask = index_to_mask(index, 16)
    assert needles_kept(needles, mask.cpu(), 64) == 1.0
    assert mask.float().mean().item() < 0.5 * 136 / 256, "selection should be sparse on structured input"


def test_prefill_matches_reference_with_same_mask(device):
    torch.manual_seed(4)
    q, k, v, _ = structured_qkv(1, 300, 4, 2, 64, dtype=torch.float16, device=device, seed=13, needle_len=16)
    head_type = torch.tensor([0, 1, 0, 0], dtype=torch.int32, device=device)
    out = xattention_prefill(
        q, k, v, stride=8, tau=0.9, block_size=64, head_type=head_type, sink=16, local=64, impl="triton"
    )
    mask, _ = xattn_select_ref(q, k, stride=8, tau=0.9, block_size=64)
    ref = block_sparse_attn_ref(
        q, k, v, mask, block_size=64, causal=True, head_type=head_type, sink=16, local=64
    )
    assert_close("prefill", ref.float(), out.float(), torch.float16)


TMA_CASES = [
    # (B, Tq, Tk, Hq, Hkv, D, block, stride, causal, block_n)
    (2, 512, 512, 2, 1, 64, 64, 8, True, 64),
    (1, 256, 384, 2, 2, 64, 128, 16, True, 128),
    (1, 256, 256, 1, 1, 128, 128, 16, False, 64),
    (1, 320, 320, 4, 2, 64, 64, 4, True, 64),
]


@pytest.mark.parametrize("case", TMA_CASES, ids=[_case_id(c[:9]) for c in TMA_CASES])
def test_tma_scoring_equals_pointer_scoring(case, device):
    """The TMA kernel (reshape as tiles of a [B, T/S, S·H·D] view) gives the pointer kernel's output."""
    b, t_q, t_k, h_q, h_kv, d, bs, stride, causal, bn = case
    q, k, _, _ = structured_qkv(
        b, t_k, h_q, h_kv, d, dtype=torch.float16, device=device, seed=7, needle_len=16
    )
    q = q[:, t_k - t_q :].contiguous()
    cfg = {"block_m": 64, "block_n": bn, "num_warps": 4, "num_stages": 2}
    kw = dict(stride=stride, block_size=bs, scale=d**-0.5, causal=causal)
    rb_ptr, r_ptr = xattn_score_fwd(q, k, **kw, config={**cfg, "tma": 0})
    rb_tma, r_tma = xattn_score_fwd(q, k, **kw, config={**cfg, "tma": 1})
    assert torch.equal(r_ptr, r_tma)
    written = ~rb_ptr.isnan()  # torch.empty is NaN-filled here: compare what the kernels wrote
    assert torch.equal(written, ~rb_tma.isnan())
    assert written.any()
    assert torch.allclose(rb_ptr[written], rb_tma[written], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", TMA_CASES[:2], ids=[_case_id(c[:9]) for c in TMA_CASES[:2]])
def test_q_cast_inside_the_kernel_equals_casting_ahead(case, device):
    """``q_to_fp8``: each 16-bit q tile cast to e4m3 in the kernel gives the pre-cast fp8 scores exactly."""
    b, t_q, t_k, h_q, h_kv, d, bs, stride, causal, bn = case
    q, k, _, _ = structured_qkv(
        b, t_k, h_q, h_kv, d, dtype=torch.float16, device=device, seed=3, needle_len=16
    )
    q = (q[:, t_k - t_q :] * 100).contiguous()  # some entries past e4m3's 448: the cast must saturate
    assert q.abs().max() > 448
    cfg = {"block_m": 64, "block_n": bn, "num_warps": 4, "num_stages": 2, "tma": 1, "fp8": 1}
    kw = dict(stride=stride, block_size=bs, scale=d**-0.5 / 100, causal=causal)
    rb_ahead, r_ahead = xattn_score_fwd(q, k, **kw, config=cfg)
    rb_in, r_in = xattn_score_fwd(q, k, **kw, config={**cfg, "q_to_fp8": 1})
    assert torch.equal(r_ahead, r_in)
    written = ~rb_ahead.isnan()
    assert torch.equal(rb_ahead[written], rb_in[written])
    _, r_16 = xattn_score_fwd(q, k, **kw, config={**cfg, "fp8": 0})
    assert not torch.equal(r_16, r_in)  # the cast happened: 16-bit scores differ


def test_q_cast_inside_the_kernel_needs_tma():
    q = torch.randn(1, 128, 2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="q_to_fp8 needs the TMA"):
        xattn_score_fwd(
            q,
            q,
            stride=8,
            block_size=64,
            scale=0.125,
            causal=True,
            config={"fp8": 1, "q_to_fp8": 1, "tma": 0},
        )


def test_tma_scoring_refuses_ragged_length():
    q = torch.randn(1, 100, 2, 64, dtype=torch.float16)
    with pytest.raises(ValueError, match="multiple of the stride"):
        xattn_score_fwd(q, q, stride=8, block_size=64, scale=0.125, causal=True, config={"tma": 1})


@pytest.mark.parametrize("tau", [0.5, 0.9, 0.97, 1.0])
def test_threshold_search_equals_sorted_rule(tau, device):
    """The kernel's binary search for the cutoff keeps exactly the reference's sorted-cumsum blocks."""
    for seed in range(3):
        q, k, _, _ = structured_qkv(1, 1024, 2, 1, 64, device=device, seed=seed, needle_len=16)
        index, mass = xattn_select(
            q, k, stride=8, tau=tau, block_size=64, causal=True, impl="triton", return_mass=True
        )
        got = index_to_mask(index, 16).cpu()
        # the search against the sorted rule on the kernel's own mass: exact on any device
        own = select_blocks_ref(mass.cpu(), tau, t_q=1024, t_k=1024, block_size=64, causal=True)
        assert torch.equal(got, own)
        if q.device.type == "cpu":  # and end to end against the reference scoring (on CUDA fp32 runs as TF32)
            ref_mask, _ = xattn_select_ref(q, k, stride=8, tau=tau, block_size=64, causal=True)
            assert torch.equal(got, ref_mask.cpu())


def test_row_share_keeps_a_block_one_row_needs():
    """Row 7's block mass is 0.90 on one far block, so the τ rule stops there; key block 2 holds
    only 5 % of the block's mass but 40 % of one reshaped row's: row_share=0.3 keeps it, and only it."""
    t, bs = 8 * 64, 64  # 8 query blocks, 8 key blocks
    mass = torch.zeros(1, 1, 8, 8)
    mass[0, 0, 7] = torch.tensor([0.01, 0.90, 0.05, 0.015, 0.005, 0.0, 0.01, 0.01])
    row_max = torch.zeros(1, 1, 8, 8)
    row_max[0, 0, 7] = torch.tensor([0.02, 0.95, 0.40, 0.05, 0.29, 0.0, 0.02, 0.02])
    row_max[0, 0, 3, 5] = 0.9  # above the diagonal: never visible to query block 3
    kw = dict(t_q=t, t_k=t, block_size=bs, causal=True)
    plain = select_blocks_ref(mass, 0.9, **kw)
    assert plain[0, 0, 7].tolist() == [True, True, False, False, False, False, False, True]
    rows = select_blocks_ref(mass, 0.9, row_max=row_max, row_share=0.3, **kw)
    assert rows[0, 0, 7].tolist() == [True, True, True, False, False, False, False, True]
    assert not rows[0, 0, 3, 5].item()
    assert torch.equal(rows[0, 0, :7], plain[0, 0, :7])
    with pytest.raises(ValueError, match="needs row_max"):
        select_blocks_ref(mass, 0.9, row_share=0.3, **kw)


def test_row_share_keeps_needles_the_tau_rule_dilutes(device):
    """Peaked input (strong sinks and local windows): 64-query needles inside 128-query blocks lose
    a passage block under the τ rule alone; the row rule keeps every needle at little extra density."""
    q, k, _, needles = structured_qkv(
        1,
        2048,
        4,
        4,
        64,
        device=device,
        seed=6,
        needle_len=64,
        needles_per_head=2,
        **PEAKED,
    )
    kw = dict(stride=8, tau=0.9, block_size=128, causal=True, impl="triton")
    plain = index_to_mask(xattn_select(q, k, **kw)[0], 16).cpu()
    rows = index_to_mask(xattn_select(q, k, row_share=0.1, **kw)[0], 16).cpu()
    assert needles_kept(needles, plain, 128) < 1.0
    assert needles_kept(needles, rows, 128) == 1.0
    assert bool((rows >= plain).all())
    vis = visible_blocks(2048, 2048, 128, True, "cpu")
    density = rows.sum().item() / (4 * vis.sum().item())
    assert rows.sum().item() <= 1.5 * plain.sum().item(), "the row rule should add few blocks"
    assert density < 0.5, f"selection should stay sparse, density {density:.3f}"


@pytest.mark.parametrize("row_share", [0.05, 0.2])
def test_row_share_triton_equals_reference(row_share, device):
    """The kernel's row rule keeps exactly the reference's blocks (ragged lengths, Tq < Tk too)."""
    for seed, t_q, t_k in ((0, 1024, 1024), (1, 1000, 1000), (2, 600, 1000)):
        q, k, _, _ = structured_qkv(1, t_k, 2, 1, 64, device=device, seed=seed, needle_len=16)
        q = q[:, t_k - t_q :]
        kw = dict(stride=8, tau=0.9, block_size=64, causal=True)
        index, _ = xattn_select(q, k, **kw, impl="triton", row_share=row_share)
        ref_mask, _ = xattn_select_ref(q, k, **kw, row_share=row_share)
        plain, _ = xattn_select_ref(q, k, **kw)
        assert torch.equal(index_to_mask(index, ref_mask.shape[-1]).cpu(), ref_mask.cpu())
        assert bool((ref_mask >= plain).all())


def test_bad_arguments():
    q = torch.randn(1, 64, 2, 64)
    with pytest.raises(ValueError, match="row_share"):
        xattn_select(q, q, block_size=64, row_share=1.5)
    with pytest.raises(ValueError, match="multiple of stride"):
        xattn_select(q, q, stride=3, block_size=64)
    with pytest.raises(ValueError, match="tau"):
        xattn_select(q, q, tau=0.0, block_size=64)


def _mixed_heads_qkv(t_k: int, h_q: int, h_kv: int, *, dtype=torch.float32, device="cpu", seed: int = 3):
    """Structured heads (sink column, local band, a needle far back) and a diffuse last query head
    (random queries: near-uniform attention, so the τ rule keeps most of its visible blocks)."""
    q, k, _, needles = structured_qkv(1, t_k, h_q, h_kv, 64, device=device, seed=seed, needle_len=32)
    g = torch.Generator(device=device).manual_seed(seed)
    q[:, :, -1] = torch.randn(1, t_k, 64, generator=g, device=device) / 8**0.5
    return q.to(dtype), k.to(dtype), [n for n in needles if n.head != h_q - 1]


def _apply_dense_above(
    mask: torch.Tensor, vis: torch.Tensor, share: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fallback spelled out: rows keeping more than ``share`` of their visible blocks keep them all."""
    dense = mask.sum(-1, keepdim=True) > share * vis.sum(-1, keepdim=True)
    return torch.where(dense, vis.expand_as(mask), mask), dense.squeeze(-1)


def test_dense_above_keeps_every_visible_block_of_busy_rows():
    """Rows above the share become exactly their visible set; rows at or below it are unchanged."""
    t, bs = 1000, 64  # ragged: the last query block holds 40 queries
    q, k, needles = _mixed_heads_qkv(t, 4, 2)
    kw = dict(stride=8, tau=0.9, block_size=bs, causal=True)
    plain, _ = xattn_select_ref(q, k, **kw)
    off, _ = xattn_select_ref(q, k, **kw, dense_above=1.0)
    assert torch.equal(off, plain), "dense_above=1.0 must change nothing"
    vis = visible_blocks(t, t, bs, True, "cpu")
    fb, _ = xattn_select_ref(q, k, **kw, dense_above=0.5)
    expected, dense = _apply_dense_above(plain, vis, 0.5)
    assert torch.equal(fb, expected)
    assert bool(dense[0, -1].all()), "the diffuse head should go dense in every row"
    assert bool((~dense[0, :-1]).any()), "structured heads should keep sparse rows"
    assert torch.equal(fb[~dense], plain[~dense])
    assert bool((fb[dense] == vis.expand_as(fb)[dense]).all())
    assert needles_kept(needles, fb, bs) == 1.0
    structured = fb[0, :-1].sum().item() / (3 * vis.sum().item())
    assert structured < 0.6, f"structured heads should stay sparse, density {structured:.3f}"


def test_dense_above_boundary_and_bad_values():
    """A row keeping exactly the share stays sparse; just above it, it goes dense."""
    t, bs = 8 * 64, 64
    mass = torch.zeros(1, 1, 8, 8)
    mass[0, 0, 7] = torch.tensor([0.40, 0.30, 0.20, 0.03, 0.02, 0.02, 0.01, 0.02])  # τ 0.9 keeps 0, 1, 2, 7
    kw = dict(t_q=t, t_k=t, block_size=bs, causal=True)
    plain = select_blocks_ref(mass, 0.9, **kw)
    assert plain[0, 0, 7].sum().item() == 4
    assert torch.equal(select_blocks_ref(mass, 0.9, dense_above=0.5, **kw)[0, 0, 7], plain[0, 0, 7])
    assert bool(select_blocks_ref(mass, 0.9, dense_above=0.49, **kw)[0, 0, 7].all())
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"dense_above must be in \(0, 1\]"):
            select_blocks_ref(mass, 0.9, dense_above=bad, **kw)
    q = torch.randn(1, 64, 2, 64)
    with pytest.raises(ValueError, match="dense_above"):
        xattn_select(q, q, block_size=64, dense_above=0.0)
    with pytest.raises(ValueError, match="dense_above"):
        xattention_prefill(q, q, q, block_size=64, dense_above=2.0)


DENSE_ABOVE_CASES = [
    # (Tq, Tk, Hq, Hkv, block, stride)
    (1000, 1000, 4, 2, 64, 8),  # ragged, GQA
    (600, 1000, 2, 1, 64, 16),  # Tq < Tk, ragged
    (512, 512, 2, 2, 128, 4),
]


@pytest.mark.parametrize("dense_above", [1.0, 0.5])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
@pytest.mark.parametrize("case", DENSE_ABOVE_CASES, ids=lambda c: "Tq{}-Tk{}-H{}x{}-bs{}-S{}".format(*c))
def test_dense_above_triton_equals_reference(case, dtype, dense_above, device):
    """The kernel's fallback keeps exactly the reference's blocks (ragged lengths, Tq < Tk, GQA)."""
    t_q, t_k, h_q, h_kv, bs, stride = case
    q, k, _ = _mixed_heads_qkv(t_k, h_q, h_kv, dtype=dtype, device=device)
    q = q[:, t_k - t_q :]
    kw = dict(stride=stride, tau=0.9, block_size=bs, causal=True)
    n_kb = -(-t_k // bs)
    index, _ = xattn_select(q, k, **kw, impl="triton", dense_above=dense_above)
    mask = index_to_mask(index, n_kb).cpu()
    ref_mask = xattn_select_ref(q, k, **kw, dense_above=dense_above)[0].cpu()
    vis = visible_blocks(t_q, t_k, bs, True, "cpu")
    if dense_above < 1.0:  # the rule on the kernel's own τ selection: exact on any device
        plain = index_to_mask(xattn_select(q, k, **kw, impl="triton")[0], n_kb).cpu()
        assert torch.equal(mask, _apply_dense_above(plain, vis, dense_above)[0])
        assert bool((mask[0, -1] == vis).all()), "the diffuse head should go dense"
    if device.type == "cuda" and dtype == torch.float32:  # tf32 scores: near-tied blocks may flip
        assert (mask != ref_mask).float().mean().item() <= 0.02
        return
    assert torch.equal(mask, ref_mask)
    ref_index = mask_to_index(ref_mask, t_q, t_k, bs, causal=True)
    assert torch.equal(index.cnt.cpu(), ref_index.cnt)
    assert torch.equal(index.n_full.cpu(), ref_index.n_full)


@pytest.mark.parametrize(
    ("impl", "tma"), [("triton", 0), ("triton", 1), ("reference", 0)], ids=["pointer", "tma", "reference"]
)
def test_scoring_a_subset_of_heads_gives_those_heads_rows(impl, tma, device):
    """``heads``: the scored heads' lists equal a full run's (GQA, batch 2); the rest keep nothing."""
    q, k, _, _ = structured_qkv(2, 256, 4, 2, 64, dtype=torch.float16, device=device, seed=11, needle_len=16)
    kw = dict(stride=8, tau=0.9, block_size=64, impl=impl, return_mass=True)
    if impl == "triton":
        kw["config"] = {"block_m": 32, "block_n": 64, "num_warps": 4, "num_stages": 2, "tma": tma}
    full, full_mass = xattn_select(q, k, **kw)
    heads = torch.tensor([3, 0])  # two groups, out of order
    sub, sub_mass = xattn_select(q, k, **kw, heads=heads)
    n = 4
    want, got = index_to_mask(full, n), index_to_mask(sub, n)
    assert torch.equal(got[:, [0, 3]], want[:, [0, 3]])
    assert not got[:, [1, 2]].any()
    assert not sub.cnt[:, [1, 2]].any()
    torch.testing.assert_close(sub_mass[:, [0, 3]], full_mass[:, [0, 3]], rtol=0, atol=1e-6)
    assert not sub_mass[:, [1, 2]].any()
    none, _ = xattn_select(q, k, **kw, heads=torch.tensor([], dtype=torch.int64))
    assert not none.cnt.any()


@pytest.mark.parametrize(
    ("heads", "match"),
    [
        (torch.tensor([0, 4]), "out of range"),
        (torch.tensor([1, 1]), "distinct"),
        (torch.tensor([[0]]), "1-D integer"),
        (torch.tensor([0.0]), "1-D integer"),
    ],
)
def test_heads_are_checked(heads, match):
    q = torch.randn(1, 128, 4, 64)
    with pytest.raises(ValueError, match=match):
        xattn_select(q, q[:, :, :2], stride=8, block_size=64, heads=heads)


def test_prefill_scores_only_the_non_streaming_heads(device, monkeypatch):
    """With streaming heads, the scoring kernel runs on the other heads alone; outputs match the reference."""
    import kernels.xattention.op as xop

    q, k, v, _ = structured_qkv(1, 256, 4, 2, 64, dtype=torch.float16, device=device, seed=13, needle_len=16)
    seen = []
    real = xop.xattn_score_fwd

    def spy(*args, **kwargs):
        seen.append(None if kwargs.get("heads") is None else kwargs["heads"].tolist())
        return real(*args, **kwargs)

    monkeypatch.setattr(xop, "xattn_score_fwd", spy)
    for head_type, scored in (([0, 1, 0, 1], [0, 2]), ([1, 1, 1, 1], None)):
        ht = torch.tensor(head_type, dtype=torch.int32, device=device)
        out = xattention_prefill(
            q, k, v, stride=8, tau=0.9, block_size=64, head_type=ht, sink=16, local=64, impl="triton"
        )
        mask, _ = xattn_select_ref(q, k, stride=8, tau=0.9, block_size=64)
        ref = block_sparse_attn_ref(
            q, k, v, mask, block_size=64, causal=True, head_type=ht, sink=16, local=64
        )
        assert_close("prefill", ref.float(), out.float(), torch.float16)
        if scored is None:  # every head streams: no scoring launch at all
            assert seen == [[0, 2]]
        else:
            assert seen == [scored]

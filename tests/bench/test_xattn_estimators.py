"""bench.xattn_estimators: the sampled-pair estimator and the equal-budget comparison."""

from __future__ import annotations

import pytest
import torch

from bench import xattn_estimators as xe
from kernels.xattention.reference import antidiagonal_block_mass_ref


def test_sampled_at_stride_one_is_the_exact_mass():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 256, 4, 16, generator=g)
    k = torch.randn(1, 256, 2, 16, generator=g)  # GQA: two query heads a key head
    exact = antidiagonal_block_mass_ref(q, k, stride=1, block_size=64)
    torch.testing.assert_close(xe.sampled_pair_block_mass(q, k, stride=1, block_size=64), exact)
    est = xe.sampled_pair_block_mass(q, k, stride=4, block_size=64)
    torch.testing.assert_close(est.sum(-1)[..., -1], torch.full((1, 4), 16.0))  # 16 reshaped rows, 1 each
    with pytest.raises(ValueError, match="multiple of block_size"):
        xe.sampled_pair_block_mass(q[:, :200], k[:, :200], stride=4, block_size=64)


def test_query_rows_at_stride_one_is_the_exact_mass_and_rows_sum_to_one():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 256, 4, 16, generator=g) * 2
    k = torch.randn(1, 256, 2, 16, generator=g) * 2
    exact = antidiagonal_block_mass_ref(q, k, stride=1, block_size=64)
    torch.testing.assert_close(xe.query_rows_block_mass(q, k, stride=1, block_size=64), exact / 64)
    est = xe.query_rows_block_mass(q, k, stride=8, block_size=64)
    torch.testing.assert_close(est.sum(-1), torch.ones(1, 4, 4))
    assert est.triu(1).abs().max() == 0  # causal: no mass on a later key block
    with pytest.raises(ValueError, match="multiple of block_size"):
        xe.query_rows_block_mass(q[:, :200], k[:, :200], stride=4, block_size=64)


def test_query_rows_find_a_needle_that_one_query_in_eight_attends_to():
    """A far key block that a whole block of queries reads, planted in noise: sampled rows see it."""
    g = torch.Generator().manual_seed(2)
    t, d = 512, 32
    q = torch.randn(1, t, 1, d, generator=g) * 0.1
    k = torch.randn(1, t, 1, d, generator=g) * 0.1
    needle = torch.randn(d, generator=g)
    k[0, 64:128, 0] += needle * 1.5  # key block 1
    q[0, 448:512, 0] += needle * 1.5  # query block 7 reads it
    est = xe.query_rows_block_mass(q, k, stride=8, block_size=64)[0, 0, 7]
    true = antidiagonal_block_mass_ref(q, k, stride=1, block_size=64)[0, 0, 7] / 64
    assert int(est.argmax()) == int(true.argmax()) == 1
    assert abs(float(est[1] - true[1])) < 0.05


def _content_match(stride: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Query block 3 against two key blocks of similar true mass, built so the two estimates disagree.

    Key block 1: every query matches one key (logit 6) at a sampled offset, the rest ~0 (a
    content-matched head). Key block 2: a uniform logit of 1.7 for every key. True mass: block 1
    ahead (64 x e^1.7 = 350 against e^6 + 63 = 466 a query).
    """
    g = torch.Generator().manual_seed(0)
    t, d = 256, 64
    q, k = torch.zeros(1, t, 1, d), torch.zeros(1, t, 1, d)
    sc = d**0.5
    q[0, 192:, 0, 0] = 1.0
    k[0, 128:192, 0, 0] = 1.7 * sc
    kv = torch.randn(64, d - 1, generator=g)
    kv = kv / kv.norm(dim=1, keepdim=True)
    k[0, 64:128, 0, 1:] = kv
    for qi in range(192, 256):
        s = stride - 1 - qi % stride  # query iS + S-1-s meets keys jS + s
        j = 16 + int(torch.randint(0, 64 // stride, (1,), generator=g))  # a key group in block 1
        q[0, qi, 0, 1:] = kv[j * stride + s - 64] * 6.0 * sc
    return q, k


def test_sampled_pairs_rank_a_content_match_that_the_antidiagonal_mean_hides():
    q, k = _content_match()
    true = antidiagonal_block_mass_ref(q, k, stride=1, block_size=64)[0, 0, 3]
    anti = antidiagonal_block_mass_ref(q, k, stride=4, block_size=64)[0, 0, 3]
    samp = xe.sampled_pair_block_mass(q, k, stride=4, block_size=64)[0, 0, 3]
    assert true[1] > 1.2 * true[2]  # the matched block holds more true mass
    assert anti[1] < 0.5 * anti[2]  # exp(mean logit) puts it well below the uniform block
    assert samp[1] > 2.0 * samp[2]  # each pair's own exp ranks it first


def test_study_rows_and_equal_budget():
    q, k = _content_match()
    rows = xe.study(q, k, strides=[8, 4], tau=0.9, block_size=64)
    est_rows = [r for r in rows if r["estimator"] != "true mass"]
    assert {(r["estimator"], r["stride"]) for r in est_rows} == {
        (e, s) for e in ("antidiagonal", "sampled", "query_rows", "cell_exact") for s in (8, 4)
    }
    for r in est_rows:
        assert 0.0 < r["tau_recall_vs_oracle"] <= 1.0 + 1e-6
        assert 0.0 < r["equal_budget_recall"] <= 1.0 + 1e-6
        assert 0.0 < r["tau_density"] <= 1.0


def test_missing_dumps_say_how_to_make_them(tmp_path):
    with pytest.raises(SystemExit, match="lm_dump_layers=0"):
        xe.load_layer(tmp_path, 0, 128)


def test_cell_exact_at_stride_one_is_the_exact_mass():
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 256, 4, 16, generator=g) * 2
    k = torch.randn(1, 256, 2, 16, generator=g) * 2
    exact = antidiagonal_block_mass_ref(q, k, stride=1, block_size=64)
    torch.testing.assert_close(xe.cell_exact_block_mass(q, k, stride=1, block_size=64), exact)
    with pytest.raises(ValueError, match="multiple of block_size"):
        xe.cell_exact_block_mass(q[:, :200], k[:, :200], stride=4, block_size=64)


def test_cell_exact_pools_the_queries_of_a_row_before_normalising():
    """Reshaped rows of S=2 queries: a loud one (logit 12 on key block 0), a quiet one (3 on block 1).

    The true mass gives each query a share of 1, so the two blocks hold similar mass; the pooled
    cell softmax lets the loud query decide and block 1 all but vanishes. At S=1 it is exact.
    """
    t, d = 128, 8
    q, k = torch.zeros(1, t, 1, d), torch.zeros(1, t, 1, d)
    sc = d**0.5
    k[0, 0:32, 0, 0] = sc  # key block 0 (of 4, block 32): direction 0
    k[0, 32:64, 0, 1] = sc  # key block 1: direction 1
    q[0, 96:128:2, 0, 0] = 12.0  # loud queries (even positions of query block 3)
    q[0, 97:128:2, 0, 1] = 3.0  # quiet queries (odd positions)
    true = antidiagonal_block_mass_ref(q, k, stride=1, block_size=32)[0, 0, 3]
    pooled = xe.cell_exact_block_mass(q, k, stride=2, block_size=32)[0, 0, 3]
    assert true[1] > 0.7 * true[0]
    assert pooled[1] < 0.01 * pooled[0]
    torch.testing.assert_close(xe.cell_exact_block_mass(q, k, stride=1, block_size=32)[0, 0, 3], true)

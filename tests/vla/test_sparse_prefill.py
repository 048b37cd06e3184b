"""The backbone's prefill goes through the sparse kernels above the configured length."""

import pytest
import torch

from kernels.attention import SparsePrefillConfig
from vla.backbones.decoder import Decoder, DecoderConfig


def _decoder(sparse: SparsePrefillConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    cfg = DecoderConfig(
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        vocab_size=50,
        sparse_prefill=sparse,
    )
    return Decoder(cfg).eval()


def _ids(t: int) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randint(0, 50, (1, t))


@torch.no_grad()
def test_tau_one_equals_dense_and_low_tau_differs():
    dense = _decoder(SparsePrefillConfig())
    full = _decoder(
        SparsePrefillConfig(
            method="xattention", min_len=128, tau=1.0, stride=8, block_size=64, impl="reference"
        )
    )
    # row_share=0: on 4 key blocks of a random model the row rule (default 0.1) keeps them all
    sparse = _decoder(
        SparsePrefillConfig(
            method="xattention",
            min_len=128,
            tau=0.3,
            stride=8,
            block_size=64,
            impl="reference",
            row_share=0.0,
        )
    )
    x = _ids(256)
    ref = dense.logits(x)
    torch.testing.assert_close(full.logits(x), ref, rtol=1e-4, atol=1e-4)
    # A low threshold drops blocks: the sparse path really ran (it would equal dense otherwise).
    assert (sparse.logits(x) - ref).abs().max() > 1e-3


@torch.no_grad()
def test_short_prefill_stays_dense():
    dense = _decoder(SparsePrefillConfig())
    sparse = _decoder(
        SparsePrefillConfig(
            method="xattention", min_len=512, tau=0.3, stride=8, block_size=64, impl="reference"
        )
    )
    x = _ids(256)  # below min_len
    torch.testing.assert_close(sparse.logits(x), dense.logits(x))


def test_bad_sparse_config_is_refused():
    with pytest.raises(ValueError, match="method"):
        SparsePrefillConfig(method="magic")


@torch.no_grad()
def test_capture_qk_and_a_calibrated_plan():
    """``capture_qk`` returns each layer's post-RoPE q and k; a plan set with ``set_sparse_prefill``
    reaches every layer: all layers dense equals the dense model, layer 1 streaming does not."""
    from kernels.streaming_heads import calibrate_sparse_prefill

    model = _decoder(SparsePrefillConfig())
    x = _ids(256)
    emb = model.embed_tokens(x)
    qk = model.capture_qk(emb)
    assert len(qk) == 2
    assert qk[0][0].shape == (1, 256, 4, 16)
    assert qk[0][1].shape == (1, 256, 2, 16)
    assert all(layer.self_attn.capture is None for layer in model.layers)
    # layer 0's queries are the RoPE'd projection of the normed embeddings
    from vla.backbones.decoder import apply_rope, rope_cos_sin

    attn = model.layers[0].self_attn
    h = model.layers[0].input_layernorm(emb)
    cos, sin = rope_cos_sin(torch.arange(256), 16, model.cfg.rope_theta, emb.dtype)
    torch.testing.assert_close(qk[0][0], apply_rope(attn.q_proj(h).view(1, 256, 4, 16), cos, sin))
    ref = model.logits(x)
    base = SparsePrefillConfig(  # its streaming heads are replaced by the calibration's
        method="streaming",
        streaming_heads=[0],
        min_len=128,
        block_size=64,
        sink=4,
        local=16,
        impl="reference",
    )
    plan, _ = calibrate_sparse_prefill([[p] for p in qk], base, ratio=0.5, max_outside=1.0)
    assert [len(h) for h in plan.streaming_heads_per_layer] == [2, 2]
    model.set_sparse_prefill(plan)
    assert all(layer.self_attn.sparse is plan for layer in model.layers)
    assert (model.logits(x) - ref).abs().max() > 1e-3  # streaming heads ran
    model.set_sparse_prefill(
        SparsePrefillConfig(method="streaming", min_len=128, streaming_heads=[0], dense_layers=[0, 1])
    )
    torch.testing.assert_close(model.logits(x), ref)


@torch.no_grad()
def test_sparse_prefill_under_autocast_matches_dense_at_tau_one():
    """Under autocast RoPE leaves q, k in fp32 and v in bf16; the sparse path runs them as SDPA does."""
    cfg = SparsePrefillConfig(
        method="xattention", min_len=128, tau=1.0, stride=8, block_size=64, impl="reference"
    )
    dense, sparse = _decoder(SparsePrefillConfig()), _decoder(cfg)
    x = _ids(256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = dense.logits(x), sparse.logits(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=0.05, atol=0.05)

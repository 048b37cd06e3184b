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

"""bench.prefill_attention.lm_plan_row on a tiny decoder (CPU): calibrate, judge, restore."""

import math

import torch
import torch.nn.functional as F

from bench.prefill_attention import lm_headline, lm_plan_row
from vla.backbones.decoder import Decoder, DecoderConfig


def test_lm_plan_row_calibrates_judges_and_restores_dense():
    torch.manual_seed(0)
    model = Decoder(
        DecoderConfig(
            hidden_size=128,
            num_layers=2,
            num_heads=2,
            num_kv_heads=1,
            head_dim=64,  # the Triton kernels' head dims are 64 and 128
            intermediate_size=128,
            vocab_size=50,
        )
    ).eval()
    g = torch.Generator().manual_seed(1)
    cal = torch.randint(0, 50, (1, 256), generator=g)
    x_eval = torch.randint(0, 50, (1, 257), generator=g)
    qk = model.capture_qk(model.embed_tokens(cal))
    row = lm_plan_row(model, qk, x_eval, 64, torch.float32)
    with torch.no_grad():
        logits = model.logits(x_eval[:, :-1])
    want = F.cross_entropy(logits.reshape(-1, 50), x_eval[:, 1:].reshape(-1)).item() / math.log(2)
    assert abs(row["bits_per_byte_dense"] - want) < 1e-4
    assert len(row["streaming_heads_per_layer"]) == 2
    assert len(row["xattn_density_per_layer"]) == 2
    assert all(
        math.isfinite(row[k]) and row[k] > 0 for k in ("bits_per_byte_plan", "bits_per_byte_all_xattn")
    )
    assert all(layer.self_attn.sparse.method == "dense" for layer in model.layers)  # restored
    head = lm_headline(
        [
            {
                "kind": "lm_xattn",
                "stride": 8,
                "layer": 0,
                "mass_recall_vs_oracle": 0.9,
                "density": 0.5,
                "rel_err_vs_dense": 0.1,
                "e2e_ms": 1.0,
                "sdpa_ms": 1.0,
            },
            row,
        ]
    )
    assert head["lm_plan_bits_per_byte_vs_dense"] == row["bits_per_byte_plan"] - row["bits_per_byte_dense"]
    assert head["lm_plan_prefill_speedup_vs_dense"] > 0

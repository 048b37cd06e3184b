"""The learned-attention headline: the dense fallback's rows never enter XAttention's own keys."""

import json
from pathlib import Path

import pytest

from bench.prefill_attention import lm_headline

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "prefill_attention_lm.json"


def _row(layer, stride, recall, density, row_share=0.0, dense_above=1.0):
    return {
        "kind": "lm_xattn",
        "layer": layer,
        "stride": stride,
        "row_share": row_share,
        "dense_above": dense_above,
        "mass_recall_vs_oracle": recall,
        "density": density,
        "rel_err_vs_dense": 0.1,
        "e2e_ms": 2.0 * density,
        "sdpa_ms": 1.0,
    }


def test_fallback_rows_stay_beside_the_headline():
    rows = [
        {"kind": "lm_train", "steps": 3},
        _row(0, 16, 0.90, 0.66),
        _row(1, 16, 0.99, 0.08),
        _row(0, 16, 0.91, 0.66, row_share=0.1),
        _row(1, 16, 0.97, 0.09, row_share=0.1),
        # the fallback lifts layer 0 by going near-dense; it must not lift the headline
        _row(0, 16, 0.995, 0.96, row_share=0.1, dense_above=0.5),
        _row(1, 16, 0.975, 0.09, row_share=0.1, dense_above=0.5),
    ]
    head = lm_headline(rows)
    assert head["lm_xattn_mass_recall_vs_oracle"] == pytest.approx(0.90)
    assert head["lm_xattn_mass_recall_vs_oracle_s16_worst_layer"] == 0
    assert head["lm_xattn_mass_recall_vs_oracle_row_share"] == pytest.approx(0.91)
    assert head["lm_xattn_density_mean_row_share"] == pytest.approx((0.66 + 0.09) / 2)
    # the fallback's own keys: its worst layer (1 here, not the diffuse 0) and per-layer densities
    assert head["lm_xattn_mass_recall_vs_oracle_dense_above_s16"] == pytest.approx(0.975)
    assert head["lm_xattn_density_per_layer_dense_above_s16"] == [0.96, 0.09]
    assert head["lm_xattn_e2e_vs_sdpa_per_layer_dense_above_s16"] == [1.92, 0.18]
    assert head["lm_xattn_density_mean"] == pytest.approx((0.66 + 0.08) / 2)


def test_rows_without_the_field_count_as_no_fallback():
    rows = [_row(0, 8, 0.93, 0.6), _row(1, 8, 0.98, 0.1)]
    for r in rows:
        del r["dense_above"]  # files written before the option existed
    head = lm_headline(rows)
    assert head["lm_xattn_mass_recall_vs_oracle_s8"] == pytest.approx(0.93)
    assert not any("dense_above" in k for k in head)


def test_committed_results_match_their_rows():
    data = json.loads(RESULTS.read_text())
    head = lm_headline(data["rows"])
    for key, value in head.items():
        if isinstance(value, list) and any(isinstance(x, list) for x in value):  # per-layer head lists
            assert data["headline"][key] == value, key
        else:
            assert data["headline"][key] == pytest.approx(value), key

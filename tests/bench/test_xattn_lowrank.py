"""bench.xattn_lowrank: one row per input and rank, headline minima, on a short synthetic run."""

from __future__ import annotations

import json

from bench import xattn_lowrank


def test_rows_and_headline(tmp_path):
    xattn_lowrank.main(["--seq_lens=2048", "--heads=2", "--stride=16", f"--out_dir={tmp_path}"])
    doc = json.loads((tmp_path / "xattn_lowrank.json").read_text())
    rows = doc["rows"]
    assert {(r["input"], r["score_rank"]) for r in rows} == {
        (i, r) for i in ("diffuse", "peaked") for r in (128, 64)
    }
    for r in rows:
        assert 0.9 < r["mass_recall_vs_oracle"] <= 1.0 + 1e-6
        assert 0.0 < r["density"] <= 1.0
        assert r["scoring_gemm_share"] == r["score_rank"] / 128
    h = doc["headline"]
    assert h["min_recall_half_rank"] == min(
        round(r["mass_recall_vs_oracle"], 4) for r in rows if r["score_rank"] == 64
    )
    assert h["min_needles_kept_half_rank"] == min(r["needles_kept"] for r in rows if r["score_rank"] == 64)

"""bench.xattn_selection: the selection-quality report with and without the row rule."""

from __future__ import annotations

import json

import pytest

from bench import xattn_selection


def test_report_rows_and_headline(tmp_path):
    xattn_selection.main(
        [
            "--lengths=2048",
            "--heads=4",
            "--head_dim=64",
            "--strides=8",
            "--row_shares=0,0.1",
            "--err_heads=2",
            f"--out_dir={tmp_path}",
        ]
    )
    doc = json.loads((tmp_path / "xattn_selection.json").read_text())
    rows = doc["rows"]
    assert len(rows) == 4  # 2 inputs x 1 stride x 2 rules
    for name in ("diffuse", "peaked"):
        plain = next(r for r in rows if r["input"] == name and r["row_share"] == 0)
        rule = next(r for r in rows if r["input"] == name and r["row_share"] == 0.1)
        assert rule["density"] >= plain["density"]
        assert rule["kept_true_mass_share"] >= plain["kept_true_mass_share"] - 1e-6
        assert rule["needles_kept"] >= plain["needles_kept"]
        for r in (plain, rule):
            assert 0.5 < r["mass_recall_vs_oracle"] <= 1.0 + 1e-6
            assert 0 < r["density"] <= 1
            assert r["rel_err_vs_dense_first2heads"] < 0.5
    assert doc["headline"]["peaked_row_share0.1_needles_kept"] == rule["needles_kept"]


def test_bad_flag(tmp_path):
    with pytest.raises(SystemExit, match="unknown option"):
        xattn_selection.main(["--lenghts=1024", f"--out_dir={tmp_path}"])

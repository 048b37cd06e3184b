"""bench.train_speed: the step rate read from a run's metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from bench.train_speed import step_rate


def _metrics(tmp_path, lines):
    p = tmp_path / "metrics.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


def test_rate_skips_the_first_log_line_and_reports_the_last(tmp_path):
    # a slow first interval (compilation) must not count: 50 steps in 1.0 min, then 100 steps in 0.1 min
    p = _metrics(
        tmp_path,
        [
            {"step": 50, "minutes": 1.0, "loss": 3.0},
            {"step": 100, "minutes": 1.05, "loss": 2.0},
            {"step": 150, "minutes": 1.1, "loss": 1.5},
            {"step": 200, "minutes": 1.15, "loss": 1.0},
        ],
    )
    rate, first, last = step_rate(p)
    assert rate == pytest.approx(100 / 6.0)  # steps 100 -> 200 in 0.1 min
    assert first["step"] == 100
    assert last["loss"] == 1.0


def test_too_few_lines_or_no_elapsed_time_are_clear_errors(tmp_path):
    two = _metrics(tmp_path, [{"step": 5, "minutes": 0.1}, {"step": 10, "minutes": 0.2}])
    with pytest.raises(ValueError, match="at least 3 are needed"):
        step_rate(two)
    flat = _metrics(tmp_path, [{"step": s, "minutes": 0.5} for s in (5, 10, 15)])
    with pytest.raises(ValueError, match="no time passed"):
        step_rate(flat)


def test_each_mode_sets_compile_explicitly(tmp_path, monkeypatch):
    # the GPU config turns compile on, so the eager run must turn it off, not inherit it
    import argparse
    import subprocess

    from bench import train_speed

    seen = []

    def fake_run(cmd, check):
        seen.append(cmd)
        out = next(c.split("=", 1)[1] for c in cmd if c.startswith("--out_dir="))
        variant = next(c.split("=", 1)[1] for c in cmd if c.startswith("--variant="))
        run_dir = tmp_path / out / variant
        run_dir.mkdir(parents=True)
        rows = [{"step": s, "minutes": s / 600, "loss": 1.0, "action_loss": 1.0} for s in (10, 20, 30)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    monkeypatch.setattr(subprocess, "run", fake_run)
    args = argparse.Namespace(
        windows="w",
        train_config="c.yaml",
        steps=30,
        batch_size=8,
        device="cpu",
        seed=0,
        log_every=10,
        tokenizer_path=None,
    )
    for mode in train_speed.MODES:
        row = train_speed.measure(args, "no_cot", mode, tmp_path, [])
        assert row["steps_per_s"] == pytest.approx(10.0)  # 10 steps per 1/60 min
    assert "--compile=false" in seen[0]
    assert "--compile=true" in seen[1]

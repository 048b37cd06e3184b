"""bench.policy_embedded report: headline, train minutes, incomplete evals and the per-task picture."""

from __future__ import annotations

import argparse
import json

import pytest

from bench import policy_embedded as pe


def _eval(tasks: dict[str, tuple[int, int]], complete: bool = True, missing=()) -> dict:
    return {
        "mean_success": sum(k / n for k, n in tasks.values()) / len(tasks),
        "tasks": {
            t: {"success_rate": k / n, "episodes": n, "ci95": [0.0, 1.0]} for t, (k, n) in tasks.items()
        },
        "policy": "/tmp/ckpt",
        "protocol": {"init_split": "eval"},
        "complete": complete,
        "missing": list(missing),
    }


def _args(tmp_path, **kw) -> argparse.Namespace:
    base = dict(
        out_dir=str(tmp_path / "runs"),
        suite="embedded_goal",
        results_dir=tmp_path / "results",
        eval_device="test host",
        dataset_note="",
        command="test",
        extra_eval=None,
        name="policy_embedded",
        keep_config=[],
    )
    return argparse.Namespace(**{**base, **kw})


def _write(path, doc) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


def test_report_headline_minutes_rows_and_png(tmp_path):
    runs = tmp_path / "runs"
    _write(runs / "cot" / "bench_train.json", {"minutes": 7.96, "tokenizer_minutes": 0.88, "device": "GPU X"})
    _write(runs / "no_cot" / "bench_train.json", {"minutes": 7.05, "device": "GPU X"})
    _write(runs / "eval_cot" / "results.json", _eval({"a": (46, 50), "b": (12, 50)}))
    _write(
        runs / "eval_no_cot" / "results.json", _eval({"a": (42, 50)}, complete=False, missing=["b init 0-49"])
    )
    _write(runs / "lerobot_act" / "bench_train.json", {"minutes": 3.0, "device": "GPU X"})  # never evaluated

    path = pe.report(_args(tmp_path))
    doc = json.loads(path.read_text())
    h = doc["headline"]
    assert h["success_cot"] == pytest.approx((0.92 + 0.24) / 2)
    assert h["train_minutes"] == pytest.approx(8.84)  # the tokenizer's minutes count towards CoT
    assert h["success_no_cot"] == pytest.approx(0.84)
    assert h["train_minutes_no_cot"] == pytest.approx(7.05)
    assert "success_lerobot_act" not in h
    assert h["eval_complete"] is False  # no_cot's eval lacks a task: the headline says it is partial
    variants = doc["config"]["variants"]
    assert variants["lerobot_act"]["eval"] == "not run"  # trained but not evaluated is said, not dropped
    assert variants["no_cot"]["eval_complete"] is False
    assert variants["no_cot"]["eval_missing"] == ["b init 0-49"]
    assert variants["cot"]["eval_episodes"] == 100
    assert doc["device"] == "train: GPU X; eval: test host"
    rows = {(r["variant"], r["task"]): r["success_rate"] for r in doc["rows"]}
    assert rows == {("cot", "a"): 0.92, ("cot", "b"): 0.24, ("no_cot", "a"): 0.84}
    png = path.with_suffix(".png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000


def test_report_without_cot_eval_says_what_to_run(tmp_path):
    _write(tmp_path / "runs" / "eval_no_cot" / "results.json", _eval({"a": (1, 2)}))
    with pytest.raises(FileNotFoundError, match="run the eval stage first"):
        pe.report(_args(tmp_path))
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_report_extra_runs_go_to_rows_and_config_not_headline(tmp_path):
    runs = tmp_path / "runs"
    _write(runs / "eval_cot" / "results.json", _eval({"a": (40, 50)}))
    _write(tmp_path / "old" / "results.json", _eval({"a": (20, 50)}))
    _write(tmp_path / "old" / "bench_train.json", {"minutes": 5.0})
    doc = json.loads(pe.report(_args(tmp_path, extra_eval=[f"cot_plain={tmp_path / 'old'}"])).read_text())
    assert doc["headline"] == {"success_cot": 0.8, "eval_complete": True}
    assert doc["config"]["extra_runs"]["cot_plain"]["success"] == 0.4
    assert doc["config"]["extra_runs"]["cot_plain"]["train"] == {"minutes": 5.0}
    assert {(r["variant"], r["success_rate"]) for r in doc["rows"]} == {("cot", 0.8), ("cot_plain", 0.4)}
    for bad in (f"cot={tmp_path / 'old'}", f"x={tmp_path / 'nothing'}", "noequals"):
        with pytest.raises(SystemExit, match="NAME=DIR"):
            pe.report(_args(tmp_path, extra_eval=[bad]))


def test_report_name_and_kept_config(tmp_path):
    runs = tmp_path / "runs"
    _write(runs / "eval_cot" / "results.json", _eval({"a": (30, 50)}))
    old = {"previous_runs": [{"headline": {"success_cot": 0.1}}], "note": "x"}
    _write(tmp_path / "results" / "policy_libero.json", {"config": old, "headline": {}, "rows": []})
    args = _args(tmp_path, name="policy_libero", suite="libero_object", keep_config=["previous_runs"])
    path = pe.report(args)
    assert path.name == "policy_libero.json"
    doc = json.loads(path.read_text())
    assert doc["headline"]["success_cot"] == 0.6
    assert doc["config"]["previous_runs"] == old["previous_runs"]  # kept
    assert "note" not in doc["config"]  # not asked for: dropped
    assert doc["config"]["suite"] == "libero_object"
    with pytest.raises(SystemExit, match="not in the config"):
        pe.report(_args(tmp_path, name="policy_libero", keep_config=["absent_key"]))

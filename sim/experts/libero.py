"""Scripted pick-and-place expert for LIBERO tasks, from privileged simulator state.

It reads the task's bddl goal (``LiberoEnv.goal``) and handles the first predicate when it is
``On(obj, target)`` or ``In(obj, target_region)``: every libero_spatial and libero_object task, and the
pick-and-place tasks of libero_goal. Geometry comes from ``LiberoEnv.privileged()``: body poses plus
each object's collision-geom box in its body frame, and the sites of LIBERO's regions.

Grasp: across the object's narrower horizontal side, from above, a few centimetres below its top.
Objects wider than the gripper opening (bowls) are grasped by the rim nearest the robot, fingers
closing radially. Place: the object's centre over the target's centre (an object's box centre or a
region site), its bottom a little above the target's top, then open. The plan is the shared waypoint
machine of :mod:`sim.experts.waypoints` (targets recomputed from live state every step; a missed
grasp restarts it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.experts.waypoints import Phase, Target, WaypointExpert, gripper_yaw, pick_and_place_plan, wrap

MAX_OPENING = 0.07  # m; wider objects get a rim grasp (Panda opens to about 0.08 m)
GRASP_DEPTH = 0.03  # m below the object's top where the fingers close
RIM_INSET = 0.012  # m from the outer rim towards the centre for a rim grasp
PLACE_CLEARANCE = 0.02  # m between the held object's bottom and the target's top at release
ROBOT_SIDE = np.array([-1.0, 0.0])  # world xy direction towards the robot base in LIBERO scenes


class ObjectBox:
    """An object's collision box in the world: centre, body axes, half extents.

    Args:
        pose: one entry of ``privileged()["objects"]["objects"]`` (``pos``, ``mat``, ``box_lo``, ``box_hi``).
    """

    def __init__(self, pose: dict[str, Any]) -> None:
        if "box_lo" not in pose:
            raise ValueError("object has no collision geoms; the LIBERO expert cannot grasp it")
        lo, hi = np.asarray(pose["box_lo"]), np.asarray(pose["box_hi"])
        self.mat = np.asarray(pose["mat"])
        self.half = (hi - lo) / 2.0
        self.center = np.asarray(pose["pos"]) + self.mat @ ((lo + hi) / 2.0)
        self.vertical_half = float(np.abs(self.mat[2]) @ self.half)

    @property
    def top(self) -> float:
        """World z of the box top."""
        return float(self.center[2] + self.vertical_half)

    @property
    def bottom(self) -> float:
        """World z of the box bottom."""
        return float(self.center[2] - self.vertical_half)

    def narrow_side(self) -> tuple[np.ndarray, float]:
        """Unit xy direction across the narrower horizontal side, and the width along it."""
        vertical = int(np.argmax(np.abs(self.mat[2])))
        best: tuple[np.ndarray, float] | None = None
        for k in range(3):
            if k == vertical:
                continue
            d = self.mat[:2, k]
            if np.linalg.norm(d) < 1e-6:
                continue
            width = 2.0 * float(self.half[k])
            if best is None or width < best[1]:
                best = (d / np.linalg.norm(d), width)
        assert best is not None
        return best

    @property
    def radius(self) -> float:
        """Half of the larger horizontal extent."""
        vertical = int(np.argmax(np.abs(self.mat[2])))
        return float(max(self.half[k] for k in range(3) if k != vertical))


def closing_yaw(direction: np.ndarray, current: float) -> float:
    """Gripper yaw whose fingers close along ``direction`` (xy), the one of the two nearest ``current``.

    With ``R = rot_z(yaw) @ R_DOWN`` the fingers close along the eef y axis, ``(sin yaw, -cos yaw)``.
    """
    yaw = float(np.arctan2(direction[0], -direction[1]))
    return current + wrap(yaw - current, np.pi)


def _objects(p: dict[str, Any]) -> dict[str, Any]:
    return p["objects"]["objects"]


def _target_top_and_xy(p: dict[str, Any], target: str) -> tuple[np.ndarray, float]:
    """Centre xy and top z of a place target: an object/fixture, or a region site."""
    objs, sites = _objects(p), p["objects"]["sites"]
    if target in objs:
        box = ObjectBox(objs[target])
        return box.center[:2], box.top
    if target in sites:
        site = sites[target]
        parent = site.get("parent")
        if parent in objs and "box_lo" in objs[parent]:
            # e.g. a basket's contain region: drop over the region, above the container's rim.
            return site["pos"][:2], max(ObjectBox(objs[parent]).top, float(site["pos"][2]))
        size = site.get("size")
        half_z = float(size[2]) if size is not None and len(size) == 3 else 0.0
        return site["pos"][:2], float(site["pos"][2] + half_z)
    raise ValueError(f"place target {target!r} is neither an object nor a region of this scene")


def libero_plan(p0: dict[str, Any]) -> list[Phase]:
    """Waypoint plan for the goal's first ``On``/``In`` predicate.

    Raises:
        ValueError: the goal is not a pick-and-place predicate (e.g. ``Open``, ``TurnOn``).
    """
    goal = p0["objects"]["goal"]
    pred = goal[0] if goal else []
    if len(pred) != 3 or pred[0].lower() not in ("on", "in"):
        raise ValueError(f"the LIBERO expert handles On/In goals only, this task's goal is {goal}")
    _, obj, target = pred
    if obj not in _objects(p0):
        raise ValueError(f"goal object {obj!r} not in the scene objects {sorted(_objects(p0))}")
    box0 = ObjectBox(_objects(p0)[obj])
    rim = box0.narrow_side()[1] > MAX_OPENING
    bottom0 = box0.bottom

    def grasp(p: dict[str, Any]) -> Target:
        box = ObjectBox(_objects(p)[obj])
        yaw_now = gripper_yaw(p["eef_mat"])
        if rim:
            u = ROBOT_SIDE
            xy = box.center[:2] + (box.radius - RIM_INSET) * u
            z = box.top - 0.02
            return np.array([*xy, z]), closing_yaw(u, yaw_now)
        u, _ = box.narrow_side()
        z = max(box.top - GRASP_DEPTH, float(box.center[2]))
        return np.array([*box.center[:2], z]), closing_yaw(u, yaw_now)

    def place(p: dict[str, Any]) -> Target:
        box = ObjectBox(_objects(p)[obj])
        eef = p["eef_pos"]
        xy, top = _target_top_and_xy(p, target)
        # Keep the live grip offset so the object's centre (not the gripper) lands on the target.
        off = eef[:2] - box.center[:2]
        z = top + PLACE_CLEARANCE + (eef[2] - box.bottom)
        return np.array([*(xy + off), z]), None

    def carry_z(p: dict[str, Any]) -> float:
        # Above the release height, and the object's bottom at least 8 cm over where it started.
        held = p["eef_pos"][2] - ObjectBox(_objects(p)[obj]).bottom
        return float(max(place(p)[0][2] + 0.06, bottom0 + 0.08 + held))

    def lifted(p: dict[str, Any]) -> bool:
        return ObjectBox(_objects(p)[obj]).bottom > bottom0 + 0.02

    return pick_and_place_plan(grasp, place, lifted=lifted, hover=0.08, carry_z=carry_z, release_steps=10)


def make_libero_expert(env: Any, *, noise: float = 0.0, seed: int = 0) -> WaypointExpert:
    """Scripted expert of a LIBERO task with an ``On``/``In`` goal (policy interface).

    Args:
        env: a ``LiberoEnv``.
        noise: std of Gaussian noise on the arm actions (demo diversity).
        seed: seed of the noise.
    """
    goal = env.goal
    if not goal or goal[0][0].lower() not in ("on", "in"):
        raise ValueError(
            f"no scripted expert for LIBERO task {env.task.name!r}: its goal {goal} is not a pick-and-place "
            "(On/In) predicate"
        )
    return WaypointExpert(env, libero_plan, noise=noise, seed=seed)

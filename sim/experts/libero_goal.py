"""Articulation skills for the LIBERO expert: turn a stove knob (libero_goal's ``TurnOn`` goal).

Geometry comes from ``privileged()["objects"]["joints"]``: each hinge/slide joint's value, world axis
and anchor, the world boxes of the collision geoms of the body it moves, and the direction that turns
it on. Drawers are not handled: with the top-down grasps of :mod:`sim.experts.waypoints` a finger
cannot reach behind LIBERO's cabinet handles (the cabinet top overhangs the gap between handle and
drawer front).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.experts.waypoints import Phase, Target, gripper_yaw

KNOB_TURN = 1.0  # rad; LIBERO's stove is on from 0.5 rad


def _joint(p: dict[str, Any], name: str) -> dict[str, Any]:
    return p["objects"]["joints"][name]


def _closing_yaw_along(direction: np.ndarray, p: dict[str, Any]) -> float:
    from sim.experts.libero import closing_yaw

    return closing_yaw(direction, gripper_yaw(p["eef_mat"]), float(p["joint_pos"][-1]))


def knob_phases(p0: dict[str, Any], joint: str) -> list[Phase]:
    """Grasp a knob across its bar at the hinge and turn the wrist past LIBERO's on threshold."""
    j0 = _joint(p0, joint)
    lo, hi = j0["geoms"][:, 0], j0["geoms"][:, 1]
    top = float(hi[:, 2].max())
    # The knob bar: geoms rising well above the base plate.
    tall = hi[:, 2] > top - 0.02
    size = hi[tall].max(axis=0) - lo[tall].min(axis=0)
    across = np.array([0.0, 1.0]) if size[0] >= size[1] else np.array([1.0, 0.0])
    anchor = np.asarray(j0["anchor"], dtype=float)
    grip = np.array([anchor[0], anchor[1], top - 0.015])
    turn = KNOB_TURN * j0["open_sign"] * float(np.sign(j0["axis"][2]) or 1.0)
    yaw: list[float] = []

    def grasp_yaw(p: dict[str, Any]) -> float:
        if not yaw:
            yaw.append(_closing_yaw_along(across, p))
        return yaw[0]

    def above(p: dict[str, Any]) -> Target:
        return grip + np.array([0.0, 0.0, 0.08]), grasp_yaw(p)

    def at(p: dict[str, Any]) -> Target:
        return grip, grasp_yaw(p)

    def turned(p: dict[str, Any]) -> Target:
        return grip, grasp_yaw(p) + turn

    return [
        Phase("knob_approach", above, -1.0, tol=0.01, yaw_tol=0.04, max_steps=70),
        Phase("knob_descend", at, -1.0, tol=0.006, yaw_tol=0.04, max_steps=40, speed=0.5),
        Phase("knob_close", at, 1.0, tol=1.0, yaw_tol=1.0, min_steps=10, max_steps=10),
        Phase("knob_turn", turned, 1.0, tol=0.02, yaw_tol=0.05, max_steps=60),
        Phase("knob_release", turned, -1.0, tol=1.0, yaw_tol=1.0, min_steps=8, max_steps=8),
    ]

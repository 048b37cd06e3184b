"""Scripted experts for ``embedded_goal``: pick a cube, place it on the plate, in the bin or on a cube."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.experts.stock import cube_grasp_yaw
from sim.experts.waypoints import Phase, Target, WaypointExpert, pick_and_place_plan

FINGER_REACH = 0.055  # open finger distance from the grip axis (m), plus finger thickness


def _dist_to_bin(point: np.ndarray, objs: dict[str, Any]) -> float:
    """Horizontal distance from ``point`` to the bin's footprint (0 inside it)."""
    b = objs["bin"]
    local = (b["mat"].T @ (np.array([*point[:2], b["pos"][2]]) - b["pos"]))[:2]
    out = np.maximum(np.abs(local) - objs["bin_half"][:2], 0.0)
    return float(np.linalg.norm(out))


def clear_grasp_yaw(objs: dict[str, Any], cube: str) -> float:
    """Cube grasp yaw whose open fingers keep the most room from the bin and the other cubes.

    The two grasps of a cube (fingers across one pair of faces or the other) differ by 90 degrees;
    near the bin wall or another cube one of them can put a finger on it.
    """
    c = objs[cube]
    base = cube_grasp_yaw(c["mat"])
    alt = base - np.pi / 2 if base > 0 else base + np.pi / 2
    others = [objs[o]["pos"] for o in ("red", "green", "blue") if o != cube]

    def clearance(yaw: float) -> float:
        d = np.array([np.sin(yaw), -np.cos(yaw), 0.0])  # finger closing direction
        fingers = [c["pos"] + FINGER_REACH * d, c["pos"] - FINGER_REACH * d]
        gaps = [_dist_to_bin(f, objs) for f in fingers]
        gaps += [np.linalg.norm((f - o)[:2]) - 1.5 * objs["cube_half"] for f in fingers for o in others]
        return float(min(gaps))

    cb, ca = clearance(base), clearance(alt)
    return alt if cb < 0.02 and ca > cb + 0.005 else base


def _plan_for(extra: dict[str, str]):
    cube = extra["cube"]

    def plan(p0: dict[str, Any]) -> list[Phase]:
        table = p0["table_height"]
        h = p0["objects"]["cube_half"]

        def grasp(p: dict[str, Any]) -> Target:
            c = p["objects"][cube]
            return c["pos"] + np.array([0, 0, -0.003]), clear_grasp_yaw(p["objects"], cube)

        if extra["kind"] == "plate":

            def place(p: dict[str, Any]) -> Target:
                pl = p["objects"]["plate"]["pos"]
                z = pl[2] + p["objects"]["plate_half_height"] + h + 0.012
                return np.array([pl[0], pl[1], z]), None

        elif extra["kind"] == "bin":

            def place(p: dict[str, Any]) -> Target:
                b = p["objects"]["bin"]
                z = b["pos"][2] - p["objects"]["bin_half"][2] + p["objects"]["bin_wall"] + h + 0.03
                return np.array([b["pos"][0], b["pos"][1], z]), None

        else:
            base = extra["base"]

            def place(p: dict[str, Any]) -> Target:
                b = p["objects"][base]
                return b["pos"] + np.array([0, 0, 2 * h + 0.012]), cube_grasp_yaw(b["mat"])

        return pick_and_place_plan(
            grasp,
            place,
            lifted=lambda p: p["objects"][cube]["pos"][2] > table + h + 0.025,
            carry_z=table + 0.17,
        )

    return plan


def make_embedded_expert(env: Any, *, noise: float = 0.0, seed: int = 0) -> WaypointExpert:
    """Scripted expert of an ``embedded_goal`` task (plan chosen from ``env.task.extra``)."""
    extra = dict(env.task.extra)
    if extra.get("kind") not in ("plate", "bin", "stack"):
        raise ValueError(f"task {env.task.name!r} has no embedded_goal expert (kind={extra.get('kind')!r})")
    return WaypointExpert(env, _plan_for(extra), noise=noise, seed=seed)

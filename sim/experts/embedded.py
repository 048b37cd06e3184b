"""Scripted experts for ``embedded_goal``: pick a cube, place it on the plate, in the bin or on a cube."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.experts.stock import cube_grasp_yaw
from sim.experts.waypoints import Phase, Target, WaypointExpert, pick_and_place_plan


def _plan_for(extra: dict[str, str]):
    cube = extra["cube"]

    def plan(p0: dict[str, Any]) -> list[Phase]:
        table = p0["table_height"]
        h = p0["objects"]["cube_half"]

        def grasp(p: dict[str, Any]) -> Target:
            c = p["objects"][cube]
            return c["pos"] + np.array([0, 0, -0.003]), cube_grasp_yaw(c["mat"])

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

"""Scripted experts for the ``robosuite_stock`` suite (Lift, Stack, PickPlaceCan, NutAssemblySquare, Door)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.experts.waypoints import (
    Phase,
    Target,
    WaypointExpert,
    frozen_up,
    gripper_yaw,
    pick_and_place_plan,
    wrap,
    yaw_of,
)


def cube_grasp_yaw(mat: np.ndarray) -> float:
    """Gripper yaw that closes the fingers across a cube's faces, within [-pi/4, pi/4)."""
    return wrap(yaw_of(mat), np.pi / 2)


def _lift_plan(p0: dict[str, Any]) -> list[Phase]:
    table = p0["table_height"]

    def grasp(p: dict[str, Any]) -> Target:
        c = p["objects"]["cube"]
        return c["pos"] + np.array([0, 0, -0.003]), cube_grasp_yaw(c["mat"])

    def up(p: dict[str, Any]) -> Target:
        return np.array([*p["eef_pos"][:2], table + 0.15]), None

    plan = pick_and_place_plan(
        grasp, grasp, lifted=lambda p: p["objects"]["cube"]["pos"][2] > table + 0.045, carry_z=table + 0.15
    )
    # Lift ends the task: keep holding and go up.
    return [*plan[:4], Phase("hold", up, 1.0, tol=0.005, max_steps=10**6)]


def _stack_plan(p0: dict[str, Any]) -> list[Phase]:
    table = p0["table_height"]
    hA = p0["objects"]["cubeA_half_size"][2]
    hB = p0["objects"]["cubeB_half_size"][2]

    def grasp(p: dict[str, Any]) -> Target:
        c = p["objects"]["cubeA"]
        return c["pos"] + np.array([0, 0, -0.003]), cube_grasp_yaw(c["mat"])

    def place(p: dict[str, Any]) -> Target:
        b = p["objects"]["cubeB"]
        # grip site sits ~at cube A's centre; release with A just above B's top face.
        z = b["pos"][2] + hB + hA + 0.012
        return np.array([b["pos"][0], b["pos"][1], z]), cube_grasp_yaw(b["mat"])

    return pick_and_place_plan(
        grasp, place, lifted=lambda p: p["objects"]["cubeA"]["pos"][2] > table + 0.045, carry_z=table + 0.16
    )


def _can_plan(p0: dict[str, Any]) -> list[Phase]:
    def grasp(p: dict[str, Any]) -> Target:
        c = p["objects"]["can"]
        return c["pos"] + np.array([0, 0, 0.0]), 0.0

    def place(p: dict[str, Any]) -> Target:
        t = p["objects"]["target"]
        return np.array([t[0], t[1], t[2] + 0.12]), None

    can_z0 = p0["objects"]["can"]["pos"][2]
    return pick_and_place_plan(
        grasp,
        place,
        lifted=lambda p: p["objects"]["can"]["pos"][2] > can_z0 + 0.04,
        carry_z=can_z0 + 0.25,
        hover=0.06,
    )


def _nut_plan(p0: dict[str, Any]) -> list[Phase]:
    table = p0["table_height"]
    state: dict[str, float] = {}

    def grasp(p: dict[str, Any]) -> Target:
        o = p["objects"]
        yaw = wrap(yaw_of(o["nut"]["mat"]), np.pi)
        return o["handle"] + np.array([0, 0, -0.002]), yaw

    def place_yaw(p: dict[str, Any]) -> float:
        # Turn the gripper so the nut's square hole lines up with the (axis-aligned) peg, choosing
        # among the 90-degree-symmetric options one whose handle does not point away from the
        # robot (+x): holding the handle beyond the peg is out of the Panda's reach.
        nut_yaw = yaw_of(p["objects"]["nut"]["mat"])
        base = wrap(-nut_yaw, np.pi / 2)
        options = [base + m * np.pi / 2 for m in (-1, 0, 1, 2, -2)]
        ok = [d for d in options if abs(d) <= 0.75 * np.pi and np.cos(nut_yaw + d) < 0.3]
        delta = min(ok or options, key=abs)
        return gripper_yaw(p["eef_mat"]) + delta

    def over_peg(dz: float):
        def f(p: dict[str, Any]) -> Target:
            o = p["objects"]
            if p.get("_phase_t", 1) == 0 or "yaw" not in state:
                state["yaw"] = place_yaw(p)
            off = o["peg"][:2] - o["nut"]["pos"][:2]
            pos = np.array([p["eef_pos"][0] + off[0], p["eef_pos"][1] + off[1], table + dz])
            return pos, state["yaw"]

        return f

    plan = pick_and_place_plan(
        grasp,
        over_peg(0.05),
        lifted=lambda p: p["objects"]["nut"]["pos"][2] > table + 0.03,
        carry_z=table + 0.18,
    )
    # carry/lower over the peg, keeping the hole aligned; release low so the nut drops onto the peg.
    return [
        *plan[:4],
        Phase("carry", over_peg(0.18), 1.0, tol=0.01, yaw_tol=0.03, max_steps=120, speed=0.7),
        Phase("align", over_peg(0.18), 1.0, tol=0.004, yaw_tol=0.03, min_steps=4, max_steps=40, speed=0.3),
        Phase("lower", over_peg(0.045), 1.0, tol=0.006, yaw_tol=0.05, max_steps=80, speed=0.4, xy_first=True),
        Phase("release", over_peg(0.045), -1.0, tol=1.0, yaw_tol=1.0, min_steps=8, max_steps=8),
        Phase("retreat", frozen_up(0.1), -1.0, tol=0.01, yaw_tol=1.0, max_steps=40),
    ]


def _door_plan(p0: dict[str, Any]) -> list[Phase]:
    def handle_grasp(p: dict[str, Any]) -> np.ndarray:
        o = p["objects"]
        # Grip the lever a little inboard of its tip site, towards the latch.
        toward = o["latch"] - o["handle"]
        toward[2] = 0.0
        return o["handle"] + 0.03 * toward / max(np.linalg.norm(toward), 1e-6)

    def lever_yaw(p: dict[str, Any]) -> float:
        o = p["objects"]
        d = o["handle"] - o["latch"]
        # fingers close across the lever: gripper x axis along the lever
        return wrap(float(np.arctan2(d[1], d[0])), np.pi)

    def approach(p: dict[str, Any]) -> Target:
        return handle_grasp(p) + np.array([0, 0, 0.08]), lever_yaw(p)

    def grasp(p: dict[str, Any]) -> Target:
        return handle_grasp(p), lever_yaw(p)

    def pull(p: dict[str, Any]) -> Target:
        o = p["objects"]
        r = p["eef_pos"] - o["hinge_anchor"]
        tangent = np.cross(o["hinge_axis"], r)
        tangent[2] = 0.0
        tangent /= max(np.linalg.norm(tangent), 1e-6)
        return p["eef_pos"] + 0.04 * tangent, None

    return [
        # The door panel can block the hand short of these targets: cap the time spent on them.
        Phase("approach", approach, -1.0, tol=0.01, yaw_tol=0.04, max_steps=35),
        Phase("descend", grasp, -1.0, tol=0.006, yaw_tol=0.04, max_steps=30, speed=0.5),
        Phase("close", grasp, 1.0, tol=1.0, yaw_tol=1.0, min_steps=10, max_steps=10, speed=0.3),
        Phase("pull", pull, 1.0, tol=0.0, yaw_tol=1.0, max_steps=10**6, speed=0.6),
    ]


_PLANS = {
    "lift": _lift_plan,
    "stack": _stack_plan,
    "pick_place_can": _can_plan,
    "nut_assembly_square": _nut_plan,
    "door": _door_plan,
}


def make_stock_expert(env: Any, *, noise: float = 0.0, seed: int = 0) -> WaypointExpert:
    """Scripted expert of a ``robosuite_stock`` task."""
    if env.task.name not in _PLANS:
        raise ValueError(f"no stock expert for task {env.task.name!r}; known: {sorted(_PLANS)}")
    return WaypointExpert(env, _PLANS[env.task.name], noise=noise, seed=seed)

"""Scripted pick-and-place expert for LIBERO tasks, from privileged simulator state.

It reads the task's bddl goal (``LiberoEnv.goal``) and handles a single ``On(obj, target)``,
``In(obj, target_region)`` or ``TurnOn(stove)`` predicate: every libero_spatial and libero_object
task, and 7 of the 10 libero_goal tasks (not the two drawer tasks, nor pushing the plate).
Geometry comes from ``LiberoEnv.privileged()``: body poses plus each object's collision-geom box in
its body frame, the sites of LIBERO's regions and the articulated joints.

Grasp: across the object's narrower horizontal side, from above, a few centimetres below its top.
Objects wider than the gripper opening (bowls) are grasped by the rim, fingers closing radially, on
a side with room for the fingers (:func:`rim_directions`). Place: the object's centre over the
target's centre (an object's box centre or a region site), its bottom a little above the target's
top, then open. The plan is the shared waypoint machine of :mod:`sim.experts.waypoints` (targets
recomputed from live state every step; a missed grasp restarts it, from another side for a rim).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.experts.waypoints import Phase, Target, WaypointExpert, gripper_yaw, pick_and_place_plan, wrap

SUPPORTED_GOALS = ("on", "in", "turnon")
MAX_OPENING = 0.07  # m; wider objects get a rim grasp (Panda opens to about 0.08 m)
GRASP_DEPTH = 0.03  # m below the object's top where the fingers close
RIM_INSET = 0.012  # m from the outer rim towards the centre for a rim grasp
PLACE_CLEARANCE = 0.02  # m between the held object's bottom and the target's top at release


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

    def xy_distance(self, point: np.ndarray) -> float:
        """Horizontal distance from ``point`` (xy) to the box's footprint (0 inside)."""
        vertical = int(np.argmax(np.abs(self.mat[2])))
        d = 0.0
        for k in range(3):
            if k == vertical:
                continue
            axis = self.mat[:2, k]
            n = np.linalg.norm(axis)
            if n < 1e-6:
                continue
            along = abs(float((np.asarray(point) - self.center[:2]) @ axis / n))
            d += max(along - float(self.half[k]), 0.0) ** 2
        return float(np.sqrt(d))

    @property
    def radius(self) -> float:
        """Half of the larger horizontal extent."""
        vertical = int(np.argmax(np.abs(self.mat[2])))
        return float(max(self.half[k] for k in range(3) if k != vertical))


def closing_yaw(direction: np.ndarray, current: float, wrist: float) -> float:
    """Gripper yaw whose fingers close along ``direction`` (xy).

    With ``R = rot_z(yaw) @ R_DOWN`` the fingers close along the eef y axis, ``(sin yaw, -cos yaw)``.
    Of the two yaws that do (the gripper is symmetric), take the one that leaves the Panda's last
    joint nearest the middle of its range: turning the gripper by ``+d`` about world z turns that joint
    by about ``-d`` (measured), and the joint stops at +-2.9 rad.

    Args:
        direction: closing direction in the world xy plane.
        current: current gripper yaw.
        wrist: current angle of the last arm joint (rad).
    """
    yaw = current + wrap(float(np.arctan2(direction[0], -direction[1])) - current, np.pi)
    other = yaw - np.pi if yaw > current else yaw + np.pi
    return min((yaw, other), key=lambda y: abs(wrist - (y - current)))


def _objects(p: dict[str, Any]) -> dict[str, Any]:
    return p["objects"]["objects"]


def rim_directions(p: dict[str, Any], obj: str, box: ObjectBox) -> list[np.ndarray]:
    """Sides of a wide object (bowl) to grasp its rim from, best first.

    Each of 8 directions is scored by the clearance between the fingers (and, for tall neighbours, the
    hand above them) and the other objects' footprints, capped at 3 cm, so any side with room is as good
    as any other; ties go to the side facing the robot (world -x), which leaves the most room above
    the object for the hand.
    """
    z = box.top - 0.02
    others = [ObjectBox(pose) for name, pose in _objects(p).items() if name != obj and "box_lo" in pose]
    scored = []
    for angle in np.arange(8) * np.pi / 4:
        u = np.array([np.cos(angle), np.sin(angle)])
        g = box.center[:2] + (box.radius - RIM_INSET) * u
        clearance = 0.03
        for other in others:
            if other.top < z - 0.015:
                continue
            offsets = [-0.045, 0.0, 0.045] + ([-0.11, -0.08, 0.08, 0.11] if other.top > z + 0.06 else [])
            clearance = min(clearance, *(other.xy_distance(g + s * u) for s in offsets))
        scored.append((clearance - 1e-3 * float(u[0]), angle, u))
    scored.sort(key=lambda t: (-t[0], t[1]))
    return [u for _, _, u in scored]


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
    """Waypoint plan for the goal's predicate: pick-and-place for ``On``/``In``, a knob turn for ``TurnOn``.

    Raises:
        ValueError: any other goal (e.g. ``Open``).
    """
    from sim.experts import libero_goal as skills

    goal = p0["objects"]["goal"]
    pred = goal[0] if goal else []
    kind = pred[0].lower() if pred else ""
    if kind == "turnon" and len(pred) == 2:
        knobs = [j for j in p0["objects"]["joints"] if j.startswith(pred[1])]
        if not knobs:
            raise ValueError(f"{pred[1]!r} has no joint to turn")
        return skills.knob_phases(p0, knobs[0])
    if len(pred) != 3 or kind not in ("on", "in"):
        raise ValueError(f"the LIBERO expert handles On/In/TurnOn goals, this task's goal is {goal}")
    _, obj, target = pred
    if obj not in _objects(p0):
        raise ValueError(f"goal object {obj!r} not in the scene objects {sorted(_objects(p0))}")
    box0 = ObjectBox(_objects(p0)[obj])
    rim = box0.narrow_side()[1] > MAX_OPENING
    # A missed rim grasp retries from the next-best side.
    rim_sides = rim_directions(p0, obj, box0) if rim else []
    attempt = [0]
    bottom0 = box0.bottom
    # Grip height above the object's bottom, used until the object is actually held (a missed grasp
    # must not make the carry height run away with the empty gripper).
    held0 = (box0.top - 0.02 if rim else max(box0.top - GRASP_DEPTH, float(box0.center[2]))) - bottom0

    def held(p: dict[str, Any], box: ObjectBox) -> float:
        return float(p["eef_pos"][2] - box.bottom) if box.bottom > bottom0 + 0.01 else held0

    def grasp(p: dict[str, Any]) -> Target:
        box = ObjectBox(_objects(p)[obj])
        yaw_now = gripper_yaw(p["eef_mat"])
        wrist = float(p["joint_pos"][-1])
        if rim:
            u = rim_sides[attempt[0] % len(rim_sides)]
            xy = box.center[:2] + (box.radius - RIM_INSET) * u
            z = box.top - 0.02
            return np.array([*xy, z]), closing_yaw(u, yaw_now, wrist)
        u, _ = box.narrow_side()
        z = max(box.top - GRASP_DEPTH, float(box.center[2]))
        return np.array([*box.center[:2], z]), closing_yaw(u, yaw_now, wrist)

    def place(p: dict[str, Any]) -> Target:
        box = ObjectBox(_objects(p)[obj])
        eef = p["eef_pos"]
        xy, top = _target_top_and_xy(p, target)
        # Keep the live grip offset so the object's centre (not the gripper) lands on the target.
        off = eef[:2] - box.center[:2]
        z = top + PLACE_CLEARANCE + held(p, box)
        return np.array([*(xy + off), z]), None

    def carry_z(p: dict[str, Any]) -> float:
        # Above the release height, and the object's bottom at least 8 cm over where it started.
        box = ObjectBox(_objects(p)[obj])
        return float(max(place(p)[0][2] + 0.06, bottom0 + 0.08 + held(p, box)))

    def lifted(p: dict[str, Any]) -> bool:
        ok = ObjectBox(_objects(p)[obj]).bottom > bottom0 + 0.02
        if not ok:
            attempt[0] += 1
        return ok

    return pick_and_place_plan(grasp, place, lifted=lifted, hover=0.08, carry_z=carry_z, release_steps=10)


def make_libero_expert(env: Any, *, noise: float = 0.0, seed: int = 0) -> WaypointExpert:
    """Scripted expert of a LIBERO task with one ``On``/``In``/``TurnOn`` goal (policy interface).

    Args:
        env: a ``LiberoEnv``.
        noise: std of Gaussian noise on the arm actions (demo diversity).
        seed: seed of the noise.
    """
    goal = env.goal
    if len(goal) != 1 or goal[0][0].lower() not in SUPPORTED_GOALS:
        raise ValueError(
            f"no scripted expert for LIBERO task {env.task.name!r}: its goal {goal} is not one of "
            f"{SUPPORTED_GOALS} (one predicate)"
        )
    kind, *args = goal[0]
    if kind.lower() in ("on", "in"):
        obj, target = args
        if getattr(env.rs_env.object_sites_dict.get(target), "joints", None):
            raise ValueError(
                f"no scripted expert for LIBERO task {env.task.name!r}: {target!r} is inside a drawer, and "
                "opening drawers is not supported"
            )
        box = ObjectBox(env.privileged()["objects"]["objects"][obj])
        if box.narrow_side()[1] > MAX_OPENING and 2 * box.vertical_half < 0.03:
            raise ValueError(
                f"no scripted expert for LIBERO task {env.task.name!r}: {obj!r} is too wide to grasp and too "
                "flat for a rim grasp (pushing is not supported)"
            )
    return WaypointExpert(env, libero_plan, noise=noise, seed=seed)

"""Waypoint state machines for scripted experts, in robosuite OSC_POSE delta units.

OSC_POSE maps an action in [-1, 1] to a delta of ``output_max`` = 0.05 m (position) and 0.5 rad
(axis-angle, world frame) per policy step (robosuite ``controllers/config/osc_pose.json``). A
phase moves the end effector towards a target position and a top-down orientation with a target
yaw, holding the gripper command; it ends when the target is reached (and at least ``min_steps``
passed) or after ``max_steps``. Targets are recomputed from the privileged state every step, so
the expert follows objects that move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

POS_UNIT = 0.05  # metres per unit action (OSC_POSE output_max)
ROT_UNIT = 0.5  # radians per unit action
# Top-down gripper at yaw 0 (the Panda's home orientation): eef x = world x, z = world -z.
R_DOWN = np.diag([1.0, -1.0, -1.0])

Target = tuple[np.ndarray, float | None]  # (eef position, gripper yaw or None = keep current yaw)


def rot_z(yaw: float) -> np.ndarray:
    """Rotation matrix about world z."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def mat_to_axis_angle(rot: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix (robust near 0 and pi)."""
    R = rot
    cos = np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if np.pi - angle < 1e-3:
        # Near pi: axis from the diagonal.
        axis = np.sqrt(np.clip((np.diag(R) + 1.0) / 2.0, 0.0, 1.0))
        k = int(np.argmax(axis))
        signs = np.sign(R[k] + R[:, k])
        signs[k] = 1.0
        axis = axis * signs
        return axis / np.linalg.norm(axis) * angle
    return v / (2.0 * np.sin(angle)) * angle


def yaw_of(mat: np.ndarray) -> float:
    """Yaw (rotation about world z) of a body's x axis."""
    return float(np.arctan2(mat[1, 0], mat[0, 0]))


def wrap(angle: float, period: float) -> float:
    """Wrap ``angle`` into ``[-period/2, period/2)``."""
    return float((angle + period / 2.0) % period - period / 2.0)


def gripper_yaw(eef_mat: np.ndarray) -> float:
    """Yaw of a top-down gripper (inverse of ``rot_z(yaw) @ R_DOWN``)."""
    return yaw_of(eef_mat @ R_DOWN.T)


@dataclass
class Phase:
    """One segment of a waypoint plan.

    Args:
        name: for logs and tests.
        target: privileged state -> (eef position target, gripper yaw target).
        gripper: -1 open, +1 close, held during the phase.
        tol: position tolerance (m) that ends the phase.
        yaw_tol: yaw tolerance (rad) that ends the phase.
        min_steps: the phase lasts at least this many steps (gripper actuation takes ~8 steps).
        max_steps: the phase ends after this many steps even if the target is not reached.
        speed: max position action (units of 0.05 m per step).
        check: optional privileged state -> bool evaluated when the phase ends; ``False`` restarts
            the plan at phase ``retry_from`` (e.g. the grasp missed).
        retry_from: phase index to restart from when ``check`` fails.
        xy_first: do not descend while the horizontal error exceeds ``xy_tol`` (align, then lower).
        xy_tol: horizontal tolerance for ``xy_first``.
    """

    name: str
    target: Callable[[dict[str, Any]], Target]
    gripper: float
    tol: float = 0.01
    yaw_tol: float = 0.05
    min_steps: int = 0
    max_steps: int = 60
    speed: float = 1.0
    check: Callable[[dict[str, Any]], bool] | None = None
    retry_from: int = 0
    xy_first: bool = False
    xy_tol: float = 0.004


class WaypointExpert:
    """Runs a list of :class:`Phase` against a ``SimEnv``'s privileged state (policy interface).

    Args:
        env: the ``SimEnv`` (its ``privileged()`` is read every step).
        plan: builds the phases; called at ``reset()`` with the initial privileged state.
        noise: std of Gaussian noise added to the position/rotation actions (0 = deterministic).
        seed: seed of the noise generator.
        max_retries: how many times a failed ``check`` may restart the plan.
    """

    def __init__(
        self,
        env: Any,
        plan: Callable[[dict[str, Any]], list[Phase]],
        *,
        noise: float = 0.0,
        seed: int = 0,
        max_retries: int = 3,
    ) -> None:
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.env = env
        self._plan = plan
        self.noise = noise
        self.max_retries = max_retries
        self._rng = np.random.default_rng(seed)
        self.phases: list[Phase] = []
        self.reset()

    def reset(self) -> None:
        """Start a new episode (the plan is built on the first ``infer``)."""
        self.phases = []
        self.k = 0
        self.t = 0
        self.retries = 0
        self.done = False

    @property
    def phase_name(self) -> str:
        """Name of the current phase (``"done"`` after the last one)."""
        return self.phases[self.k].name if self.phases and self.k < len(self.phases) else "done"

    def infer(self, obs: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
        """Return ``{"actions": (1, 7) float32}`` for the current state."""
        priv = self.env.privileged()
        if not self.phases:
            self.phases = self._plan(priv)
        if self.k >= len(self.phases):
            self.done = True
            last = self.phases[-1]
            return {"actions": self._action(priv, last.target(priv), last.gripper, last.speed)[None]}
        ph = self.phases[self.k]
        priv["_phase_t"] = self.t
        pos, yaw = ph.target(priv)
        pos = np.array(pos, dtype=float)
        if ph.xy_first and np.linalg.norm(pos[:2] - priv["eef_pos"][:2]) > ph.xy_tol:
            pos[2] = max(pos[2], priv["eef_pos"][2])
        action = self._action(priv, (pos, yaw), ph.gripper, ph.speed)
        self.t += 1
        err = np.linalg.norm(pos - priv["eef_pos"])
        yaw_err = 0.0 if yaw is None else abs(wrap(yaw - gripper_yaw(priv["eef_mat"]), 2 * np.pi))
        reached = err < ph.tol and yaw_err < ph.yaw_tol
        if (reached and self.t >= ph.min_steps) or self.t >= ph.max_steps:
            if ph.check is not None and not ph.check(priv) and self.retries < self.max_retries:
                self.retries += 1
                self.k = ph.retry_from
            else:
                self.k += 1
            self.t = 0
        return {"actions": action[None]}

    def _action(self, priv: dict[str, Any], target: Target, gripper: float, speed: float) -> np.ndarray:
        pos, yaw = target
        dpos = (np.asarray(pos) - priv["eef_pos"]) / POS_UNIT
        norm = np.linalg.norm(dpos)
        if norm > speed:
            dpos *= speed / norm
        if yaw is None:
            yaw = gripper_yaw(priv["eef_mat"])
        R_target = rot_z(yaw) @ R_DOWN
        drot = mat_to_axis_angle(R_target @ priv["eef_mat"].T) / ROT_UNIT
        a = np.concatenate([dpos, drot, [gripper]])
        if self.noise > 0:
            a[:6] += self._rng.normal(0.0, self.noise, 6)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def frozen_up(dz: float) -> Callable[[dict[str, Any]], Target]:
    """Target ``dz`` above where the eef is when the phase starts (a retreat that does not drift)."""
    start: list[np.ndarray] = []

    def f(p: dict[str, Any]) -> Target:
        if not start or p.get("_phase_t", 1) == 0:
            start[:] = [np.array(p["eef_pos"], dtype=float)]
        return start[0] + np.array([0.0, 0.0, dz]), None

    return f


def pick_and_place_plan(
    grasp: Callable[[dict[str, Any]], Target],
    place: Callable[[dict[str, Any]], Target],
    *,
    lifted: Callable[[dict[str, Any]], bool],
    hover: float = 0.10,
    carry_z: float | Callable[[dict[str, Any]], float] | None = None,
    release_steps: int = 8,
) -> list[Phase]:
    """The standard plan: above object -> descend -> close -> lift -> carry -> descend -> open -> retreat.

    Args:
        grasp: privileged -> (grasp position of the grip site, yaw).
        place: privileged -> (release position of the grip site, yaw).
        lifted: privileged -> whether the object is held off the table (checked after lifting;
            a miss restarts the plan).
        hover: height above the grasp/place position for the approach.
        carry_z: absolute eef height while lifting and carrying (or a function of the privileged
            state); ``None``: 0.12 m above where the grasp closed.
        release_steps: steps the gripper gets to open.
    """
    closed_at: list[np.ndarray] = []

    def cz(p: dict[str, Any]) -> float:
        if carry_z is None:
            return float(closed_at[0][2] + 0.12) if closed_at else float(p["eef_pos"][2] + 0.12)
        return carry_z(p) if callable(carry_z) else carry_z

    def above(fn: Callable[[dict[str, Any]], Target], dz: float) -> Callable[[dict[str, Any]], Target]:
        def f(p: dict[str, Any]) -> Target:
            pos, yaw = fn(p)
            return pos + np.array([0.0, 0.0, dz]), yaw

        return f

    def lift_target(p: dict[str, Any]) -> Target:
        # Straight up from where the grasp closed.
        if not closed_at or p.get("_phase_t", 1) == 0:
            closed_at[:] = [np.array(p["eef_pos"], dtype=float)]
        return np.array([*closed_at[0][:2], cz(p)]), None

    def carry_target(p: dict[str, Any]) -> Target:
        pos, yaw = place(p)
        return np.array([pos[0], pos[1], max(cz(p), pos[2] + hover)]), yaw

    return [
        Phase("approach", above(grasp, hover), -1.0, tol=0.01, yaw_tol=0.04, max_steps=80),
        Phase("descend", grasp, -1.0, tol=0.006, yaw_tol=0.04, max_steps=40, speed=0.5),
        Phase("close", grasp, 1.0, tol=1.0, yaw_tol=1.0, min_steps=10, max_steps=10, speed=0.3),
        Phase(
            "lift",
            lift_target,
            1.0,
            tol=0.02,
            yaw_tol=0.2,
            max_steps=40,
            check=lifted,
            retry_from=0,
        ),
        Phase("carry", carry_target, 1.0, tol=0.01, yaw_tol=0.05, max_steps=100),
        Phase(
            "lower", place, 1.0, tol=0.008, yaw_tol=0.05, max_steps=60, speed=0.5, xy_first=True, xy_tol=0.006
        ),
        Phase("release", place, -1.0, tol=1.0, yaw_tol=1.0, min_steps=release_steps, max_steps=release_steps),
        Phase("retreat", frozen_up(hover), -1.0, tol=0.01, yaw_tol=1.0, max_steps=40),
    ]

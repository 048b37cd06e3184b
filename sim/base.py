"""Task specs, suites, fixed init states and ``SimEnv``: the gymnasium lifecycle around a robosuite env.

A suite module (``sim/envs/<suite>.py``) subclasses :class:`SimEnv` and provides only the robosuite
env (:meth:`SimEnv._make_robosuite_env`), the success check (:meth:`SimEnv._check_success`) and its
objects for :meth:`SimEnv.privileged`; init states come from ``sim/init_states/<suite>/<task>.npz``
unless the subclass overrides :meth:`SimEnv._load_init_states` (LIBERO ships its own).
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import io
import json
import os
import string
import tempfile
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from sim.configs import RenderConfig

INIT_STATES_DIR = Path(__file__).resolve().parent / "init_states"
NUM_INIT_STATES = 50

AGENTVIEW_KEY = "observation.images.agentview"
WRIST_KEY = "observation.images.wrist"
STATE_KEY = "observation.state"
TASK_KEY = "task"
ACTION_DIM = 7
STATE_DIM = 8
# Seeds robosuite's global-RNG use at model build (e.g. Lift's random cube size), so every process
# builds the same model and the stored init states fit it.
MODEL_BUILD_SEED = 0


_LIVE_ENVS: weakref.WeakSet[SimEnv] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_live_envs() -> None:
    # Free GL contexts before robosuite's own atexit eglTerminate; after it, robosuite's
    # __del__ fails noisily. Registered after robosuite's GL import, so it runs first (LIFO).
    for env in list(_LIVE_ENVS):
        with contextlib.suppress(Exception):
            env.close()


def unknown_name_error(kind: str, name: object, known: list[str]) -> ValueError:
    """A ``ValueError`` that lists the known names and adds a difflib suggestion."""
    hint = difflib.get_close_matches(str(name), known, n=1)
    msg = f"unknown {kind} {name!r}; known {kind}s: {', '.join(known)}"
    if hint:
        msg += f". Did you mean {hint[0]!r}?"
    return ValueError(msg)


@dataclass(frozen=True)
class TaskSpec:
    """One task of a suite.

    Args:
        name: snake_case task id, unique within its suite.
        instruction: the language instruction given to the policy.
        max_steps: policy steps before the episode is truncated.
        wait_steps: no-op steps (zero motion, gripper open) after restoring an init state, so objects settle.
        suite: name of the suite the task belongs to.
        scene: the scene id (tasks sharing a scene differ only by instruction and success predicate).
        num_init_states: number of fixed init states.
        extra: suite-specific data (robosuite env name and kwargs, LIBERO bddl file, ...).
    """

    name: str
    instruction: str
    max_steps: int
    wait_steps: int
    suite: str = ""
    scene: str = ""
    num_init_states: int = NUM_INIT_STATES
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.instruction:
            raise ValueError(
                f"TaskSpec needs a name and an instruction, got {self.name!r} / {self.instruction!r}"
            )
        if self.max_steps <= 0 or self.wait_steps < 0:
            raise ValueError(f"TaskSpec {self.name}: max_steps must be > 0 and wait_steps >= 0")


@dataclass(frozen=True)
class Suite:
    """A named list of tasks."""

    name: str
    tasks: tuple[TaskSpec, ...]
    description: str = ""

    @property
    def task_names(self) -> list[str]:
        """Task names in suite order."""
        return [t.name for t in self.tasks]

    def task(self, name_or_index: str | int) -> TaskSpec:
        """Return a task by name or index; unknown names raise a ``ValueError`` listing the known ones."""
        if isinstance(name_or_index, int | np.integer) and not isinstance(name_or_index, bool):
            if not 0 <= int(name_or_index) < len(self.tasks):
                raise ValueError(
                    f"task index {name_or_index} out of range for suite {self.name!r} "
                    f"({len(self.tasks)} tasks)"
                )
            return self.tasks[int(name_or_index)]
        for t in self.tasks:
            if t.name == name_or_index:
                return t
        raise unknown_name_error(f"task of suite {self.name!r}", name_or_index, self.task_names)


# ----------------------------------------------------------------------------------------------
# Init states on disk
# ----------------------------------------------------------------------------------------------


INIT_SPLITS = ("eval", "train")


def init_state_path(suite: str, task: str, split: str = "eval") -> Path:
    """Path of the stored init states of ``suite``/``task``.

    ``split="eval"`` is the fixed bank that run_eval scores on; ``split="train"`` is a disjoint bank
    (drawn with another seed, ``sim/init_states/<suite>/train/``) for collecting demonstrations, so a
    policy is never evaluated on the exact scenes it was trained on.
    """
    if split not in INIT_SPLITS:
        raise ValueError(f"unknown init-state split {split!r}; choose one of {list(INIT_SPLITS)}")
    base = INIT_STATES_DIR / suite
    return (base if split == "eval" else base / split) / f"{task}.npz"


def save_init_states(path: Path, states: np.ndarray, meta: Mapping[str, Any], **arrays: np.ndarray) -> None:
    """Write init states, their metadata and extra arrays atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, states=np.asarray(states, dtype=np.float64), meta=np.array(json.dumps(dict(meta))), **arrays
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def load_init_states(suite: str, task: str, split: str = "eval") -> tuple[np.ndarray, dict[str, Any]]:
    """Load ``(states (N, D) float64, meta)`` of ``suite``/``task`` (``split``: :func:`init_state_path`)."""
    states, meta, _ = load_init_state_file(suite, task, split)
    return states, meta


def load_init_state_file(
    suite: str, task: str, split: str = "eval"
) -> tuple[np.ndarray, dict[str, Any], dict[str, np.ndarray]]:
    """Load ``(states, meta, extra arrays)``; extras include ``settled_state`` (golden start states)."""
    path = init_state_path(suite, task, split)
    if not path.exists():
        raise FileNotFoundError(
            f"no {split} init states for {suite}/{task} at {path}; generate them with "
            f"`python -m sim.envs.make_init_states --suites {suite} --split {split}`"
        )
    with np.load(path, allow_pickle=False) as z:
        extra = {k: np.array(z[k]) for k in z.files if k not in ("states", "meta")}
        return np.array(z["states"]), json.loads(str(z["meta"])), extra


# ----------------------------------------------------------------------------------------------
# The env
# ----------------------------------------------------------------------------------------------


class SimEnv(gym.Env):
    """Gymnasium env around a robosuite 1.4 env (Panda, OSC_POSE, 20 Hz); see ``sim/README.md``.

    Subclasses implement :meth:`_make_robosuite_env` and may override :meth:`_check_success`,
    :meth:`_privileged_objects`, :meth:`_load_init_states` and :meth:`_restore_state`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}  # noqa: RUF012

    def __init__(self, suite_name: str, task: TaskSpec, render: RenderConfig | None = None) -> None:
        from sim.render import ensure_gl_backend

        self.suite_name = suite_name
        self.task = task
        self.render_cfg = render if render is not None else RenderConfig()
        self.render_mode = "rgb_array"
        self.gl_backend = ensure_gl_backend(self.render_cfg.backend)
        rng_state = np.random.get_state()
        np.random.seed(MODEL_BUILD_SEED)
        try:
            self.rs_env = self._make_robosuite_env()
        finally:
            np.random.set_state(rng_state)
        self._init_states: np.ndarray | None = None
        self.init_state_meta: dict[str, Any] = {}
        self.init_split = "eval"
        s = self.render_cfg.image_size
        img = gym.spaces.Box(0, 255, (s, s, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(
            {
                AGENTVIEW_KEY: img,
                WRIST_KEY: img,
                STATE_KEY: gym.spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32),
                TASK_KEY: gym.spaces.Text(max_length=512, charset=string.printable),
            }
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._steps = 0
        self._needs_reset = True
        self._init_index = -1
        _LIVE_ENVS.add(self)
        global _ATEXIT_REGISTERED
        if not _ATEXIT_REGISTERED:
            atexit.register(_close_live_envs)
            _ATEXIT_REGISTERED = True

    # -- hooks ------------------------------------------------------------------------------

    def _make_robosuite_env(self) -> Any:
        """Build the robosuite env (Panda, OSC_POSE, control_freq 20, ``hard_reset=False``)."""
        raise NotImplementedError

    def _check_success(self) -> bool:
        """Task success predicate; defaults to robosuite's ``_check_success``."""
        return bool(self.rs_env._check_success())

    def _privileged_objects(self) -> dict[str, Any]:
        """Task objects for scripted experts: name -> pose arrays, sites, joint values."""
        return {}

    def use_init_split(self, split: str) -> None:
        """Switch the init-state bank (``"eval"`` or ``"train"``); the next reset draws from it."""
        if split not in INIT_SPLITS:
            raise ValueError(f"unknown init-state split {split!r}; choose one of {list(INIT_SPLITS)}")
        if split != self.init_split:
            self.init_split = split
            self._init_states = None
            self._needs_reset = True

    def _load_init_states(self) -> np.ndarray:
        states, meta = load_init_states(self.suite_name, self.task.name, self.init_split)
        self.init_state_meta = meta
        return states

    def _model_state(self) -> np.ndarray:
        """Scene values stored in the model rather than ``qpos`` (e.g. a fixed body's placement).

        They are appended to the flattened MuJoCo state of an init state. Default: none.
        """
        return np.zeros(0)

    def _set_model_state(self, values: np.ndarray) -> None:
        """Inverse of :meth:`_model_state`."""
        if values.size:
            raise ValueError(f"{type(self).__name__} has no model state, got {values.size} extra values")

    def _restore_state(self, state: np.ndarray) -> None:
        """Soft-reset robosuite, then set the flattened MuJoCo state and resync controllers."""
        env = self.rs_env
        env.reset()
        sim = env.sim
        n_mj = 1 + sim.model.nq + sim.model.nv
        if state.shape[0] < n_mj:
            raise ValueError(
                f"init state has {state.shape[0]} values but this model needs at least {n_mj} "
                "(1 + nq + nv); the stored init states do not match the scene (regenerate them?)"
            )
        self._set_model_state(state[n_mj:])
        sim.reset()  # mj_resetData: zero warm-start, ctrl, act, applied forces -> deterministic replay
        sim.set_state_from_flattened(state[:n_mj])
        sim.forward()
        for robot in env.robots:
            # The nullspace target and goal must not depend on the noisy pose env.reset() drew.
            robot.controller.update_initial_joints(robot.init_qpos)
            robot.controller.reset_goal()
            if getattr(robot, "gripper", None) is not None and hasattr(robot.gripper, "current_action"):
                robot.gripper.current_action = np.zeros_like(robot.gripper.current_action)

    # -- public API ---------------------------------------------------------------------------

    @property
    def instruction(self) -> str:
        """The task's language instruction."""
        return self.task.instruction

    @property
    def init_states(self) -> np.ndarray:
        """Fixed init states, ``(N, D)`` flattened MuJoCo states (loaded on first use)."""
        if self._init_states is None:
            self._init_states = np.asarray(self._load_init_states(), dtype=np.float64)
        return self._init_states

    @property
    def num_init_states(self) -> int:
        """Number of fixed init states."""
        return len(self.init_states)

    @property
    def init_index(self) -> int:
        """Index of the init state the current episode started from."""
        return self._init_index

    @property
    def steps(self) -> int:
        """Policy steps taken in the current episode."""
        return self._steps

    def is_success(self) -> bool:
        """Whether the task is solved in the current state."""
        return bool(self._check_success())

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore fixed init state ``options["init_state"]`` (else one drawn from ``seed``), then wait.

        Returns:
            ``(obs, info)``; ``info`` has ``init_state`` and ``success``.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"init_state"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; supported: ['init_state']")
        n = self.num_init_states
        idx = options.get("init_state")
        if idx is None:
            idx = int(self.np_random.integers(n))
        if isinstance(idx, bool) or not isinstance(idx, int | np.integer) or not 0 <= int(idx) < n:
            raise ValueError(f"init_state must be an int in [0, {n}), got {idx!r}")
        self._init_index = int(idx)
        self._restore_state(self.init_states[self._init_index])
        noop = np.zeros(ACTION_DIM)
        noop[-1] = -1.0
        for _ in range(self.task.wait_steps):
            self.rs_env.step(noop)
        self._steps = 0
        self._needs_reset = False
        return self._observe(), {"init_state": self._init_index, "success": self.is_success()}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Apply one normalized OSC_POSE action ``(7,)``; refuses bad actions before MuJoCo sees them."""
        a = self.validate_action(action)
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        self.rs_env.step(np.clip(a, -1.0, 1.0))
        self._steps += 1
        success = self.is_success()
        truncated = (not success) and self._steps >= self.task.max_steps
        info = {"success": success, "steps": self._steps, "init_state": self._init_index}
        return self._observe(), float(success), success, truncated, info

    @staticmethod
    def validate_action(action: Any) -> np.ndarray:
        """Return ``action`` as float64 ``(7,)`` or raise ``ValueError`` saying what is wrong."""
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"action must be a numeric array of shape ({ACTION_DIM},): {e}") from None
        if a.shape != (ACTION_DIM,):
            raise ValueError(
                f"action must have shape ({ACTION_DIM},) (delta pos 3, delta axis-angle 3, gripper), got "
                f"{a.shape}; pass one row of an action chunk, e.g. actions[0]"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(
                f"action has non-finite values (NaN/inf) at indices {np.flatnonzero(~np.isfinite(a))}"
            )
        return a

    def render(self) -> np.ndarray:
        """The agentview image of the current state (upright ``(H, W, 3)`` uint8)."""
        return self._observe()[AGENTVIEW_KEY]

    def close(self) -> None:
        """Free the robosuite env and its GL context."""
        env = getattr(self, "rs_env", None)
        if env is not None:
            ctx = getattr(getattr(env, "sim", None), "_render_context_offscreen", None)
            if ctx is not None:
                # Free GL objects in their own context, not in another env's current one.
                ctx.gl_ctx.make_current()
            try:
                env.close()
            finally:
                self.rs_env = None

    # -- observation and privileged state --------------------------------------------------------

    def _robot(self) -> Any:
        return self.rs_env.robots[0]

    def _eef(self) -> tuple[np.ndarray, np.ndarray]:
        """End-effector position and quaternion (xyzw), as robosuite's observables define them."""
        from robosuite.utils import transform_utils as T

        robot, sim = self._robot(), self.rs_env.sim
        pos = np.array(sim.data.site_xpos[robot.eef_site_id])
        quat = T.convert_quat(np.array(sim.data.get_body_xquat(robot.robot_model.eef_name)), to="xyzw")
        return pos, quat

    def _gripper_qpos(self) -> np.ndarray:
        robot, sim = self._robot(), self.rs_env.sim
        return np.array([sim.data.qpos[i] for i in robot._ref_gripper_joint_pos_indexes])

    def state(self) -> np.ndarray:
        """``observation.state``: eef pos 3, eef axis-angle 3, gripper qpos 2 (float32)."""
        from robosuite.utils import transform_utils as T

        pos, quat = self._eef()
        return np.concatenate([pos, T.quat2axisangle(quat), self._gripper_qpos()]).astype(np.float32)

    def _observe(self) -> dict[str, Any]:
        s = self.render_cfg.image_size
        if self.render_cfg.enabled:
            from sim.render import apply_render_settings, render_camera

            sim = self.rs_env.sim
            # robosuite makes a GL context current only when creating it; with several envs in one
            # process the last one created would be current for all of them (wrong images).
            sim._render_context_offscreen.gl_ctx.make_current()
            apply_render_settings(sim, self.render_cfg)
            agent = render_camera(sim, self.render_cfg.agentview_camera, s)
            wrist = render_camera(sim, self.render_cfg.wrist_camera, s)
        else:
            agent = np.zeros((s, s, 3), np.uint8)
            wrist = np.zeros((s, s, 3), np.uint8)
        return {
            AGENTVIEW_KEY: agent,
            WRIST_KEY: wrist,
            STATE_KEY: self.state(),
            TASK_KEY: self.task.instruction,
        }

    def privileged(self) -> dict[str, Any]:
        """Simulator state for scripted experts only (policies never see it).

        Returns:
            ``eef_pos``, ``eef_quat`` (xyzw), ``eef_mat`` (3x3), ``gripper_qpos``, ``joint_pos``,
            ``objects`` (from :meth:`_privileged_objects`), ``table_height`` when known.
        """
        from robosuite.utils import transform_utils as T

        pos, quat = self._eef()
        robot, sim = self._robot(), self.rs_env.sim
        out = {
            "eef_pos": pos,
            "eef_quat": quat,
            "eef_mat": T.quat2mat(quat),
            "gripper_qpos": self._gripper_qpos(),
            "joint_pos": np.array(sim.data.qpos[robot._ref_joint_pos_indexes]),
            "objects": self._privileged_objects(),
        }
        offset = getattr(self.rs_env, "table_offset", None)
        if offset is not None:
            out["table_height"] = float(np.asarray(offset)[2])
        return out

    def body_pose(self, body: str) -> dict[str, np.ndarray]:
        """World pose of a MuJoCo body: ``pos`` (3,), ``quat`` (xyzw), ``mat`` (3x3)."""
        from robosuite.utils import transform_utils as T

        sim = self.rs_env.sim
        bid = sim.model.body_name2id(body)
        quat = T.convert_quat(np.array(sim.data.body_xquat[bid]), to="xyzw")
        return {"pos": np.array(sim.data.body_xpos[bid]), "quat": quat, "mat": T.quat2mat(quat)}

    def site_pos(self, site: str) -> np.ndarray:
        """World position of a MuJoCo site."""
        sim = self.rs_env.sim
        return np.array(sim.data.site_xpos[sim.model.site_name2id(site)])

    # -- init-state generation ------------------------------------------------------------------

    def sample_init_state(self) -> np.ndarray:
        """Draw a new init state from the env's own placement sampler (uses numpy's global RNG)."""
        self.rs_env.reset()
        return np.concatenate([self.rs_env.sim.get_state().flatten(), self._model_state()])


def robosuite_kwargs(render: RenderConfig, **overrides: Any) -> dict[str, Any]:
    """Common ``robosuite.make`` kwargs: Panda, OSC_POSE, 20 Hz, no robosuite camera observables.

    Cameras are rendered by ``SimEnv`` once per control step, so robosuite's own camera observables
    (sampled inside the physics substep loop) stay off.
    """
    from robosuite import load_controller_config

    kw: dict[str, Any] = {
        "robots": "Panda",
        "controller_configs": load_controller_config(default_controller="OSC_POSE"),
        "has_renderer": False,
        "has_offscreen_renderer": render.enabled,
        "use_camera_obs": False,
        "control_freq": 20,
        "horizon": 10**9,
        "ignore_done": True,
        "hard_reset": False,
        "reward_shaping": False,
    }
    kw.update(overrides)
    return kw

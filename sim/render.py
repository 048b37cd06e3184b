"""Headless OpenGL backend selection and fast offscreen rendering settings for robosuite 1.4.

MuJoCo picks its GL platform from ``MUJOCO_GL`` (and PyOpenGL from ``PYOPENGL_PLATFORM``) when its
GL bindings are first imported, so :func:`ensure_gl_backend` must run before robosuite is imported.
Without a hand-set ``MUJOCO_GL`` we probe EGL in a subprocess (a failed EGL init cannot be undone
in-process) and fall back to OSMesa.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from typing import Any

from sim.configs import GL_BACKENDS, RenderConfig

logger = logging.getLogger(__name__)

_PROBE = (
    "import os, mujoco\n"
    "b = os.environ['MUJOCO_GL']\n"
    "if b == 'egl':\n"
    "    from mujoco.egl import GLContext\n"
    "else:\n"
    "    from mujoco.osmesa import GLContext\n"
    "c = GLContext(8, 8); c.make_current(); c.free()\n"
)
_chosen: str | None = None


def _gl_imported() -> bool:
    return any(m in sys.modules for m in ("OpenGL", "robosuite.utils.binding_utils", "mujoco.egl"))


def probe_backend(backend: str, timeout_s: float = 60.0) -> bool:
    """Return whether an offscreen GL context of ``backend`` can be created (checked in a subprocess)."""
    env = dict(os.environ, MUJOCO_GL=backend, PYOPENGL_PLATFORM=backend)
    try:
        res = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    if res.returncode != 0:
        logger.info("GL backend %s unavailable: %s", backend, res.stderr.decode(errors="replace")[-300:])
    return res.returncode == 0


def ensure_gl_backend(backend: str | None = None) -> str:
    """Select the headless GL backend for this process and return its name.

    Args:
        backend: ``"egl"``, ``"osmesa"`` or ``None`` (keep ``MUJOCO_GL`` if set, else EGL, else OSMesa).

    Returns:
        The backend in effect (the value of ``MUJOCO_GL``).

    Raises:
        RuntimeError: No backend works, or a different one was requested after GL was loaded.
    """
    global _chosen
    current = os.environ.get("MUJOCO_GL")
    if (backend is None and current) or (backend is not None and current == backend):
        _chosen = current
    elif backend is not None:
        if _gl_imported():
            raise RuntimeError(
                f"RenderConfig.backend={backend!r} but MuJoCo's GL bindings were already loaded with "
                f"MUJOCO_GL={current!r}; set MUJOCO_GL={backend} before importing robosuite, "
                "or use backend=None"
            )
        os.environ["MUJOCO_GL"] = backend
        _chosen = backend
    elif _chosen is None:
        for cand in GL_BACKENDS:
            if probe_backend(cand):
                _chosen = cand
                break
        else:
            raise RuntimeError(
                "No headless OpenGL backend works: EGL and OSMesa both failed. Install Mesa's EGL "
                "(apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) or OSMesa "
                "(apt-get install libosmesa6), "
                "or set MUJOCO_GL yourself."
            )
        os.environ["MUJOCO_GL"] = _chosen
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    return os.environ["MUJOCO_GL"]


def apply_render_settings(sim: Any, cfg: RenderConfig) -> None:
    """Apply ``cfg``'s anti-aliasing, shadow and reflection settings to a robosuite ``MjSim``.

    Reaches robosuite 1.4's offscreen context (``sim._render_context_offscreen``, with ``.con`` the
    ``MjrContext`` and ``.scn`` the ``MjvScene``). Changing ``offsamples`` only takes effect when
    the ``MjrContext`` is rebuilt, which this does (with the context's GL context current).
    Idempotent: a context already set up for ``cfg`` is left alone.

    Args:
        sim: robosuite ``MjSim`` with an offscreen render context.
        cfg: the render settings.
    """
    import mujoco

    ctx = getattr(sim, "_render_context_offscreen", None)
    if ctx is None:
        raise RuntimeError(
            "the robosuite sim has no offscreen render context (has_offscreen_renderer=False?)"
        )
    if getattr(ctx, "_vla_render_cfg", None) == cfg:
        return
    samples = 4 if cfg.anti_aliasing else 0
    model = sim.model._model
    if model.vis.quality.offsamples != samples or getattr(ctx, "_vla_render_cfg", None) is None:
        model.vis.quality.offsamples = samples
        ctx.gl_ctx.make_current()
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = int(cfg.shadows)
    ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = int(cfg.reflections)
    ctx._vla_render_cfg = cfg


def render_camera(sim: Any, camera: str, size: int) -> Any:
    """Render one camera of a robosuite ``MjSim`` and return it upright, ``(size, size, 3)`` uint8.

    OpenGL reads rows bottom-up, so robosuite 1.4 (``IMAGE_CONVENTION = "opengl"``) returns images
    upside down; we flip rows here, once.
    """
    import numpy as np

    img = sim.render(width=size, height=size, camera_name=camera)
    return np.ascontiguousarray(img[::-1])

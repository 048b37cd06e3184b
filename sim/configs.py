"""Configs of the simulation package: rendering (``RenderConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

GL_BACKENDS = ("egl", "osmesa")


@dataclass(frozen=True)
class RenderConfig:
    """How a ``SimEnv`` renders its two cameras.

    Defaults are tuned for software rendering (Mesa llvmpipe): anti-aliasing, shadows and
    reflections off take robosuite's Lift with two 128x128 cameras from about 10 to about 30 env
    steps/s on one core (../shared/reference/deps-probe.md section 2).

    Args:
        enabled: Render the cameras. ``False`` keeps the observation keys but fills the images with
            zeros and builds no GL context at all (fast, for scripted experts and success benchmarks).
        image_size: Height and width of both camera images, in pixels.
        anti_aliasing: Multisample anti-aliasing (``model.vis.quality.offsamples``, MuJoCo default 4).
        shadows: Shadow mapping (``mjRND_SHADOW``); the 4096² shadow map dominates render time.
        reflections: Floor/table reflections (``mjRND_REFLECTION``).
        backend: ``"egl"``, ``"osmesa"`` or ``None``. ``None`` keeps a ``MUJOCO_GL`` already set in the
            environment, else tries EGL and falls back to OSMesa. Must be decided before MuJoCo's GL
            bindings are imported (the first env of a process fixes it).
        agentview_camera: MuJoCo camera name of the third-person view.
        wrist_camera: MuJoCo camera name of the wrist (eye-in-hand) view.
    """

    enabled: bool = True
    image_size: int = 128
    anti_aliasing: bool = False
    shadows: bool = False
    reflections: bool = False
    backend: str | None = None
    agentview_camera: str = "agentview"
    wrist_camera: str = "robot0_eye_in_hand"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or not 16 <= self.image_size <= 1024:
            raise ValueError(f"RenderConfig.image_size must be an int in [16, 1024], got {self.image_size!r}")
        if self.backend is not None and self.backend not in GL_BACKENDS:
            raise ValueError(
                f"RenderConfig.backend must be one of {GL_BACKENDS} or None (auto), got {self.backend!r}"
            )

    @classmethod
    def off(cls) -> RenderConfig:
        """A config that renders nothing (images stay zero), for experts and success benchmarks."""
        return cls(enabled=False)

    @classmethod
    def tiny(cls) -> RenderConfig:
        """Test-sized config: 64x64 images, all quality features off."""
        return cls(image_size=64)

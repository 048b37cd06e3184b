"""The ACT policy of lerobot (``lerobot.policies.act``) on our demos: config, samples, statistics, adapter.

The network and its loss are lerobot's own (``ACTPolicy``: ResNet18 per camera, transformer encoder-decoder,
VAE objective); this file only feeds it our data and wraps it in our policy interface:

- inputs: both cameras (``(3, S, S)``, each camera through the shared backbone), ``observation.state`` and,
  with ``task_conditioning="onehot"``, the task as a one-hot ``observation.environment_state`` (ACT has no
  language input; in the embedded Goal suite the scene is the same for every task and only the instruction
  tells them apart, so without it ACT could not know what to do). The one-hot is over the instructions
  of the training data: an unseen instruction is refused, not guessed.
- output: a chunk of ``chunk_size`` actions (``action_is_pad`` past the episode end in training).
- normalization: mean/std of state, action and each camera's channels, computed from the training data
  (lerobot 0.4 moved normalization out of the policy into processor pipelines; we do it here, in one
  function shared by training and inference, and store the numbers in ``norm_stats.json``).

A checkpoint folder holds lerobot's ``config.json`` + ``model.safetensors`` (``save_pretrained``), our
``norm_stats.json`` and ``peer.json`` (``{"type": "lerobot_act", ...}``: the inference contract).
:class:`ActAdapter` loads it for ``sim.run_eval`` (through :func:`vla.peers.load_peer`).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import json
import logging
import os
import sys
import threading
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from vla.constants import ACTION, ACTION_IS_PAD, CAMERA_KEYS, GRIPPER_CONVENTION, OBS_STATE, TASK
from vla.fileio import atomic_dir

logger = logging.getLogger(__name__)

PEER_TYPE = "lerobot_act"
PEER_FORMAT_VERSION = 1
NORM_FILE = "norm_stats.json"
OBS_ENV_STATE = "observation.environment_state"
TASK_CONDITIONINGS = ("onehot", "none")
ACTION_LOW, ACTION_HIGH = -1.0, 1.0
_STD_FLOOR = 1e-3  # a constant dimension (e.g. an unused rotation) normalizes to 0 instead of blowing up


def import_act() -> types.ModuleType:
    """Import ``lerobot.policies.act.modeling_act`` (it also exports ``ACTConfig``).

    ``lerobot/policies/__init__.py`` imports the config of every lerobot policy; some of them (groot) break
    under transformers 5, which the GPU machine has. When the plain import fails, the package is registered
    without running its ``__init__`` and ACT is imported alone (its own modules need none of the others).
    """
    name = "lerobot.policies.act.modeling_act"
    try:
        return importlib.import_module(name)
    except Exception as first:  # any sibling policy's import error
        import lerobot

        pkg_dir = Path(lerobot.__file__).parent / "policies"
        pkg = types.ModuleType("lerobot.policies")
        pkg.__path__ = [str(pkg_dir)]
        pkg.__package__ = "lerobot.policies"
        pkg.__spec__ = importlib.machinery.ModuleSpec("lerobot.policies", None, is_package=True)
        pkg.__spec__.submodule_search_locations = [str(pkg_dir)]
        sys.modules["lerobot.policies"] = pkg
        logger.warning(
            "`import lerobot.policies` failed (%s: %s); importing ACT alone", type(first).__name__, first
        )
        try:
            return importlib.import_module(name)
        except Exception as e:
            raise ImportError(
                f"cannot import lerobot's ACT ({type(e).__name__}: {e}); it needs lerobot==0.4.4 with "
                "draccus, mergedeep, datasets, multiprocess, dill, av, pyserial, deepdiff and orderly-set "
                "importable "
                f"(first error: {type(first).__name__}: {first})"
            ) from e


@dataclass
class ActPolicyConfig:
    """ACT as we train it; every field but the last five maps onto lerobot's ``ACTConfig``.

    Args:
        chunk_size: actions predicted per call (10, as our CoT-VLA's chunk).
        n_action_steps: actions executed per call (the inference contract ``sim.run_eval`` reads).
        vision_backbone: torchvision ResNet name; trained from scratch (``pretrained_backbone_weights=None``,
            no downloads).
        dim_model: transformer width.
        n_heads: attention heads.
        dim_feedforward: feed-forward width.
        n_encoder_layers: transformer encoder layers.
        n_decoder_layers: transformer decoder layers (lerobot's default 1: the original ACT's effective
            depth).
        use_vae: the VAE objective (lerobot default on).
        latent_dim: VAE latent size.
        n_vae_encoder_layers: VAE encoder layers.
        kl_weight: weight of the KL term.
        dropout: transformer dropout.
        image_size: square side images are kept and served at (observations are resized to it, as the
            training frames were); 0 takes the training data's size.
        backbone_image_size: side the images are resized to right before the backbone, in training and
            inference alike (0 = ``image_size``). ResNet18 strides by 32: 64 px gives a 2x2 feature map per
            camera, 128 px a 4x4 one (its basic blocks cannot dilate instead).
        camera_keys: cameras fed to the backbone, in this order.
        task_conditioning: ``onehot`` (task index as ``observation.environment_state``) or ``none``.
        policy_id: name of the policy in eval results.
    """

    chunk_size: int = 10
    n_action_steps: int = 10
    vision_backbone: str = "resnet18"
    dim_model: int = 512
    n_heads: int = 8
    dim_feedforward: int = 3200
    n_encoder_layers: int = 4
    n_decoder_layers: int = 1
    use_vae: bool = True
    latent_dim: int = 32
    n_vae_encoder_layers: int = 4
    kl_weight: float = 10.0
    dropout: float = 0.1
    image_size: int = 0
    backbone_image_size: int = 0
    camera_keys: list[str] = field(default_factory=lambda: list(CAMERA_KEYS))
    task_conditioning: str = "onehot"
    policy_id: str = "lerobot_act"

    def __post_init__(self) -> None:
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"n_action_steps ({self.n_action_steps}) must be in [1, chunk_size={self.chunk_size}]"
            )
        if self.task_conditioning not in TASK_CONDITIONINGS:
            raise ValueError(
                f"task_conditioning must be one of {TASK_CONDITIONINGS}, got {self.task_conditioning!r}"
            )
        for name in ("image_size", "backbone_image_size"):
            v = getattr(self, name)
            if v < 0 or 0 < v < 32:
                raise ValueError(f"{name} must be 0 (see its doc) or >= 32, got {v}")
        if not self.camera_keys:
            raise ValueError("camera_keys must name at least one camera")
        if self.dim_model % self.n_heads:
            raise ValueError(f"dim_model ({self.dim_model}) must be divisible by n_heads ({self.n_heads})")

    @classmethod
    def tiny(cls, **overrides: Any) -> ActPolicyConfig:
        """A test-sized ACT (small transformer; the ResNet18 backbone stays)."""
        base: dict[str, Any] = dict(
            dim_model=64,
            n_heads=4,
            dim_feedforward=128,
            n_encoder_layers=1,
            n_vae_encoder_layers=1,
            latent_dim=8,
            dropout=0.0,
        )
        return cls(**{**base, **overrides})

    def to_lerobot(
        self, *, state_dim: int, action_dim: int, image_size: int, num_tasks: int, device: str
    ) -> Any:
        """The lerobot ``ACTConfig`` for these data dimensions."""
        act = import_act()
        from lerobot.configs.types import FeatureType, PolicyFeature

        side = self.backbone_image_size or image_size
        inputs = {k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, side, side)) for k in self.camera_keys}
        inputs[OBS_STATE] = PolicyFeature(type=FeatureType.STATE, shape=(state_dim,))
        if self.task_conditioning == "onehot":
            inputs[OBS_ENV_STATE] = PolicyFeature(type=FeatureType.ENV, shape=(num_tasks,))
        lerobot_fields = {
            k: v
            for k, v in asdict(self).items()
            if k not in ("image_size", "backbone_image_size", "camera_keys", "task_conditioning", "policy_id")
        }
        return act.ACTConfig(
            input_features=inputs,
            output_features={ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))},
            pretrained_backbone_weights=None,
            device=device,
            **lerobot_fields,
        )


@dataclass
class ActNormStats:
    """Mean/std per dimension (state, action) and per channel (each camera, on [0, 1] pixels).

    Args:
        state_mean: `(D,)`.
        state_std: `(D,)`, floored at 1e-3.
        action_mean: `(A,)`.
        action_std: `(A,)`, floored at 1e-3.
        image_mean: camera key -> `(3,)`.
        image_std: camera key -> `(3,)`, floored at 1e-3.
    """

    state_mean: list[float]
    state_std: list[float]
    action_mean: list[float]
    action_std: list[float]
    image_mean: dict[str, list[float]]
    image_std: dict[str, list[float]]

    def __post_init__(self) -> None:
        if len(self.state_mean) != len(self.state_std) or len(self.action_mean) != len(self.action_std):
            raise ValueError("normalization statistics have mismatched lengths")
        if set(self.image_mean) != set(self.image_std):
            raise ValueError("image_mean and image_std name different cameras")

    @classmethod
    def from_data(
        cls, frames: dict[str, Tensor], states: Tensor, actions: Tensor, max_frames: int = 8192
    ) -> ActNormStats:
        """Statistics of uint8 frames `(N, 3, S, S)` per camera, states `(N, D)` and actions `(N, A)`."""

        def floor(x: Tensor) -> list[float]:
            return x.clamp_min(_STD_FLOOR).tolist()

        img_mean, img_std = {}, {}
        for key, f in frames.items():
            idx = torch.linspace(0, len(f) - 1, min(len(f), max_frames)).round().long().to(f.device)
            total = torch.zeros(3, dtype=torch.float64, device=f.device)
            total_sq = torch.zeros_like(total)
            for part in idx.split(512):  # float64 in slices: 8192 frames at once would take GBs
                px = f[part].double().div_(255)  # (n, 3, S, S)
                total += px.sum((0, 2, 3))
                total_sq += px.square().sum((0, 2, 3))
            count = len(idx) * f.shape[-2] * f.shape[-1]
            mean = total / count
            img_mean[key] = mean.tolist()
            img_std[key] = floor((total_sq / count - mean.square()).clamp_min(0).sqrt())
        s, a = states.double(), actions.double()
        return cls(
            state_mean=s.mean(0).tolist(),
            state_std=floor(s.std(0, unbiased=False)),
            action_mean=a.mean(0).tolist(),
            action_std=floor(a.std(0, unbiased=False)),
            image_mean=img_mean,
            image_std=img_std,
        )

    def save(self, path: str | Path) -> None:
        """Write ``norm_stats.json`` (floats written exactly: json keeps every float64 digit)."""
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ActNormStats:
        """Read what :meth:`save` wrote."""
        return cls(**json.loads(Path(path).read_text()))

    def tensors(self, device: torch.device | str) -> dict[str, Tensor]:
        """float32 tensors on ``device``: ``state_mean`` ..., ``image_mean.<key>`` shaped `(1, 3, 1, 1)`."""
        out = {
            k: torch.tensor(getattr(self, k), dtype=torch.float32, device=device)
            for k in ("state_mean", "state_std", "action_mean", "action_std")
        }
        for key in self.image_mean:
            out[f"image_mean.{key}"] = torch.tensor(self.image_mean[key], device=device).view(1, 3, 1, 1)
            out[f"image_std.{key}"] = torch.tensor(self.image_std[key], device=device).view(1, 3, 1, 1)
        return out


def model_inputs(
    images: dict[str, Tensor],
    state: Tensor,
    task_index: Tensor | None,
    stats: dict[str, Tensor],
    num_tasks: int,
    backbone_size: int = 0,
) -> dict[str, Tensor]:
    """The normalized ACT batch, shared by training and inference.

    Args:
        images: camera key -> float `(B, 3, S, S)` in [0, 1] at the policy's ``image_size``.
        state: `(B, D)` raw state.
        task_index: `(B,)` int64 into the training task list, or None without task conditioning.
        stats: :meth:`ActNormStats.tensors` on the same device.
        num_tasks: one-hot width.
        backbone_size: resize images to this side (bilinear) before normalizing; 0 keeps ``S``.
    """
    batch = {OBS_STATE: (state - stats["state_mean"]) / stats["state_std"]}
    for key, img in images.items():
        if backbone_size and img.shape[-1] != backbone_size:
            img = F.interpolate(
                img, size=(backbone_size, backbone_size), mode="bilinear", align_corners=False
            )
        batch[key] = (img - stats[f"image_mean.{key}"]) / stats[f"image_std.{key}"]
    if task_index is not None:
        batch[OBS_ENV_STATE] = F.one_hot(task_index, num_tasks).to(state.dtype)
    return batch


class ActSamples:
    """Training samples over every frame of a demo set: frame ``t`` and the actions ``t .. t+h-1``.

    Frames stay uint8 on ``device`` (a few GB at most for our demo sets, so on the GPU a batch is a gather,
    with no DataLoader); :meth:`batch` returns the normalized ACT batch with ``action_is_pad`` set past each
    episode's end (the padded targets repeat the last action and are masked out of the loss by ACT).

    Args:
        windows: a :class:`vla.windows.Windows` (or anything with its fields).
        cfg: the policy config (cameras, chunk, image size; ``image_size=0`` keeps the data's size).
        device: where frames and labels live.
    """

    def __init__(self, windows: Any, cfg: ActPolicyConfig, device: torch.device | str = "cpu") -> None:
        from vla.windows import resize_uint8

        missing = [k for k in cfg.camera_keys if k not in windows.frames]
        if missing:
            raise ValueError(f"the demo set lacks cameras {missing}; it has {list(windows.frames)}")
        if len(windows.actions) == 0:
            raise ValueError("the demo set is empty")
        self.device = torch.device(device)
        self.cfg = cfg
        size = cfg.image_size or int(windows.frames[cfg.camera_keys[0]].shape[-1])
        self.image_size = size
        self.frames = {k: resize_uint8(windows.frames[k], size).to(self.device) for k in cfg.camera_keys}
        self.actions = windows.actions.float().to(self.device)
        self.states = windows.states.float().to(self.device)
        self.task_index = windows.task_index.long().to(self.device)
        self.tasks = list(windows.tasks)
        self.fps = int(windows.fps)
        self.source = str(getattr(windows, "source", ""))
        ep = windows.episode_index.long()
        new = torch.cat([torch.ones(1, dtype=torch.bool), ep[1:] != ep[:-1]])
        starts = torch.nonzero(new).flatten()
        ends = torch.cat([starts[1:], torch.tensor([len(ep)])])
        # (N,): one past the last row of each row's episode
        self.ep_end = torch.repeat_interleave(ends, ends - starts).to(self.device)
        self.num_episodes = len(starts)

    def __len__(self) -> int:
        return len(self.actions)

    @property
    def state_dim(self) -> int:
        """State width."""
        return int(self.states.shape[1])

    @property
    def action_dim(self) -> int:
        """Action width."""
        return int(self.actions.shape[1])

    def norm_stats(self) -> ActNormStats:
        """Mean/std of these samples (frames at the model's size)."""
        return ActNormStats.from_data(self.frames, self.states, self.actions)

    def batch(self, idx: Tensor, stats: dict[str, Tensor]) -> dict[str, Tensor]:
        """The ACT training batch for rows ``idx`` `(B,)`: normalized inputs, ``action`` `(B, h, A)`, pads."""
        idx = idx.to(self.device)
        h = self.cfg.chunk_size
        steps = idx[:, None] + torch.arange(h, device=self.device)  # (B, h)
        end = self.ep_end[idx][:, None]
        pad = steps >= end
        steps = torch.minimum(steps, end - 1)
        images = {k: f[idx].float().div_(255) for k, f in self.frames.items()}
        task = self.task_index[idx] if self.cfg.task_conditioning == "onehot" else None
        batch = model_inputs(
            images, self.states[idx], task, stats, len(self.tasks), self.cfg.backbone_image_size
        )
        batch[ACTION] = (self.actions[steps] - stats["action_mean"]) / stats["action_std"]
        batch[ACTION_IS_PAD] = pad
        return batch


def build_policy(cfg: ActPolicyConfig, samples: ActSamples, device: torch.device | str) -> Any:
    """A freshly initialised lerobot ``ACTPolicy`` for the dimensions of ``samples``."""
    act = import_act()
    lr_cfg = cfg.to_lerobot(
        state_dim=samples.state_dim,
        action_dim=samples.action_dim,
        image_size=samples.image_size,
        num_tasks=len(samples.tasks),
        device=torch.device(device).type,
    )
    return act.ACTPolicy(lr_cfg).to(device)


def peer_record(cfg: ActPolicyConfig, samples: ActSamples, **extra: Any) -> dict[str, Any]:
    """``peer.json``: the marker ``load_peer`` dispatches on, and the inference contract."""
    import lerobot

    return {
        "type": PEER_TYPE,
        "format_version": PEER_FORMAT_VERSION,
        "policy_id": cfg.policy_id,
        "chunk_size": cfg.chunk_size,
        "n_action_steps": cfg.n_action_steps,
        "control_hz": samples.fps,
        "camera_keys": list(cfg.camera_keys),
        "image_size": [samples.image_size, samples.image_size],
        "backbone_image_size": cfg.backbone_image_size or samples.image_size,
        "state_dim": samples.state_dim,
        "action_dim": samples.action_dim,
        "task_conditioning": cfg.task_conditioning,
        "tasks": samples.tasks,
        "lerobot_version": getattr(lerobot, "__version__", "unknown"),
        **extra,
    }


def save_checkpoint(path: str | Path, policy: Any, stats: ActNormStats, record: dict[str, Any]) -> Path:
    """Write ``path`` atomically: a temp folder beside it, then a rename (an older ``path`` is replaced)."""
    out = Path(path)
    with atomic_dir(out) as tmp:
        policy.save_pretrained(tmp)  # lerobot: config.json + model.safetensors
        stats.save(tmp / NORM_FILE)
        (tmp / "peer.json").write_text(json.dumps(record, indent=2))
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
    return out


def _load_policy(path: Path, device: torch.device) -> Any:
    """The lerobot ``ACTPolicy`` in ``path``, on ``device`` (strict weight loading, no hub access)."""
    from safetensors.torch import load_model

    act = import_act()
    from lerobot.configs.policies import PreTrainedConfig

    lr_cfg = PreTrainedConfig.from_pretrained(path)
    if not isinstance(lr_cfg, act.ACTConfig):
        raise ValueError(f"{path}/config.json is a {type(lr_cfg).__name__}, not lerobot's ACTConfig")
    lr_cfg.device = device.type
    policy = act.ACTPolicy(lr_cfg)
    load_model(policy, str(path / "model.safetensors"), strict=True)
    return policy.to(device).eval()


class ActAdapter:
    """lerobot's ACT behind our policy interface: ``reset()``, ``infer(obs)``, ``infer_batch``, ``metadata``.

    Observations as everywhere in the stack: ``observation.images.agentview`` / ``.wrist`` HxWx3 uint8
    upright (resized bilinear with antialiasing to the trained size, then /255, as
    :class:`vla.inference.InferencePolicy` does), ``observation.state`` float32 `(D,)` and ``task`` (str).
    ``infer`` returns the whole predicted chunk; ``metadata["n_action_steps"]`` says how much of it to run.

    Args:
        policy: a lerobot ``ACTPolicy`` (moved to ``device``, eval mode).
        stats: the normalization statistics it was trained with.
        record: its ``peer.json``.
        device: torch device.
    """

    def __init__(
        self, policy: Any, stats: ActNormStats, record: dict[str, Any], device: str | torch.device = "cpu"
    ):
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()
        self.record = dict(record)
        self.stats = stats
        self._stats_t = stats.tensors(self.device)
        self.camera_keys: list[str] = list(record["camera_keys"])
        self.image_size = int(record["image_size"][0])
        self.backbone_size = int(record.get("backbone_image_size", self.image_size))
        self.state_dim = int(record["state_dim"])
        self.tasks: list[str] = list(record["tasks"])
        self.onehot = record["task_conditioning"] == "onehot"
        self._lock = threading.Lock()
        self.metadata: dict[str, Any] = {
            "policy_id": record["policy_id"],
            "policy_type": PEER_TYPE,
            "chunk_size": int(record["chunk_size"]),
            "n_action_steps": int(record["n_action_steps"]),
            "control_hz": int(record["control_hz"]),
            "camera_keys": self.camera_keys,
            "image_size": [self.image_size, self.image_size],
            "image_orientation": "upright",
            "image_preprocessing": (
                "HxW uint8 frames are resized (bilinear, antialiased) to image_size, then (bilinear) to "
                f"{self.backbone_size} for the ResNet; no crop"
            ),
            "state_key": OBS_STATE,
            "state_dim": self.state_dim,
            "action_dim": int(record["action_dim"]),
            "action_low": [ACTION_LOW] * int(record["action_dim"]),
            "action_high": [ACTION_HIGH] * int(record["action_dim"]),
            "action_space": "OSC_POSE delta pos 3, delta axis-angle 3, gripper 1, in [-1, 1]",
            "gripper_convention": GRIPPER_CONVENTION,
            "action_normalization": f"mean/std per dimension (stats in {NORM_FILE})",
            "task_conditioning": record["task_conditioning"],
            "tasks": self.tasks,
            "lerobot_version": record.get("lerobot_version"),
        }

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None) -> ActAdapter:
        """Load a ``vla-train-act`` checkpoint; ``device=None`` reads ``$VLA_POLICY_DEVICE`` (default cpu)."""
        path = Path(path)
        record = json.loads((path / "peer.json").read_text())
        if record.get("type") != PEER_TYPE:
            raise ValueError(f"{path}/peer.json has type {record.get('type')!r}, expected {PEER_TYPE!r}")
        if int(record.get("format_version", 1)) > PEER_FORMAT_VERSION:
            raise ValueError(f"{path} is peer format {record['format_version']}; this code reads up to 1")
        dev = torch.device(device or os.environ.get("VLA_POLICY_DEVICE") or "cpu")
        return cls(_load_policy(path, dev), ActNormStats.load(path / NORM_FILE), record, dev)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write this policy as a checkpoint folder (atomically)."""
        return save_checkpoint(path, self.policy, self.stats, self.record)

    def reset(self) -> None:
        """Start a new episode (ACT keeps no state between calls here: every call predicts a chunk)."""
        self.policy.reset()

    def _task_index(self, task: Any, i: int) -> int:
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"observation {i} {TASK!r} must be a non-empty instruction string, got {task!r}")
        text = task.strip()
        for j, t in enumerate(self.tasks):
            if t == text or t.strip().lower() == text.lower():
                return j
        hint = difflib.get_close_matches(text, self.tasks, n=1)
        raise ValueError(
            f"observation {i}: task {text!r} is not one this ACT was trained on (it sees the task as a "
            f"one-hot over {len(self.tasks)} training instructions)"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
        )

    def _validate(self, obs: Any, i: int) -> None:
        if not isinstance(obs, dict):
            raise ValueError(f"observation {i} must be a dict, got {type(obs).__name__}")
        for key in self.camera_keys:
            if key not in obs:
                needed = [*self.camera_keys, OBS_STATE, TASK]
                raise ValueError(f"observation {i} lacks camera {key!r}; needed keys: {needed}")
            img = np.asarray(obs[key])
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"observation {i} {key!r} must be HxWx3 uint8, got {img.dtype} {img.shape}")
        state = obs.get(OBS_STATE)
        shape = None if state is None else np.asarray(state).shape
        if shape != (self.state_dim,):
            raise ValueError(
                f"observation {i} {OBS_STATE!r} must have shape ({self.state_dim},), got {shape}"
            )
        if not np.all(np.isfinite(np.asarray(state, dtype=np.float64))):
            raise ValueError(f"observation {i} {OBS_STATE!r} has non-finite values")

    def _image(self, img: np.ndarray) -> Tensor:
        t = torch.from_numpy(np.ascontiguousarray(img)).to(self.device).permute(2, 0, 1).float().div_(255)
        s = self.image_size
        if t.shape[-2:] != (s, s):
            t = F.interpolate(t[None], size=(s, s), mode="bilinear", antialias=True, align_corners=False)[0]
        return t

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        """One observation -> ``{"actions": float32 (chunk_size, A)}`` in the robot's action space."""
        return self.infer_batch([obs])[0]

    @torch.no_grad()
    def infer_batch(self, obs_list: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Several observations in one forward pass.

        Raises:
            ValueError: a missing camera, a wrong image or state shape, or (with task conditioning) an
                instruction outside the training set.
        """
        if not obs_list:
            return []
        for i, o in enumerate(obs_list):
            self._validate(o, i)
        tasks = [self._task_index(o.get(TASK), i) for i, o in enumerate(obs_list)] if self.onehot else None
        with self._lock:
            images = {k: torch.stack([self._image(o[k]) for o in obs_list]) for k in self.camera_keys}
            state = torch.from_numpy(np.stack([np.asarray(o[OBS_STATE], np.float32) for o in obs_list]))
            task = torch.tensor(tasks, device=self.device) if tasks is not None else None
            batch = model_inputs(
                images, state.to(self.device), task, self._stats_t, len(self.tasks), self.backbone_size
            )
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                norm = self.policy.predict_action_chunk(batch)
            actions = norm.float() * self._stats_t["action_std"] + self._stats_t["action_mean"]
            actions = actions.clamp(ACTION_LOW, ACTION_HIGH).cpu().numpy().astype(np.float32)
        return [{"actions": a} for a in actions]

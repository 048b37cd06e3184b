"""Numpy-level policy wrapper: the serving contract ``reset()`` / ``infer(obs)`` / ``infer_batch`` + metadata.

Observations are dicts with ``observation.images.agentview`` and ``observation.images.wrist`` (H×W×3
uint8, upright), ``observation.state`` (8,) float32 and ``task`` (str). ``infer`` returns ``actions``
float32 `(chunk, 7)` in the robot's action space and, for CoT policies, ``subgoal_image`` uint8
`(S, S, 3)`. ``metadata`` carries the inference contract the checkpoint was trained for.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla.constants import GRIPPER_CONVENTION, OBS_STATE, TASK
from vla.language import TEXT_ENCODER_ID
from vla.policy import Policy

ACTION_LOW = -1.0
ACTION_HIGH = 1.0


def policy_metadata(policy: Policy) -> dict[str, Any]:
    """The inference contract of a CoT-VLA policy (stored as ``metadata.json`` and served at /metadata)."""
    cfg = policy.config
    return {
        "model_id": cfg.model_id,
        "policy_type": cfg.get_choice_name(type(cfg)),
        "chunk_size": cfg.chunk_size,
        "n_action_steps": cfg.n_action_steps,
        "control_hz": cfg.control_hz,
        "camera_keys": list(cfg.camera_keys),
        "image_size": [cfg.image_size, cfg.image_size],
        "image_orientation": "upright",
        "image_preprocessing": "HxW uint8 frames are resized (bilinear, antialiased) to image_size; no crop",
        "state_key": OBS_STATE,
        "state_dim": cfg.state_dim,
        "action_dim": cfg.action_dim,
        "action_low": [ACTION_LOW] * cfg.action_dim,
        "action_high": [ACTION_HIGH] * cfg.action_dim,
        "action_space": "OSC_POSE delta pos 3, delta axis-angle 3, gripper 1, in [-1, 1]",
        "gripper_convention": GRIPPER_CONVENTION,
        "action_head": cfg.action_head,
        "action_normalization": "q01/q99 per dimension (stats in normalization.json)",
        "use_cot": cfg.use_cot,
        "subgoal_offset": cfg.subgoal_offset,
        "subgoal_decoding": cfg.subgoal_decoding if cfg.use_cot else None,
        "subgoal_image_size": [cfg.tokenizer.image_size, cfg.tokenizer.image_size] if cfg.use_cot else None,
        "subgoal_tokens": cfg.tokenizer.num_tokens if cfg.use_cot else 0,
        "text_encoder": TEXT_ENCODER_ID,
    }


class InferencePolicy:
    """Wrap a :class:`vla.policy.Policy` for numpy observations; thread-safe (one forward at a time).

    ``last_timing`` holds the stage timings of the latest call; concurrent callers should use
    :meth:`infer_batch_timed`, which returns them with the outputs.
    """

    def __init__(self, policy: Policy, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.policy = policy.to(self.device).eval()
        self.metadata: dict[str, Any] = policy_metadata(policy)
        self._lock = threading.Lock()
        self.last_timing: dict[str, float] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu") -> InferencePolicy:
        """Load a checkpoint folder."""
        return cls(Policy.from_pretrained(path, device="cpu"), device=device)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the checkpoint (weights, config, statistics, tokenizer, metadata)."""
        return self.policy.save_pretrained(path, metadata=self.metadata)

    def reset(self) -> None:
        """Start a new episode (clears any queued actions)."""
        self.policy.reset()

    def _validate(self, obs: dict[str, Any], i: int) -> None:
        cfg = self.policy.config
        if not isinstance(obs, dict):
            raise TypeError(f"observation {i} must be a dict, got {type(obs).__name__}")
        for key in cfg.camera_keys:
            img = obs.get(key)
            if img is None:
                raise KeyError(
                    f"observation {i} lacks {key!r}; needed keys: {[*cfg.camera_keys, OBS_STATE, TASK]}"
                )
            img = np.asarray(img)
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"observation {i} {key!r} must be HxWx3 uint8, got {img.dtype} {img.shape}")
        state = obs.get(OBS_STATE)
        if state is None or np.asarray(state).shape != (cfg.state_dim,):
            shape = None if state is None else np.asarray(state).shape
            raise ValueError(f"observation {i} {OBS_STATE!r} must have shape ({cfg.state_dim},), got {shape}")
        if not np.all(np.isfinite(np.asarray(state, dtype=np.float64))):
            raise ValueError(f"observation {i} {OBS_STATE!r} has non-finite values")
        task = obs.get(TASK)
        if not isinstance(task, str) or not task.strip():
            raise ValueError(f"observation {i} {TASK!r} must be a non-empty instruction string, got {task!r}")

    def _to_batch(self, obs_list: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self.policy.config
        batch: dict[str, Any] = {TASK: [o[TASK] for o in obs_list]}
        size = cfg.image_size
        for key in cfg.camera_keys:
            imgs = []
            for o in obs_list:
                t = torch.from_numpy(np.ascontiguousarray(o[key])).permute(2, 0, 1).float().div_(255)
                if t.shape[-2:] != (size, size):
                    t = torch.nn.functional.interpolate(
                        t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
                    )[0]
                imgs.append(t)
            batch[key] = torch.stack(imgs).to(self.device)
        batch[OBS_STATE] = torch.from_numpy(
            np.stack([np.asarray(o[OBS_STATE], dtype=np.float32) for o in obs_list])
        ).to(self.device)
        return batch

    def infer(self, obs: dict[str, Any]) -> dict[str, np.ndarray]:
        """One observation -> ``{"actions": (chunk, A) float32, "subgoal_image": (S, S, 3) uint8}``."""
        return self.infer_batch([obs])[0]

    def infer_batch(self, obs_list: list[dict[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Run several observations in one forward pass (what the server's batcher calls)."""
        return self.infer_batch_timed(obs_list)[0]

    def infer_batch_timed(
        self, obs_list: list[dict[str, Any]]
    ) -> tuple[list[dict[str, np.ndarray]], dict[str, float]]:
        """Like :meth:`infer_batch`, also returning this call's stage timings (ms) atomically.

        Timing keys: ``infer_ms`` (whole call), ``encoders_ms``, ``subgoal_ms``, ``actions_ms``,
        ``subgoal_image_ms`` (CoT only) and ``batch``.
        """
        if not obs_list:
            return [], {}
        for i, o in enumerate(obs_list):
            self._validate(o, i)
        with self._lock:
            t0 = time.perf_counter()
            batch = self._to_batch(obs_list)
            use_amp = self.device.type == "cuda"
            stages: dict[str, float] = {}
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
                res = self.policy.generate(batch, stage_ms=stages)
                images = None
                if "codes" in res:
                    t1 = time.perf_counter()
                    images = self.policy.decode_subgoal(res["codes"]).float()
                    if use_amp:
                        torch.cuda.synchronize(self.device)
                    stages["subgoal_image"] = (time.perf_counter() - t1) * 1e3
            actions = res["actions"].float().clamp(ACTION_LOW, ACTION_HIGH).cpu().numpy().astype(np.float32)
            out = [{"actions": actions[i]} for i in range(len(obs_list))]
            if images is not None:
                imgs = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
                for i, o in enumerate(out):
                    o["subgoal_image"] = imgs[i]
            timing = {
                "infer_ms": (time.perf_counter() - t0) * 1e3,
                "batch": len(obs_list),
                **{f"{k}_ms": v for k, v in stages.items()},
            }
            self.last_timing = timing
        return out, timing

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> dict[str, float]:
        """Run synthetic observations built from ``metadata`` (captures CUDA graphs, loads MiniLM).

        Returns:
            ``{"warmup_ms_b<n>": ms}`` per batch size (the second run of each size).
        """
        cfg = self.policy.config
        h, w = self.metadata["image_size"]
        obs = {k: np.zeros((h, w, 3), np.uint8) for k in cfg.camera_keys}
        obs[OBS_STATE] = np.zeros(cfg.state_dim, np.float32)
        obs[TASK] = "warm up"
        out = {}
        for n in batch_sizes:
            for _ in range(2):
                _, timing = self.infer_batch_timed([obs] * n)
            out[f"warmup_ms_b{n}"] = timing["infer_ms"]
        return out


def load_policy(path: str | Path, device: str = "cpu") -> InferencePolicy:
    """Load a checkpoint folder (``vla-train`` output or :func:`make_tiny_checkpoint`) for inference."""
    return InferencePolicy.from_pretrained(path, device=device)


def make_tiny_checkpoint(path: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Save a randomly initialised tiny CoT-VLA checkpoint (for tests and plumbing); returns ``path``.

    Args:
        path: destination folder.
        seed: torch seed for the initialisation (same seed, same weights).
        **overrides: fields of :meth:`vla.configs.CotVlaConfig.tiny` to change (e.g. ``use_cot=False``).
    """
    from vla.configs import CotVlaConfig

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        policy = CotVlaConfig.tiny(**overrides).build()
    return InferencePolicy(policy).save_pretrained(path)

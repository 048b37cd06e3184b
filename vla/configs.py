"""Policy configs: the draccus choice registry (``--policy.type=cot_vla``) and the CoT-VLA settings."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

import draccus

from perception.configs import VisionEncoderConfig, ViTEncoderConfig
from vla.backbones.decoder import DecoderConfig
from vla.constants import ACTION_DIM, CAMERA_KEYS, CONTROL_HZ, STATE_DIM
from vla.tokenizer.fsq import FSQConfig


@dataclass
class PolicyConfig(draccus.ChoiceRegistry):
    """Base of all policy configs; subclasses register a stable snake_case name."""

    def build(self) -> Any:
        """Instantiate the policy (a ``vla.policy.Policy``)."""
        raise NotImplementedError

    @classmethod
    def tiny(cls) -> PolicyConfig:
        """A test-sized config."""
        raise NotImplementedError


def get_policy_config_class(name: str) -> type[PolicyConfig]:
    """Look up a registered policy config by name; unknown names list the choices and a suggestion."""
    known = list(PolicyConfig.get_known_choices())
    if name not in known:
        hint = difflib.get_close_matches(name, known, n=1)
        raise ValueError(
            f"unknown policy type {name!r}; known: {known}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
        )
    return PolicyConfig.get_choice_class(name)


@PolicyConfig.register_subclass("cot_vla")
@dataclass
class CotVlaConfig(PolicyConfig):
    """CoT-VLA: predict a subgoal image (FSQ codes, autoregressive), then an action chunk in one pass.

    Sequence: ``[instruction | state | visual tokens | <boi> subgoal codes <eoi> | action tokens]``;
    causal attention everywhere except full attention among the action tokens.

    Args:
        vision: encoder run once per camera (shared weights, learned camera embedding).
        backbone: decoder shape (``vocab_size`` must stay 0: the VLA feeds embeddings).
        tokenizer: FSQ subgoal tokenizer shape (its ``image_size`` is the subgoal frame size).
        tokenizer_path: folder of a trained tokenizer (``vla-train-tokenizer``); its config replaces
            ``tokenizer``. ``None`` keeps a randomly initialised tokenizer.
        pretrained_backbone: optional Hugging Face Llama/Qwen2 folder whose blocks initialise the backbone.
        use_cot: predict the subgoal image first; ``False`` is the ``no_cot`` ablation (actions directly).
        subgoal_offset: the subgoal is the agentview frame this many control steps ahead.
        chunk_size: predicted actions per chunk.
        n_action_steps: actions executed before replanning (part of the inference contract).
        action_head: ``discrete`` (256 bins per dimension over q01..q99, OpenVLA) or ``continuous`` (L1).
        num_bins: bins of the discrete head.
        text_max_tokens: instruction tokens (sentence embedding + MiniLM token states, padded).
        subgoal_loss_weight: weight of the subgoal-code cross-entropy.
        aux_target_weight: weight of an auxiliary grounding loss; 0 (the default) builds no extra
            parameters. Above 0, a linear head on the hidden state of the last prefix token (it has seen
            the instruction, the state and every camera token, and nothing after them) predicts the
            batch's ``target_pos`` (the named object's world xyz at the episode start, normalised by the
            dataset's mean/std); its MSE is added to the loss times this weight. Training then needs a
            windows folder with ``target_pos`` (``python -m sim.targets --windows=<folder>``).
            Rows whose target is NaN are left out of it (``--until_reach_cm`` there marks the frames after
            the approach, where the arm's position gives the answer away).
        state_dropout: share of training samples whose proprioceptive state token is replaced by a
            learned "no state" embedding (0, the default, builds no extra parameters). The robot state
            is a shortcut: a policy can fit most of a demo's actions from where the arm is and never
            learn which object the instruction names (bench/notes/policy_embedded.md). Inference
            always uses the state, except at 1.0, which builds a policy that never sees it.
        subgoal_noise: largest share of subgoal codes replaced by random codes in a training sample's input
            (each sample draws its share uniformly from ``[0, subgoal_noise]``; the code targets stay the
            true codes). Training feeds the action tokens the true subgoal codes, inference the policy's
            own greedy ones, which are 32-42 % wrong on the embedded_goal demos: with its own codes a
            policy trained without noise has 1.4-3.3x the action error it has with the true ones
            (bench/notes/policy_embedded.md). The noise teaches the action pass not to trust every code.
            0 (the default) is off.
        subgoal_decoding: ``ar`` (autoregressive, causal codes) or ``parallel`` (Fast-dLLM style: the code
            block is bidirectional, trained with a masked-token objective and decoded in a few steps,
            unmasking every code whose confidence exceeds ``parallel_threshold`` and at least one).
        parallel_threshold: confidence threshold of parallel decoding (Fast-dLLM uses 0.9).
        camera_keys: observation keys of the cameras, in order.
        state_dim: proprioceptive state width.
        action_dim: action width.
        control_hz: control rate of the data and the robot.
        model_id: name announced in the inference metadata.
    """

    vision: VisionEncoderConfig = field(default_factory=ViTEncoderConfig)
    backbone: DecoderConfig = field(default_factory=DecoderConfig)
    tokenizer: FSQConfig = field(default_factory=FSQConfig)
    tokenizer_path: str | None = None
    pretrained_backbone: str | None = None
    use_cot: bool = True
    subgoal_offset: int = 10
    chunk_size: int = 10
    n_action_steps: int = 10
    action_head: str = "discrete"
    num_bins: int = 256
    text_max_tokens: int = 24
    subgoal_loss_weight: float = 1.0
    aux_target_weight: float = 0.0
    state_dropout: float = 0.0
    subgoal_noise: float = 0.0
    subgoal_decoding: str = "ar"
    parallel_threshold: float = 0.9
    camera_keys: list[str] = field(default_factory=lambda: list(CAMERA_KEYS))
    state_dim: int = STATE_DIM
    action_dim: int = ACTION_DIM
    control_hz: int = CONTROL_HZ
    model_id: str = "cot_vla"

    def __post_init__(self) -> None:
        if self.action_head not in ("discrete", "continuous"):
            raise ValueError(f"action_head must be 'discrete' or 'continuous', got {self.action_head!r}")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ValueError(
                f"n_action_steps ({self.n_action_steps}) must be in [1, chunk_size={self.chunk_size}]"
            )
        if self.subgoal_offset < 1:
            raise ValueError(f"subgoal_offset must be >= 1 control step, got {self.subgoal_offset}")
        if self.subgoal_decoding not in ("ar", "parallel"):
            raise ValueError(f"subgoal_decoding must be 'ar' or 'parallel', got {self.subgoal_decoding!r}")
        if not 0.0 <= self.parallel_threshold <= 1.0:
            raise ValueError(f"parallel_threshold must be in [0, 1], got {self.parallel_threshold}")
        if self.aux_target_weight < 0:
            raise ValueError(f"aux_target_weight must be >= 0 (0 = off), got {self.aux_target_weight}")
        if not 0.0 <= self.state_dropout <= 1.0:
            raise ValueError(
                f"state_dropout must be in [0, 1] (a share of samples), got {self.state_dropout}"
            )
        if not 0.0 <= self.subgoal_noise <= 1.0:
            raise ValueError(f"subgoal_noise must be in [0, 1] (a share of codes), got {self.subgoal_noise}")
        if self.num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {self.num_bins}")
        if self.backbone.vocab_size != 0:
            raise ValueError("backbone.vocab_size must be 0 for the VLA (it feeds embeddings, not token ids)")
        if not self.camera_keys:
            raise ValueError("camera_keys must name at least one camera")

    @property
    def image_size(self) -> int:
        """Side of the camera images the vision encoder takes."""
        return getattr(self.vision, "image_size", 64)

    def build(self) -> Any:
        """Instantiate :class:`vla.policies.cot_vla.modeling_cot_vla.CotVlaPolicy`."""
        from vla.policies.cot_vla.modeling_cot_vla import CotVlaPolicy

        return CotVlaPolicy(self)

    @classmethod
    def tiny(cls, **overrides: Any) -> CotVlaConfig:
        """Test-sized CoT-VLA: 32-px images, 16 subgoal codes, a 2-layer 64-wide decoder."""
        kw: dict[str, Any] = dict(
            vision=ViTEncoderConfig(image_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2),
            backbone=DecoderConfig(
                hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128
            ),
            tokenizer=FSQConfig(image_size=32, downsample=8, levels=[5, 5, 5], channels=[16, 16, 32, 32]),
            text_max_tokens=12,
            subgoal_offset=4,
            model_id="cot_vla_tiny",
        )
        kw.update(overrides)
        return cls(**kw)

    def fake_batch(self, batch_size: int = 2, seed: int = 0) -> dict[str, Any]:
        """A random training batch with every key the policy reads (images in [0, 1])."""
        import torch

        from vla.constants import ACTION, ACTION_IS_PAD, OBS_STATE, SUBGOAL_IMAGE, TASK

        g = torch.Generator().manual_seed(seed)
        s = self.image_size
        batch: dict[str, Any] = {k: torch.rand(batch_size, 3, s, s, generator=g) for k in self.camera_keys}
        batch[SUBGOAL_IMAGE] = torch.rand(batch_size, 3, s, s, generator=g)
        batch[OBS_STATE] = torch.randn(batch_size, self.state_dim, generator=g)
        batch[ACTION] = torch.rand(batch_size, self.chunk_size, self.action_dim, generator=g) * 2 - 1
        batch[ACTION_IS_PAD] = torch.zeros(batch_size, self.chunk_size, dtype=torch.bool)
        tasks = ["put the red cube on the plate", "open the top drawer of the cabinet"]
        batch[TASK] = [tasks[i % 2] for i in range(batch_size)]
        return batch

"""CoT-VLA network: visual chain of thought (subgoal image codes), then a parallel action chunk.

Sequence (fixed layout, so every sample has the same positions)::

    [instruction (text_max_tokens) | state (1) | cameras (n_cams x num_patches)
     | <boi> | subgoal codes (N) | <eoi> | action tokens (chunk x A)]

Causal attention over everything except the action tokens, which see each other fully (CoT-VLA's
hybrid mask), so the chunk decodes in one pass. Padding in the instruction is masked as keys.
With ``use_cot=False`` the ``<boi> ... <eoi>`` block is absent (the ablation).

The subgoal is generated greedily with the decoder's static KV cache: one prefill up to ``<boi>``,
``N - 1`` one-token decode steps, then one pass over ``[c_N, <eoi>, actions]``.

With ``aux_target_weight > 0`` a linear head reads the last prefix token (the last camera token) and
regresses the named object's start position (``target_pos``), a grounding signal for the instruction:
that token is the one place whose causal context is exactly instruction + state + cameras, the same
in training (teacher-forced codes) and at inference, and its last-layer output feeds no other loss.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from typing_extensions import override

from vla.backbones.decoder import Decoder, init_weights, load_hf_decoder
from vla.configs import CotVlaConfig
from vla.constants import ACTION, ACTION_IS_PAD, OBS_STATE, SUBGOAL_IMAGE, TARGET_POS, TASK
from vla.fileio import atomic_write_text
from vla.language import TEXT_DIM, get_text_encoder
from vla.normalize import (
    NormStats,
    actions_to_bins,
    bins_to_actions,
    normalize_actions,
    stats_tensor,
    unnormalize_actions,
)
from vla.policy import STATS_FILE, TOKENIZER_DIR, Policy
from vla.tokenizer.fsq import FSQAutoencoder


@dataclass(frozen=True)
class Layout:
    """Token positions of the CoT-VLA sequence."""

    n_text: int
    n_vis: int
    n_codes: int
    n_act: int
    use_cot: bool
    bidirectional_codes: bool = False

    @property
    def prefix_len(self) -> int:
        """Instruction + state + visual tokens."""
        return self.n_text + 1 + self.n_vis

    @property
    def boi(self) -> int:
        """Index of ``<boi>`` (only with CoT)."""
        return self.prefix_len

    @property
    def codes_start(self) -> int:
        """Index of the first subgoal code."""
        return self.boi + 1

    @property
    def act_start(self) -> int:
        """Index of the first action token."""
        return self.prefix_len + (self.n_codes + 2 if self.use_cot else 0)

    @property
    def total(self) -> int:
        """Sequence length."""
        return self.act_start + self.n_act

    def base_mask(self, device: torch.device | str = "cpu") -> Tensor:
        """Hybrid mask `(T, T)`, True = may attend: causal, plus full attention among action tokens."""
        m = torch.ones(self.total, self.total, dtype=torch.bool, device=device).tril()
        m[self.act_start :, self.act_start :] = True
        if self.use_cot and self.bidirectional_codes:  # parallel (masked-token) subgoal decoding
            c = slice(self.codes_start, self.codes_start + self.n_codes)
            m[c, c] = True
        return m


class _StageClock:
    """Record device-synchronised lap times (ms) into a dict; a no-op when the dict is ``None``."""

    def __init__(self, out: dict[str, float] | None, device: torch.device) -> None:
        self.out, self.device = out, device
        self.t = self._now()

    def _now(self) -> float:
        if self.out is None:
            return 0.0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.out is not None:
            now = self._now()
            self.out[name] = (now - self.t) * 1e3
            self.t = now


class _CodeStep:
    """One greedy subgoal-code decode step with position-independent shapes (``Decoder.decode_static``).

    Every tensor the step touches is preallocated (token in, position, key mask, token out, the cache).
    """

    def __init__(self, policy: CotVlaPolicy, b: int, dt: torch.dtype) -> None:
        lay, dev = policy.layout, policy.cam_embed.device
        self.policy, self.dt = policy, dt
        self.cache = policy.backbone.allocate_cache(b, lay.total, dev, dt)
        self.valid = torch.ones(b, lay.total, dtype=torch.bool, device=dev)
        self.token = torch.zeros(b, dtype=torch.long, device=dev)
        self.pos = torch.full((1,), lay.boi + 1, dtype=torch.long, device=dev)
        self.out = torch.zeros(b, dtype=torch.long, device=dev)

    def step(self, token: Tensor, pos: int) -> Tensor:
        """Feed ``token`` `(B,)` at position ``pos``; return the next code `(B,)`."""
        p = self.policy
        self.token.copy_(token)
        self.pos.fill_(pos)
        x = p.code_embed(self.token)[:, None].to(self.dt)  # (B, 1, d)
        mask = p.mask.index_select(0, self.pos)[None, None] & self.valid[:, None, None, :]  # (B, 1, 1, T)
        h = p.backbone.decode_static(x, self.cache, self.pos, mask)
        self.out.copy_(p.code_head(h[:, -1]).argmax(-1))
        return self.out.clone()


class _CodeLoopGraph:
    """The whole greedy subgoal loop (codes 2..N, one token per step) captured in one CUDA graph.

    Positions are fixed by the layout, so one capture per batch size replays exactly the kernels of the
    ``dynamic`` path: the eager prefill fills the static cache, then one replay emits the remaining codes
    (one graph launch instead of thousands of kernel launches). The graph reads the weights in place;
    moving the policy (``.to``) drops the captured graphs.
    """

    def __init__(self, policy: CotVlaPolicy, b: int, dt: torch.dtype) -> None:
        lay, dev = policy.layout, policy.cam_embed.device
        if dev.type != "cuda":
            raise ValueError("decode='graph' needs the policy on a CUDA device; use 'static' or 'dynamic'")
        self.policy, self.dt = policy, dt
        self.cache = policy.backbone.allocate_cache(b, lay.total, dev, dt)
        self.valid = torch.ones(b, lay.total, dtype=torch.bool, device=dev)
        self.first = torch.zeros(b, dtype=torch.long, device=dev)
        self.out = torch.zeros(b, max(lay.n_codes - 1, 0), dtype=torch.long, device=dev)
        stream = torch.cuda.Stream(dev)
        stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(stream):
            self._body()  # warm-up outside the graph (allocator, lazy inits)
        torch.cuda.current_stream(dev).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._body()

    def _body(self) -> None:
        p, lay = self.policy, self.policy.layout
        tok = self.first
        for i in range(1, lay.n_codes):
            pos = lay.boi + i
            x = p.code_embed(tok)[:, None].to(self.dt)
            h = p.backbone.decode(x, self.cache, pos, p._mask(self.valid, slice(pos, pos + 1), pos + 1))
            tok = p.code_head(h[:, -1]).argmax(-1)
            self.out[:, i - 1] = tok

    def run(self, first: Tensor) -> Tensor:
        """Given code 1 `(B,)` (from the prefill), return codes 2..N `(B, N-1)`."""
        self.first.copy_(first)
        self.graph.replay()
        return self.out.clone()


class CotVlaPolicy(Policy):
    """The CoT-VLA model. Batches hold float images `(B, 3, H, W)` in [0, 1] (see ``vla.constants``)."""

    def __init__(self, config: CotVlaConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.backbone.hidden_size
        self.vision = cfg.vision.build()
        if self.vision.cond_dim not in (0, TEXT_DIM):
            raise ValueError(
                f"the vision encoder is conditioned on the pooled instruction ({TEXT_DIM} wide); "
                f"its cond_dim is {self.vision.cond_dim}: set --policy.vision.film_dim={TEXT_DIM} or 0"
            )
        self.vision_transform = self.vision.get_transform()
        self.vis_proj = nn.Linear(self.vision.embed_dim, d)
        self.cam_embed = nn.Parameter(torch.zeros(len(cfg.camera_keys), d))
        self.text_proj = nn.Linear(TEXT_DIM, d)
        self.state_proj = nn.Linear(cfg.state_dim, d)
        self.tokenizer = FSQAutoencoder(cfg.tokenizer)
        self.tokenizer.requires_grad_(False)
        if cfg.use_cot:  # the ablation has no subgoal block at all (no unused parameters under DDP)
            self.code_embed = nn.Embedding(cfg.tokenizer.codebook_size, d)
            self.code_head = nn.Linear(d, cfg.tokenizer.codebook_size)
            self.boi = nn.Parameter(torch.zeros(d))
            self.eoi = nn.Parameter(torch.zeros(d))
            if cfg.subgoal_decoding == "parallel":
                self.code_mask = nn.Parameter(
                    torch.zeros(d)
                )  # the [MASK] input of the masked-token objective
        self.action_queries = nn.Parameter(torch.zeros(cfg.chunk_size * cfg.action_dim, d))
        out = cfg.num_bins if cfg.action_head == "discrete" else 1
        self.action_out = nn.Linear(d, out)
        self.backbone = Decoder(cfg.backbone)
        for m in (self.vis_proj, self.text_proj, self.state_proj, self.action_out, self.backbone):
            init_weights(m)
        for p in (self.cam_embed, self.action_queries):
            nn.init.normal_(p, 0.0, 0.02)
        if cfg.use_cot:
            init_weights(self.code_embed)
            init_weights(self.code_head)
            nn.init.normal_(self.boi, 0.0, 0.02)
            nn.init.normal_(self.eoi, 0.0, 0.02)
            if cfg.subgoal_decoding == "parallel":
                nn.init.normal_(self.code_mask, 0.0, 0.02)
        if cfg.pretrained_backbone:
            hf = load_hf_decoder(cfg.pretrained_backbone, with_lm=False)
            if hf.cfg != cfg.backbone:
                raise ValueError(
                    f"pretrained backbone shape {hf.cfg} differs from policy.backbone {cfg.backbone}; "
                    "copy its sizes into --policy.backbone.*"
                )
            self.backbone.load_state_dict(hf.state_dict())
        if cfg.tokenizer_path:
            tok = FSQAutoencoder.from_pretrained(cfg.tokenizer_path)
            if tok.cfg != cfg.tokenizer:
                raise ValueError(
                    f"tokenizer at {cfg.tokenizer_path} has config {tok.cfg}, but policy.tokenizer is "
                    f"{cfg.tokenizer}; set policy.tokenizer to match (vla-train does this)"
                )
            self.tokenizer.load_state_dict(tok.state_dict())
        if cfg.aux_target_weight > 0:
            # Built after every other module, so the rest initialises exactly as without it.
            self.aux_target_head = nn.Linear(d, 3)
            init_weights(self.aux_target_head)
        if cfg.state_dropout > 0:  # the "no state" token (state dropout); absent at 0, like the aux head
            self.state_null = nn.Parameter(torch.zeros(d))
        self.set_normalization(NormStats.identity(cfg.action_dim, cfg.state_dim))
        self.layout = Layout(
            cfg.text_max_tokens,
            len(cfg.camera_keys) * self.vision.num_patches,
            cfg.tokenizer.num_tokens,
            cfg.chunk_size * cfg.action_dim,
            cfg.use_cot,
            bidirectional_codes=cfg.subgoal_decoding == "parallel",
        )
        self.register_buffer("mask", self.layout.base_mask(), persistent=False)
        # Inference-time switch (not config): capture the one-token decode step in CUDA graphs on CUDA.
        self.cuda_graphs = True
        self._runners: dict[tuple[int, torch.dtype, str], _CodeStep | _CodeLoopGraph] = {}

    # ---- normalization ----

    def set_normalization(self, stats: NormStats) -> None:
        """Install dataset statistics (saved with the checkpoint)."""
        cfg = self.config
        if len(stats.action_q01) != cfg.action_dim or len(stats.state_mean) != cfg.state_dim:
            raise ValueError(
                f"stats are for action_dim={len(stats.action_q01)}, state_dim={len(stats.state_mean)}; "
                f"the policy has {cfg.action_dim}, {cfg.state_dim}"
            )
        dev = self.cam_embed.device
        for name, vals in (
            ("action_q01", stats.action_q01),
            ("action_q99", stats.action_q99),
            ("state_mean", stats.state_mean),
            ("state_std", stats.state_std),
        ):
            self.register_buffer(name, stats_tensor(vals).to(dev))
        if hasattr(self, "aux_target_head"):  # identity until the data's statistics are installed
            mean = stats.target_mean if stats.target_mean is not None else [0.0, 0.0, 0.0]
            std = stats.target_std if stats.target_std is not None else [1.0, 1.0, 1.0]
            if len(mean) != 3:
                raise ValueError(f"target statistics are for {len(mean)} coordinates; target_pos has 3")
            self.register_buffer("target_mean", stats_tensor(mean).to(dev))
            self.register_buffer("target_std", stats_tensor(std).to(dev))

    def norm_stats(self) -> NormStats:
        """The installed statistics."""
        aux = hasattr(self, "aux_target_head")
        return NormStats(
            self.action_q01.tolist(),
            self.action_q99.tolist(),
            self.state_mean.tolist(),
            self.state_std.tolist(),
            target_mean=self.target_mean.tolist() if aux else None,
            target_std=self.target_std.tolist() if aux else None,
        )

    # ---- embedding ----

    def embed_prefix(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        """Embed instruction, state and cameras.

        Returns:
            prefix `(B, prefix_len, d)` and key validity `(B, T)` over the whole sequence.
        """
        cfg = self.config
        state = batch[OBS_STATE]
        b, dev = state.shape[0], state.device
        tasks = batch[TASK]
        if isinstance(tasks, str) or len(tasks) != b:
            raise ValueError(f"batch['task'] must be a list of {b} instruction strings")
        text, text_valid = get_text_encoder(cfg.text_max_tokens)(list(tasks))
        text, text_valid = text.to(dev), text_valid.to(dev)
        imgs = []
        for key in cfg.camera_keys:
            if key not in batch:
                raise KeyError(f"batch has no camera {key!r}; the policy needs {cfg.camera_keys}")
            imgs.append(self.vision_transform(batch[key]))
        cond = None
        if self.vision.cond_dim:  # FiLM: the mean of the instruction's valid token features, per camera image
            w = text_valid.to(text.dtype)[..., None]
            cond = ((text * w).sum(1) / w.sum(1).clamp_min(1.0)).repeat(len(imgs), 1)
        feats = self.vision(torch.cat(imgs, 0), cond)  # (n_cams*B, P, E): one encoder, batched over cameras
        feats = self.vis_proj(feats).view(len(imgs), b, -1, self.cam_embed.shape[1])
        feats = feats + self.cam_embed[:, None, None, :]
        vis = feats.permute(1, 0, 2, 3).reshape(b, -1, feats.shape[-1])  # (B, n_cams*P, d)
        st = self.state_proj((state - self.state_mean) / self.state_std)[:, None]
        p_drop = cfg.state_dropout
        if p_drop >= 1.0:  # a policy that never sees the state (no random draw at inference)
            st = self.state_null.to(st.dtype).expand_as(st)
        elif p_drop > 0 and self.training:
            drop = torch.rand(b, device=dev) < p_drop
            st = torch.where(drop[:, None, None], self.state_null.to(st.dtype).expand_as(st), st)
        prefix = torch.cat([self.text_proj(text).to(vis.dtype), st.to(vis.dtype), vis], 1)
        valid = torch.ones(b, self.layout.total, dtype=torch.bool, device=dev)
        valid[:, : cfg.text_max_tokens] = text_valid
        return prefix, valid

    def subgoal_codes(self, images: Tensor) -> Tensor:
        """Tokenize subgoal frames `(B, 3, H, W)` in [0, 1] into codes `(B, N)` (frozen tokenizer)."""
        s = self.config.tokenizer.image_size
        if images.shape[-2:] != (s, s):
            images = F.interpolate(images, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return self.tokenizer.encode(images.float())

    def _noisy_codes(self, codes: Tensor) -> Tensor:
        """Training input codes: some of each sample's codes replaced by random ones.

        The share is drawn per sample from ``[0, config.subgoal_noise]``; outside training, or at 0, the
        codes are returned as they are.
        """
        p = self.config.subgoal_noise
        if p <= 0 or not self.training:
            return codes
        share = torch.rand(codes.shape[0], 1, device=codes.device) * p
        hit = torch.rand(codes.shape, device=codes.device) < share
        return torch.where(hit, torch.randint_like(codes, self.config.tokenizer.codebook_size), codes)

    def _mask(self, valid: Tensor, rows: slice, end: int) -> Tensor:
        return self.mask[rows, :end][None, None] & valid[:, None, None, :end]  # (B, 1, Tq, Tk)

    def _queries(self, b: int) -> Tensor:
        return self.action_queries[None].expand(b, -1, -1)

    # ---- training ----

    @override
    def forward(self, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """Training loss and its parts; the parts are detached 0-d tensors (no host sync per step)."""
        cfg, lay = self.config, self.layout
        prefix, valid = self.embed_prefix(batch)
        b = prefix.shape[0]
        parts = [prefix]
        if cfg.use_cot:
            if SUBGOAL_IMAGE not in batch:
                raise KeyError(f"CoT training needs batch[{SUBGOAL_IMAGE!r}] (the frame k steps ahead)")
            codes = self.subgoal_codes(batch[SUBGOAL_IMAGE])
            parts += [
                self.boi.expand(b, 1, -1),
                self.code_embed(self._noisy_codes(codes)),
                self.eoi.expand(b, 1, -1),
            ]
        parts.append(self._queries(b))
        x = torch.cat([p.to(prefix.dtype) for p in parts], 1)
        parallel = cfg.use_cot and cfg.subgoal_decoding == "parallel"
        if parallel:
            # Masked-token objective: a second copy of each sample with a random fraction of its codes
            # replaced by [MASK]; actions are trained on the clean copy (what they see at inference).
            ratio = torch.rand(b, 1, device=x.device)
            hidden = torch.rand(b, lay.n_codes, device=x.device) < ratio
            hidden[torch.arange(b), torch.randint(0, lay.n_codes, (b,), device=x.device)] = True
            xm = x.clone()
            blk = slice(lay.codes_start, lay.codes_start + lay.n_codes)
            xm[:, blk] = torch.where(hidden[..., None], self.code_mask.to(x.dtype), x[:, blk])
            x, valid2 = torch.cat([x, xm]), torch.cat([valid, valid])
            h_all = self.backbone(x, self._mask(valid2, slice(None), lay.total))
            h, hm = h_all[:b], h_all[b:]
        else:
            h = self.backbone(x, self._mask(valid, slice(None), lay.total))
        logs: dict[str, Tensor] = {}
        loss = torch.zeros((), device=h.device)
        if cfg.use_cot:
            if parallel:  # each masked position predicts its own code
                logits = self.code_head(hm[:, lay.codes_start : lay.codes_start + lay.n_codes]).float()
                sub_loss = F.cross_entropy(logits[hidden], codes[hidden])
                acc = (logits.argmax(-1) == codes)[hidden].float().mean()
            else:  # next-code prediction: <boi> predicts c1, c_i predicts c_{i+1}
                logits = self.code_head(h[:, lay.boi : lay.boi + lay.n_codes]).float()  # (B, N, V)
                sub_loss = F.cross_entropy(logits.flatten(0, 1), codes.flatten())
                acc = (logits.argmax(-1) == codes).float().mean()
            loss = loss + cfg.subgoal_loss_weight * sub_loss
            logs["subgoal_loss"] = sub_loss.detach()
            logs["subgoal_acc"] = acc.detach()
        target = normalize_actions(batch[ACTION], self.action_q01, self.action_q99)  # (B, h, A)
        weight = torch.ones_like(target)
        if ACTION_IS_PAD in batch:
            weight = weight * (~batch[ACTION_IS_PAD].bool())[..., None].float()
        out = self.action_out(h[:, lay.act_start :]).float()  # (B, h*A, bins or 1)
        if cfg.action_head == "discrete":
            bins = actions_to_bins(target, cfg.num_bins).flatten(1)
            ce = F.cross_entropy(out.transpose(1, 2), bins, reduction="none")  # (B, h*A)
            act_loss = (ce * weight.flatten(1)).sum() / weight.sum().clamp_min(1)
            pred = bins_to_actions(out.argmax(-1), cfg.num_bins).view_as(target)
        else:
            pred = out.squeeze(-1).view_as(target)
            act_loss = ((pred - target).abs() * weight).sum() / weight.sum().clamp_min(1)
        loss = loss + act_loss
        logs["action_loss"] = act_loss.detach()
        logs["action_l1"] = (((pred - target).abs() * weight).sum() / weight.sum().clamp_min(1)).detach()
        if cfg.aux_target_weight > 0:
            if TARGET_POS not in batch:
                raise KeyError(
                    f"aux_target_weight={cfg.aux_target_weight} needs batch[{TARGET_POS!r}] (B, 3); "
                    "add it to the windows folder with `python -m sim.targets --windows=<folder>`"
                )
            pred_t = self.aux_target_head(h[:, lay.prefix_len - 1]).float()  # (B, 3), normalised
            goal = batch[TARGET_POS].float()
            has = ~goal.isnan().any(-1)  # NaN rows carry no target (sim.targets --until_reach_cm)
            goal_t = (goal.nan_to_num(0.0) - self.target_mean) / self.target_std
            per_sample = (pred_t - goal_t).pow(2).mean(-1)
            aux_loss = (per_sample * has).sum() / has.sum().clamp_min(1)
            logs["aux_target_share"] = has.float().mean().detach()
            loss = loss + cfg.aux_target_weight * aux_loss
            logs["aux_target_loss"] = aux_loss.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    @torch.no_grad()
    def predict_target_pos(self, batch: dict[str, Any]) -> Tensor:
        """The auxiliary head's estimate of ``target_pos`` `(B, 3)` in world units (one prefix pass).

        The prefix is causal, so its hidden states are the ones the full training sequence computes.
        """
        if not hasattr(self, "aux_target_head"):
            raise ValueError("this policy has no target head (it was built with aux_target_weight=0)")
        prefix, valid = self.embed_prefix(batch)
        n = self.layout.prefix_len
        h = self.backbone(prefix, self._mask(valid, slice(0, n), n))
        return self.aux_target_head(h[:, -1]).float() * self.target_std + self.target_mean

    # ---- inference ----

    def _decode_actions(self, h_act: Tensor) -> Tensor:
        out = self.action_out(h_act).float()
        b = h_act.shape[0]
        if self.config.action_head == "discrete":
            x = bins_to_actions(out.argmax(-1), self.config.num_bins)
        else:
            x = out.squeeze(-1).clamp(-1, 1)
        return x.view(b, self.config.chunk_size, self.config.action_dim)

    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, Any],
        use_cache: bool = True,
        stage_ms: dict[str, float] | None = None,
        decode: str = "auto",
    ) -> dict[str, Tensor]:
        """Greedy subgoal codes, then the action chunk.

        Args:
            batch: observation batch (no actions needed).
            use_cache: decode with the static KV cache; ``False`` recomputes the full sequence at every
                step (the reference the cache is tested against).
            decode: one-token decode path: ``dynamic`` (keys sliced to the filled length), ``static``
                (position-independent shapes over the whole cache), ``graph`` (the static step captured
                once per batch size in a CUDA graph and replayed), ``auto`` (``graph`` on CUDA when
                ``self.cuda_graphs``, else ``dynamic``).
            stage_ms: if given, filled with wall times (ms, device-synchronised) of ``encoders``,
                ``subgoal`` (code generation) and ``actions`` (the parallel action pass).

        Returns:
            ``actions_norm`` `(B, h, A)` in [-1, 1], ``actions`` raw `(B, h, A)`, and with CoT
            ``codes`` `(B, N)`.
        """
        cfg, lay = self.config, self.layout
        clock = _StageClock(stage_ms, self.cam_embed.device)
        prefix, valid = self.embed_prefix(batch)
        clock.lap("encoders")
        b, dt = prefix.shape[0], prefix.dtype
        res: dict[str, Tensor] = {}
        if not cfg.use_cot:
            x = torch.cat([prefix, self._queries(b).to(dt)], 1)
            h = self.backbone(x, self._mask(valid, slice(None), lay.total))
            act = self._decode_actions(h[:, lay.act_start :])
        elif cfg.subgoal_decoding == "parallel":
            codes_t, act, steps = self._generate_parallel(prefix, valid, use_cache)
            res["codes"] = codes_t
            res["subgoal_steps"] = torch.tensor(steps)
            clock.lap("subgoal")
        elif use_cache:
            mode = decode
            if mode == "auto":
                mode = "graph" if prefix.device.type == "cuda" and self.cuda_graphs else "dynamic"
            runner: _CodeStep | _CodeLoopGraph | None = None
            if mode in ("static", "graph"):
                runner = self._code_runner(b, dt, valid, mode)
                cache = runner.cache
            elif mode == "dynamic":
                cache = self.backbone.allocate_cache(b, lay.total, prefix.device, dt)
            else:
                raise ValueError(f"decode must be auto, dynamic, static or graph, got {decode!r}")
            x = torch.cat([prefix, self.boi.expand(b, 1, -1).to(dt)], 1)
            h = self.backbone.prefill(x, cache, self._mask(valid, slice(0, lay.boi + 1), lay.boi + 1))
            codes = [self.code_head(h[:, -1]).argmax(-1)]
            if isinstance(runner, _CodeLoopGraph):
                codes += list(runner.run(codes[0]).unbind(1))
            for i in range(1, lay.n_codes if not isinstance(runner, _CodeLoopGraph) else 1):
                pos = lay.boi + i
                if runner is not None:
                    codes.append(runner.step(codes[-1], pos))
                    continue
                h = self.backbone.decode(
                    self.code_embed(codes[-1])[:, None].to(dt),
                    cache,
                    pos,
                    self._mask(valid, slice(pos, pos + 1), pos + 1),
                )
                codes.append(self.code_head(h[:, -1]).argmax(-1))
            clock.lap("subgoal")
            pos = lay.boi + lay.n_codes
            x = torch.cat(
                [
                    self.code_embed(codes[-1])[:, None].to(dt),
                    self.eoi.expand(b, 1, -1).to(dt),
                    self._queries(b).to(dt),
                ],
                1,
            )
            h = self.backbone.decode(x, cache, pos, self._mask(valid, slice(pos, lay.total), lay.total))
            act = self._decode_actions(h[:, 2:])
            res["codes"] = torch.stack(codes, 1)
        else:
            seq = torch.cat([prefix, self.boi.expand(b, 1, -1).to(dt)], 1)
            codes = []
            for _ in range(lay.n_codes):
                t = seq.shape[1]
                h = self.backbone(seq, self._mask(valid, slice(0, t), t))
                codes.append(self.code_head(h[:, -1]).argmax(-1))
                seq = torch.cat([seq, self.code_embed(codes[-1])[:, None].to(dt)], 1)
            clock.lap("subgoal")
            seq = torch.cat([seq, self.eoi.expand(b, 1, -1).to(dt), self._queries(b).to(dt)], 1)
            h = self.backbone(seq, self._mask(valid, slice(None), lay.total))
            act = self._decode_actions(h[:, lay.act_start :])
            res["codes"] = torch.stack(codes, 1)
        res["actions_norm"] = act
        res["actions"] = unnormalize_actions(act, self.action_q01, self.action_q99)
        clock.lap("actions")
        return res

    @torch.no_grad()
    def actions_given_codes(self, batch: dict[str, Any], codes: Tensor) -> Tensor:
        """The action chunk `(B, h, A)` in [-1, 1] with the subgoal block set to ``codes`` `(B, N)`.

        One full pass, as in training: with the true codes of the subgoal frame it is what the action
        tokens see in training (teacher forcing); with :meth:`generate`'s codes it equals its actions.
        """
        cfg, lay = self.config, self.layout
        if not cfg.use_cot:
            raise ValueError("actions_given_codes needs a CoT policy (use_cot=True)")
        if codes.shape[1:] != (lay.n_codes,):
            raise ValueError(f"codes must be (B, {lay.n_codes}), got {tuple(codes.shape)}")
        prefix, valid = self.embed_prefix(batch)
        b, dt = prefix.shape[0], prefix.dtype
        parts = [prefix, self.boi.expand(b, 1, -1), self.code_embed(codes), self.eoi.expand(b, 1, -1)]
        x = torch.cat([p.to(dt) for p in parts] + [self._queries(b).to(dt)], 1)
        h = self.backbone(x, self._mask(valid, slice(None), lay.total))
        return self._decode_actions(h[:, lay.act_start :])

    def _generate_parallel(
        self, prefix: Tensor, valid: Tensor, use_cache: bool
    ) -> tuple[Tensor, Tensor, int]:
        """Fast-dLLM-style subgoal decoding, then the action pass.

        All codes start as [MASK]; each step runs the code block (bidirectional) and unmasks every code
        whose top probability exceeds ``parallel_threshold``, and at least the most confident one per
        sample. With ``use_cache`` the prefix KV is computed once and reused by every step (the block is
        recomputed); without it every step recomputes the whole sequence (the reference).

        Returns:
            codes `(B, N)`, normalized actions `(B, h, A)`, number of block passes.
        """
        lay, thr = self.layout, self.config.parallel_threshold
        b, dt, dev = prefix.shape[0], prefix.dtype, prefix.device
        cs, n = lay.codes_start, lay.n_codes
        head = torch.cat([prefix, self.boi.expand(b, 1, -1).to(dt)], 1)  # positions [0, cs)
        cache = None
        if use_cache:
            cache = self.backbone.allocate_cache(b, lay.total, dev, dt)
            self.backbone.prefill(head, cache, self._mask(valid, slice(0, cs), cs))
        codes = torch.zeros(b, n, dtype=torch.long, device=dev)
        known = torch.zeros(b, n, dtype=torch.bool, device=dev)
        rows = torch.arange(b, device=dev)
        steps = 0
        while not bool(known.all()):
            blk = torch.where(known[..., None], self.code_embed(codes).to(dt), self.code_mask.to(dt))
            if cache is not None:
                h = self.backbone.decode(blk, cache, cs, self._mask(valid, slice(cs, cs + n), cs + n))
            else:
                h = self.backbone(torch.cat([head, blk], 1), self._mask(valid, slice(0, cs + n), cs + n))[
                    :, cs:
                ]
            conf, pred = self.code_head(h).float().softmax(-1).max(-1)  # (B, N)
            conf = conf.masked_fill(known, -1.0)
            pick = (conf > thr) & ~known
            best = conf.argmax(-1)
            pick[rows, best] |= ~known[rows, best]
            codes = torch.where(pick, pred, codes)
            known |= pick
            steps += 1
        tail = torch.cat(
            [self.code_embed(codes).to(dt), self.eoi.expand(b, 1, -1).to(dt), self._queries(b).to(dt)], 1
        )
        if cache is not None:
            h = self.backbone.decode(tail, cache, cs, self._mask(valid, slice(cs, lay.total), lay.total))
        else:
            h = self.backbone(torch.cat([head, tail], 1), self._mask(valid, slice(None), lay.total))[:, cs:]
        return codes, self._decode_actions(h[:, n + 1 :]), steps

    def _code_runner(self, b: int, dt: torch.dtype, valid: Tensor, mode: str) -> _CodeStep | _CodeLoopGraph:
        key = (b, dt, mode)
        runner = self._runners.get(key)
        if runner is None:
            runner = _CodeLoopGraph(self, b, dt) if mode == "graph" else _CodeStep(self, b, dt)
            self._runners[key] = runner
        runner.valid.copy_(valid)
        return runner

    @override
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> CotVlaPolicy:
        self._runners = {}  # captured graphs and caches point at the old tensors
        return super()._apply(fn, *args, **kwargs)

    @override
    def predict_action_chunk(self, batch: dict[str, Any]) -> Tensor:
        return self.generate(batch)["actions"]

    @torch.no_grad()
    def decode_subgoal(self, codes: Tensor) -> Tensor:
        """Codes `(B, N)` -> subgoal images `(B, 3, S, S)` in [0, 1]."""
        return self.tokenizer.decode(codes)

    # ---- checkpoint files ----

    @override
    def config_to_save(self) -> CotVlaConfig:
        # The tokenizer and backbone weights live in the checkpoint itself, not at the build-time paths.
        return dataclasses.replace(self.config, tokenizer_path=None, pretrained_backbone=None)

    @override
    def state_dict_to_save(self) -> dict[str, Tensor]:
        return {k: v for k, v in super().state_dict_to_save().items() if not k.startswith("tokenizer.")}

    @override
    def optional_key(self, key: str) -> bool:
        return key.startswith("tokenizer.")

    @override
    def extra_files(self, path: Path) -> None:
        self.tokenizer.save_pretrained(path / TOKENIZER_DIR)
        import json

        atomic_write_text(path / STATS_FILE, json.dumps(self.norm_stats().to_dict(), indent=2))

    @override
    def load_checkpoint_files(self, path: Path) -> None:
        import json

        if not (path / STATS_FILE).is_file() or not (path / TOKENIZER_DIR).is_dir():
            raise FileNotFoundError(f"checkpoint {path} lacks {STATS_FILE} or {TOKENIZER_DIR}/")
        self.set_normalization(NormStats(**json.loads((path / STATS_FILE).read_text())))
        super().load_checkpoint_files(path)
        tok = FSQAutoencoder.from_pretrained(path / TOKENIZER_DIR)
        if tok.cfg != self.config.tokenizer:
            raise ValueError(
                f"tokenizer in {path} ({tok.cfg}) differs from the config ({self.config.tokenizer})"
            )
        self.tokenizer.load_state_dict(tok.state_dict())

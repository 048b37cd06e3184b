"""Compact Llama/Qwen2-style decoder: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention.

The module names follow Hugging Face's ``LlamaModel`` / ``Qwen2Model`` (``layers.{i}.self_attn.q_proj``
and so on), so a Hugging Face checkpoint loads with a plain prefix strip (:func:`load_hf_decoder`).
Attention goes through :func:`kernels.attention` only, in the ``[B, T, H, D]`` layout.

Inference uses a static, preallocated KV cache (:class:`KVCache`) with two paths: ``prefill`` (many
tokens at once, written into the cache) and ``decode`` (a few new tokens attending to the cache).
Both take an explicit boolean mask, so the hybrid CoT-VLA mask and padding masks apply unchanged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from kernels import attention
from kernels.attention import SparsePrefillConfig


@dataclass
class DecoderConfig:
    """Shape of the decoder.

    Args:
        hidden_size: model width.
        num_layers: number of decoder blocks.
        num_heads: query heads.
        num_kv_heads: key/value heads (GQA); must divide ``num_heads``.
        intermediate_size: SwiGLU hidden width.
        rope_theta: RoPE base.
        rms_norm_eps: RMSNorm epsilon.
        qkv_bias: bias on q/k/v projections (Qwen2 has it, Llama does not).
        head_dim: per-head width; ``None`` means ``hidden_size // num_heads``.
        vocab_size: token vocabulary for the language-model wrapper (0 = embeddings only, as in the VLA).
        tie_word_embeddings: share the LM head with the input embedding.
        sparse_prefill: how long causal prefills are computed (``kernels.attention.SparsePrefillConfig``):
            dense by default; ``method: xattention`` with ``min_len`` routes prefills at least that long
            to the block-sparse kernels. Decode steps and masked (hybrid) sequences stay dense.
    """

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    head_dim: int | None = None
    vocab_size: int = 0
    tie_word_embeddings: bool = False
    sparse_prefill: SparsePrefillConfig = field(default_factory=SparsePrefillConfig)

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.dim_per_head % 2 != 0:
            raise ValueError(f"head_dim must be even for RoPE, got {self.dim_per_head}")

    @property
    def dim_per_head(self) -> int:
        """Per-head width."""
        return self.head_dim or self.hidden_size // self.num_heads


class RMSNorm(nn.Module):
    """Root-mean-square layer norm (computed in fp32, as in Llama)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise the last dimension."""
        dtype = x.dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


def rope_cos_sin(positions: Tensor, dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Rotary tables for ``positions`` (`(T,)` or `(B, T)`), half-split layout (HF ``rotate_half``).

    Returns:
        cos, sin of shape `(..., T, 1, dim)` ready to broadcast over heads.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    freqs = positions.float()[..., None] * inv_freq  # (..., T, dim/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (..., T, dim)
    return emb.cos().to(dtype)[..., None, :], emb.sin().to(dtype)[..., None, :]


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate `(B, T, H, D)` queries or keys."""
    return x * cos + _rotate_half(x) * sin


class KVCache(nn.Module):
    """Static per-layer key/value buffers `(B, max_len, Hkv, D)` plus a key-validity mask `(B, max_len)`."""

    def __init__(
        self,
        num_layers: int,
        batch: int,
        max_len: int,
        num_kv_heads: int,
        head_dim: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        shape = (num_layers, batch, max_len, num_kv_heads, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.max_len = max_len

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `(B, T, Hkv, D)` at ``[start, start+T)`` and return keys/values ``[0, start+T)``."""
        end = start + k.shape[1]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: writing up to {end} > max_len {self.max_len}")
        self.k[layer, :, start:end] = k
        self.v[layer, :, start:end] = v
        return self.k[layer, :, :end], self.v[layer, :, :end]

    def write_at(self, layer: int, positions: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `(B, T, Hkv, D)` at tensor ``positions`` `(T,)` and return the *whole* buffers.

        Shapes never depend on the position, so a decode step built on it can be captured once in a
        CUDA graph and replayed (the caller masks the positions not yet written).
        """
        self.k[layer].index_copy_(1, positions, k.to(self.k.dtype))
        self.v[layer].index_copy_(1, positions, v.to(self.v.dtype))
        return self.k[layer], self.v[layer]


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE; the score/softmax step is :func:`kernels.attention`."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        d, hd = cfg.hidden_size, cfg.dim_per_head
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        self.sparse = cfg.sparse_prefill
        self.capture: list[tuple[Tensor, Tensor]] | None = None

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int | Tensor = 0,
    ) -> Tensor:
        """Attend from `(B, T, d)` tokens; with a cache, keys are ``[0, start+T)``.

        ``start`` may be a `(T,)` tensor of positions: keys are then the whole static cache.
        """
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim)  # (B, T, Hkv, D)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            if isinstance(start, Tensor):
                k, v = cache.write_at(layer, start, k, v)
            else:
                k, v = cache.write(layer, start, k, v)
        if self.capture is not None:  # calibration: keep this layer's post-RoPE queries and keys
            self.capture.append((q.detach(), k.detach()))
        out = attention(q, k, v, causal=mask is None, attn_mask=mask, sparse=self.sparse, layer=layer)
        return self.o_proj(out.reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """Apply ``down(silu(gate(x)) * up(x))``."""
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
        start: int | Tensor = 0,
    ) -> Tensor:
        """Run one block."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer, start)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Stack of decoder blocks over input embeddings, with optional token embedding and LM head.

    ``forward`` runs a whole sequence (training or full recomputation); ``prefill`` and ``decode``
    run against a :class:`KVCache` made by ``allocate_cache``.
    """

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.vocab_size > 0:
            self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            if cfg.tie_word_embeddings:
                self.lm_head.weight = self.embed_tokens.weight

    def allocate_cache(
        self, batch: int, max_len: int, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> KVCache:
        """Preallocate a static KV cache for ``batch`` sequences of up to ``max_len`` tokens."""
        c = self.cfg
        return KVCache(c.num_layers, batch, max_len, c.num_kv_heads, c.dim_per_head, device, dtype)

    def _run(self, x: Tensor, start: int, mask: Tensor | None, cache: KVCache | None) -> Tensor:
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        cos, sin = rope_cos_sin(positions, self.cfg.dim_per_head, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i, start)
        return self.norm(x)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Full-sequence pass.

        Args:
            x: `(B, T, d)` input embeddings.
            mask: boolean `(B or 1, 1, T, T)`, True = may attend; ``None`` = causal.

        Returns:
            `(B, T, d)` final hidden states (after the last norm).
        """
        return self._run(x, 0, mask, None)

    def prefill(self, x: Tensor, cache: KVCache, mask: Tensor | None = None) -> Tensor:
        """Write the first `T` tokens into ``cache`` and return their hidden states."""
        return self._run(x, 0, mask, cache)

    def decode(self, x: Tensor, cache: KVCache, start: int, mask: Tensor | None = None) -> Tensor:
        """Run new tokens at positions ``[start, start+T)`` against the cache.

        Args:
            x: `(B, T, d)` new token embeddings (T = 1 for one-token decoding).
            cache: the cache filled up to ``start``.
            start: position of the first new token.
            mask: boolean `(B or 1, 1, T, start+T)`; ``None`` = causal.
        """
        return self._run(x, start, mask, cache)

    def decode_static(self, x: Tensor, cache: KVCache, positions: Tensor, mask: Tensor) -> Tensor:
        """Decode with position-independent shapes (for CUDA-graph capture).

        Args:
            x: `(B, T, d)` new token embeddings.
            cache: the static cache; keys are all ``max_len`` slots.
            positions: `(T,)` long tensor of the new tokens' positions (on the cache's device).
            mask: boolean `(B or 1, 1, T, max_len)`; it must hide every slot not yet written.
        """
        cos, sin = rope_cos_sin(positions, self.cfg.dim_per_head, self.cfg.rope_theta, x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, cache, i, positions)
        return self.norm(x)

    def set_sparse_prefill(self, sparse: SparsePrefillConfig) -> None:
        """Compute every layer's long prefills with ``sparse`` from now on (e.g. a calibrated plan)."""
        self.cfg.sparse_prefill = sparse
        for layer in self.layers:
            layer.self_attn.sparse = sparse

    @torch.no_grad()
    def capture_qk(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """One full-sequence pass over `(B, T, d)` embeddings; each layer's post-RoPE ``(q, k)``.

        Returns:
            One ``(q (B, T, Hq, D), k (B, T, Hkv, D))`` per layer, for calibration
            (``kernels.streaming_heads.calibrate_sparse_prefill``).
        """
        attns = [layer.self_attn for layer in self.layers]
        for a in attns:
            a.capture = []
        try:
            self.forward(x)
            return [a.capture[0] for a in attns]
        finally:
            for a in attns:
                a.capture = None

    def logits(self, input_ids: Tensor) -> Tensor:
        """Language-model logits `(B, T, vocab)` for token ids (causal); needs ``vocab_size > 0``."""
        if self.cfg.vocab_size <= 0:
            raise ValueError("this decoder has no token embedding; build it with vocab_size > 0")
        return self.lm_head(self.forward(self.embed_tokens(input_ids)))


def decoder_config_from_hf(hf: dict) -> DecoderConfig:
    """Translate a Hugging Face Llama/Qwen2 ``config.json`` dict into a :class:`DecoderConfig`."""
    model_type = hf.get("model_type", "")
    if model_type not in ("llama", "qwen2"):
        raise ValueError(f"unsupported model_type {model_type!r}; Llama- and Qwen2-style checkpoints load")
    if hf.get("rope_scaling"):
        raise ValueError("rope_scaling is not supported; use a checkpoint with plain RoPE")
    hidden = hf["hidden_size"]
    heads = hf["num_attention_heads"]
    return DecoderConfig(
        hidden_size=hidden,
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads", heads),
        intermediate_size=hf["intermediate_size"],
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=bool(hf.get("attention_bias", model_type == "qwen2")),
        head_dim=hf.get("head_dim") if hf.get("head_dim") not in (None, hidden // heads) else None,
        vocab_size=hf["vocab_size"],
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def hf_to_decoder_state_dict(sd: dict[str, Tensor], *, with_lm: bool = True) -> dict[str, Tensor]:
    """Rename Hugging Face ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` keys to :class:`Decoder` keys."""
    out: dict[str, Tensor] = {}
    for key, val in sd.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = key.removeprefix("model.")
        if name.startswith(("embed_tokens", "lm_head")) and not with_lm:
            continue
        out[name] = val
    return out


def load_hf_decoder(path: str | Path, *, with_lm: bool = True, dtype: torch.dtype = torch.float32) -> Decoder:
    """Build a :class:`Decoder` from a local Hugging Face checkpoint folder (``config.json`` + safetensors).

    Args:
        path: folder holding ``config.json`` and ``model.safetensors`` (or sharded ``*.safetensors``).
        with_lm: keep the token embedding and LM head; ``False`` keeps only the blocks and final norm.
        dtype: parameter dtype.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json; pass a Hugging Face checkpoint folder")
    cfg = decoder_config_from_hf(json.loads((path / "config.json").read_text()))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path} has no *.safetensors weights (pickle .bin files are not loaded)")
    sd: dict[str, Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    if not with_lm:
        cfg = DecoderConfig(**{**cfg.__dict__, "vocab_size": 0, "tie_word_embeddings": False})
    model = Decoder(cfg)
    mapped = hf_to_decoder_state_dict(sd, with_lm=with_lm)
    if with_lm and cfg.tie_word_embeddings and "lm_head.weight" not in mapped:
        mapped["lm_head.weight"] = mapped["embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise ValueError(f"weight names do not match: missing={missing[:5]} unexpected={unexpected[:5]}")
    return model.to(dtype)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Llama-style init: normal(0, std) linears/embeddings, zero biases; scaled residual projections."""
    for name, p in module.named_parameters():
        if p.dim() >= 2:
            s = std / math.sqrt(2) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
            nn.init.normal_(p, 0.0, s)
        elif name.endswith("bias"):
            nn.init.zeros_(p)

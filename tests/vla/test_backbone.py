"""Decoder backbone: HF Llama/Qwen2 logit parity (tiny random models saved locally); KV cache == full pass."""

from __future__ import annotations

import pytest
import torch

from vla.backbones.decoder import Decoder, DecoderConfig, load_hf_decoder


def _hf_tiny(kind: str, path):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, attention_bias=False))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
        with torch.no_grad():  # random init leaves q/k/v biases at zero; make them matter
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    model.eval().save_pretrained(path, safe_serialization=True)
    return model


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hf_parity_logits(kind, tmp_path):
    hf = _hf_tiny(kind, tmp_path)
    ours = load_hf_decoder(tmp_path).eval()
    assert ours.cfg.qkv_bias == (kind == "qwen2")
    ids = torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        out = ours.logits(ids)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_hf_load_rejects_pickle_only_and_wrong_type(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ValueError, match="model_type"):
        load_hf_decoder(tmp_path)


def test_prefill_decode_equals_full_forward():
    torch.manual_seed(0)
    cfg = DecoderConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=96)
    model = Decoder(cfg).eval()
    x = torch.randn(2, 20, 64)
    with torch.no_grad():
        full = model(x)
        cache = model.allocate_cache(2, 20, "cpu")
        h0 = model.prefill(x[:, :12], cache)
        steps = [model.decode(x[:, t : t + 1], cache, t) for t in range(12, 16)]
        tail = model.decode(x[:, 16:], cache, 16)  # several tokens at once (causal inside)
    torch.testing.assert_close(torch.cat([h0, *steps, tail], 1), full, atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_an_error():
    model = Decoder(
        DecoderConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32)
    )
    cache = model.allocate_cache(1, 4, "cpu")
    with pytest.raises(ValueError, match="overflow"):
        model.prefill(torch.randn(1, 5, 32), cache)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        DecoderConfig(num_heads=4, num_kv_heads=3)

"""CoT-VLA model: presets, loss/gradients, hybrid mask, KV-cache decoding, checkpoints, inference contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vla
from perception import ViTEncoderConfig
from tests.utils import require_cuda
from vla.configs import CotVlaConfig, PolicyConfig, get_policy_config_class
from vla.policies.cot_vla.modeling_cot_vla import Layout
from vla.tokenizer.fsq import FSQ, FSQAutoencoder, FSQConfig

VARIANTS = {
    "cot-discrete": {},
    "cot-continuous": {"action_head": "continuous"},
    "nocot-discrete": {"use_cot": False},
    "nocot-continuous": {"use_cot": False, "action_head": "continuous"},
    "cot-parallel": {"subgoal_decoding": "parallel"},
    # FiLM: the pooled instruction conditions the vision encoder (384 = the MiniLM feature width)
    "cot-film": {
        "vision": ViTEncoderConfig(
            image_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2, film_dim=384
        )
    },
}


def _obs(seed: int = 0, task: str = "put the red cube on the plate") -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation.images.agentview": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8),
        "observation.state": rng.standard_normal(8).astype(np.float32),
        "task": task,
    }


@pytest.mark.parametrize("name", list(PolicyConfig.get_known_choices()))
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_registry_tiny_builds_finite_loss_and_grads(name, variant):
    torch.manual_seed(0)
    cfg = get_policy_config_class(name).tiny(**VARIANTS[variant])
    policy = cfg.build()
    loss, logs = policy(cfg.fake_batch(2))
    assert torch.isfinite(loss)
    assert loss.item() > 0
    assert ("subgoal_loss" in logs) == cfg.use_cot
    loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if g is None
    ]
    assert grads["action_queries"].abs().sum() > 0
    assert not any(p.requires_grad for p in policy.tokenizer.parameters())
    assert policy.predict_action_chunk(cfg.fake_batch(2)).shape == (2, cfg.chunk_size, cfg.action_dim)


@pytest.mark.parametrize("use_cot", [True, False])
def test_training_logs_are_detached_tensors_that_match_the_loss(use_cot):
    # the training loop sums them on the device and reads them only when a log line is due
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny(use_cot=use_cot)
    loss, logs = cfg.build()(cfg.fake_batch(2))
    for k, v in logs.items():
        assert torch.is_tensor(v), k
        assert v.dim() == 0, k
        assert not v.requires_grad, k
    assert float(logs["loss"]) == pytest.approx(loss.item())
    parts = float(logs["action_loss"]) + (
        cfg.subgoal_loss_weight * float(logs["subgoal_loss"]) if use_cot else 0
    )
    assert float(logs["loss"]) == pytest.approx(parts, rel=1e-5)


def test_unknown_policy_type_suggests():
    with pytest.raises(ValueError, match="did you mean 'cot_vla'"):
        get_policy_config_class("cot_vlaa")


def test_config_validation():
    with pytest.raises(ValueError, match="n_action_steps"):
        CotVlaConfig.tiny(n_action_steps=11)
    with pytest.raises(ValueError, match="action_head"):
        CotVlaConfig.tiny(action_head="diffusion")


def test_hybrid_mask_structure():
    lay = Layout(n_text=3, n_vis=4, n_codes=5, n_act=6, use_cot=True)
    m = lay.base_mask()
    a = lay.act_start
    assert m[a:, a:].all(), "action tokens must see each other (both directions)"
    assert m[a:, :a].all(), "action tokens see the whole prefix and the subgoal"
    assert not m[:a, a:].any(), "nothing before the actions sees an action token"
    codes = slice(lay.codes_start, lay.codes_start + lay.n_codes)
    sub = m[codes, codes]
    assert torch.equal(sub, torch.ones_like(sub).tril()), "subgoal codes are strictly causal"
    assert not m[lay.codes_start, lay.codes_start + 1 :].any(), "a subgoal token never sees a later one"
    nocot = Layout(3, 4, 5, 6, use_cot=False)
    assert nocot.total == 3 + 1 + 4 + 6
    assert nocot.act_start == nocot.prefix_len


def test_mask_in_the_model_blocks_future_subgoal_information():
    """Changing a later subgoal code must not change the hidden state at earlier positions."""
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny()
    policy = cfg.build().eval()
    lay = policy.layout
    batch = cfg.fake_batch(1)
    prefix, valid = policy.embed_prefix(batch)
    codes = torch.randint(0, cfg.tokenizer.codebook_size, (1, lay.n_codes))

    def run(c):
        x = torch.cat(
            [
                prefix,
                policy.boi.expand(1, 1, -1),
                policy.code_embed(c),
                policy.eoi.expand(1, 1, -1),
                policy._queries(1),
            ],
            1,
        )
        return policy.backbone(x, policy._mask(valid, slice(None), lay.total))

    c2 = codes.clone()
    c2[0, 10] = (c2[0, 10] + 1) % cfg.tokenizer.codebook_size
    with torch.no_grad():
        h1, h2 = run(codes), run(c2)
    pos = lay.codes_start + 10
    torch.testing.assert_close(h1[:, :pos], h2[:, :pos])
    assert (h1[:, pos:] - h2[:, pos:]).abs().amax() > 1e-4  # later tokens, actions included, do see it
    q = policy._queries(1).clone()
    with torch.no_grad():  # actions see each other: perturbing one action query changes the others
        x = torch.cat(
            [prefix, policy.boi.expand(1, 1, -1), policy.code_embed(codes), policy.eoi.expand(1, 1, -1)], 1
        )
        ha = policy.backbone(torch.cat([x, q], 1), policy._mask(valid, slice(None), lay.total))
        q[0, -1] += 1.0
        hb = policy.backbone(torch.cat([x, q], 1), policy._mask(valid, slice(None), lay.total))
    assert (ha[:, lay.act_start] - hb[:, lay.act_start]).abs().amax() > 1e-4
    torch.testing.assert_close(ha[:, : lay.act_start], hb[:, : lay.act_start])


@pytest.mark.parametrize("head", ["discrete", "continuous"])
def test_kv_cache_decoding_equals_full_recomputation(head):
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny(action_head=head)
    policy = cfg.build().eval()
    batch = cfg.fake_batch(2)
    fast = policy.generate(batch, use_cache=True)
    slow = policy.generate(batch, use_cache=False)
    assert torch.equal(fast["codes"], slow["codes"])
    assert len(set(fast["codes"].flatten().tolist())) > 1  # random model, non-degenerate decode
    torch.testing.assert_close(fast["actions"], slow["actions"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["cot-discrete", "nocot-continuous", "cot-film"])
def test_save_load_identical_outputs(variant, tmp_path):
    torch.manual_seed(0)
    ckpt = vla.make_tiny_checkpoint(tmp_path / "ckpt", seed=3, **VARIANTS[variant])
    files = {p.name for p in Path(ckpt).iterdir()}
    assert {"config.yaml", "model.safetensors", "normalization.json", "metadata.json", "tokenizer"} <= files
    assert not list(Path(ckpt).rglob("*.pt"))
    assert not list(Path(ckpt).rglob("*.pkl"))
    a, b = vla.load_policy(ckpt), vla.load_policy(ckpt)
    obs = _obs(1)
    ra, rb = a.infer(obs), b.infer(obs)
    np.testing.assert_array_equal(ra["actions"], rb["actions"])
    ckpt2 = a.save_pretrained(tmp_path / "ckpt2")
    rc = vla.load_policy(ckpt2).infer(obs)
    np.testing.assert_array_equal(ra["actions"], rc["actions"])
    if VARIANTS[variant].get("use_cot", True):
        np.testing.assert_array_equal(ra["subgoal_image"], rc["subgoal_image"])
    # a different seed gives a different model
    other = vla.load_policy(vla.make_tiny_checkpoint(tmp_path / "other", seed=4, **VARIANTS[variant]))
    assert not np.array_equal(other.infer(obs)["actions"], ra["actions"])


def test_inference_contract_and_batching(tmp_path):
    pol = vla.load_policy(vla.make_tiny_checkpoint(tmp_path / "c"))
    md = pol.metadata
    for key in (
        "model_id",
        "chunk_size",
        "n_action_steps",
        "control_hz",
        "camera_keys",
        "image_size",
        "state_dim",
        "action_dim",
        "action_low",
        "action_high",
        "gripper_convention",
    ):
        assert key in md
    assert md["control_hz"] == 20
    assert md["chunk_size"] == 10
    assert md["action_dim"] == 7
    assert json.loads((tmp_path / "c" / "metadata.json").read_text()) == json.loads(json.dumps(md))
    obs = [
        _obs(i, t)
        for i, t in enumerate(["put the red cube on the plate", "open the drawer", "push the plate"])
    ]
    singles = [pol.infer(o) for o in obs]
    batched = pol.infer_batch(obs)
    for s, b in zip(singles, batched, strict=True):
        assert b["actions"].shape == (10, 7)
        assert b["actions"].dtype == np.float32
        assert b["subgoal_image"].shape == (32, 32, 3)
        assert b["subgoal_image"].dtype == np.uint8
        np.testing.assert_allclose(b["actions"], s["actions"], atol=1e-2)
    assert np.all(np.abs(batched[0]["actions"]) <= 1)
    bad = dict(obs[0])
    bad["observation.state"] = np.zeros(7, np.float32)
    with pytest.raises(ValueError, match=r"observation.state.*\(8,\)"):
        pol.infer(bad)
    with pytest.raises(KeyError, match="wrist"):
        pol.infer({k: v for k, v in obs[0].items() if k != "observation.images.wrist"})
    bad = dict(obs[0], **{"observation.images.agentview": np.zeros((8, 8, 3), np.float32)})
    with pytest.raises(ValueError, match="uint8"):
        pol.infer(bad)


def test_fsq_code_roundtrip_and_sizes():
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5])
    q = fsq.quantize(torch.randn(1000, 4) * 3)
    codes = fsq.codes_from_quantized(q)
    assert codes.min() >= 0
    assert codes.max() < 1000
    assert len(codes.unique()) > 100
    torch.testing.assert_close(fsq.quantized_from_codes(codes), q)
    assert FSQConfig(image_size=64, downsample=8, channels=[8, 8, 8, 8]).num_tokens == 64
    assert FSQConfig(image_size=128, downsample=8, channels=[8, 8, 8, 8]).num_tokens == 256
    ae = FSQAutoencoder(FSQConfig(image_size=32, downsample=8, levels=[5, 5, 5], channels=[8, 8, 8, 8]))
    img = torch.rand(2, 3, 32, 32)
    codes = ae.encode(img)
    assert codes.shape == (2, 16)
    assert ae.decode(codes).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="32, 32"):
        ae.encode(torch.rand(2, 3, 16, 16))


def test_import_vla_is_light():
    code = "import sys, vla; assert 'torch' not in sys.modules, 'vla import pulled torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_text_encoder_paraphrase_cache_roundtrip(tmp_path):
    from vla.language import TextEncoder

    enc = TextEncoder(12)
    feats, valid = enc(
        ["put the red cube on the plate", "place the red block onto the plate", "open the drawer"]
    )
    assert feats.shape == (3, 12, 384)
    assert valid[:, 0].all()
    assert not valid.all()  # short instructions are padded
    sims = feats[:, 0] @ feats[:, 0].T  # sentence embeddings (normalised)
    assert sims[0, 1] > sims[0, 2] + 0.1  # a paraphrase lands closer than a different task
    enc.save_cache(tmp_path / "text.safetensors")
    other = TextEncoder(12)
    assert other.load_cache(tmp_path / "text.safetensors") == 3
    f2, v2 = other(["open the drawer"])
    assert other.model is None  # served from the preloaded cache, MiniLM never loaded
    torch.testing.assert_close(f2[0], feats[2])
    assert torch.equal(v2[0], valid[2])
    with pytest.raises(ValueError, match="max_tokens"):
        TextEncoder(16).load_cache(tmp_path / "text.safetensors")


def test_text_cache_env_preloads_shared_encoders(tmp_path, monkeypatch):
    """$VLA_TEXT_CACHE: the shared encoder answers from the file and never loads MiniLM."""
    from vla import language

    enc = language.TextEncoder(12)
    feats, _ = enc(["stack the red cube on the blue cube"])
    enc.save_cache(tmp_path / "text.safetensors")
    language.TextEncoder(7)(["stack the red cube on the blue cube"])
    language.TextEncoder(7).save_cache(tmp_path / "other.safetensors")  # empty, another max_tokens
    monkeypatch.setenv(
        language.TEXT_CACHE_ENV, f"{tmp_path / 'other.safetensors'}:{tmp_path / 'text.safetensors'}"
    )
    language.get_text_encoder.cache_clear()
    try:
        shared = language.get_text_encoder(12)
        f2, _ = shared(["stack the red cube on the blue cube"])
        assert shared.model is None
        torch.testing.assert_close(f2, feats)
        monkeypatch.setenv(language.TEXT_CACHE_ENV, str(tmp_path / "missing.safetensors"))
        language.get_text_encoder.cache_clear()
        with pytest.raises(FileNotFoundError, match="VLA_TEXT_CACHE"):
            language.get_text_encoder(12)
    finally:
        language.get_text_encoder.cache_clear()


def test_infer_reports_stage_timings(tmp_path):
    pol = vla.load_policy(vla.make_tiny_checkpoint(tmp_path / "c"))
    pol.infer(_obs(0))
    t = pol.last_timing
    for key in ("infer_ms", "encoders_ms", "subgoal_ms", "actions_ms", "subgoal_image_ms"):
        assert t[key] >= 0, t
    assert t["infer_ms"] >= t["encoders_ms"] + t["subgoal_ms"] + t["actions_ms"]
    outs, timing = pol.infer_batch_timed([_obs(1), _obs(2)])
    assert len(outs) == 2
    assert timing["batch"] == 2
    assert timing is not t
    warm = pol.warmup((1, 3))
    assert set(warm) == {"warmup_ms_b1", "warmup_ms_b3"}


def test_static_decode_path_equals_dynamic():
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny()
    policy = cfg.build().eval()
    batch = cfg.fake_batch(3)
    dyn = policy.generate(batch, decode="dynamic")
    sta = policy.generate(batch, decode="static")
    assert torch.equal(dyn["codes"], sta["codes"])
    torch.testing.assert_close(dyn["actions"], sta["actions"], atol=1e-5, rtol=1e-5)
    again = policy.generate(cfg.fake_batch(3, seed=1), decode="static")  # reused runner, new inputs
    ref = policy.generate(cfg.fake_batch(3, seed=1), decode="dynamic")
    assert torch.equal(again["codes"], ref["codes"])
    with pytest.raises(ValueError, match="CUDA"):
        policy.generate(batch, decode="graph")


@pytest.mark.gpu
@require_cuda
def test_cuda_graph_decode_equals_dynamic():
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny()
    policy = cfg.build().cuda().eval()
    for seed in (0, 1):
        batch = {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in cfg.fake_batch(2, seed=seed).items()}
        g = policy.generate(batch, decode="graph")
        d = policy.generate(batch, decode="dynamic")
        assert torch.equal(g["codes"], d["codes"])
        torch.testing.assert_close(g["actions"], d["actions"], atol=1e-4, rtol=1e-4)


def test_parallel_layout_mask():
    lay = Layout(n_text=3, n_vis=4, n_codes=5, n_act=6, use_cot=True, bidirectional_codes=True)
    m = lay.base_mask()
    c = slice(lay.codes_start, lay.codes_start + lay.n_codes)
    assert m[c, c].all(), "parallel decoding: codes see each other"
    assert not m[: lay.codes_start, c].any(), "the prefix never sees the subgoal block"
    assert m[lay.act_start :, c].all()


@pytest.mark.parametrize("threshold", [0.0, 0.9, 1.0])
def test_parallel_decoding_cache_equals_recompute(threshold):
    torch.manual_seed(0)
    cfg = CotVlaConfig.tiny(subgoal_decoding="parallel", parallel_threshold=threshold)
    policy = cfg.build().eval()
    batch = cfg.fake_batch(2)
    fast = policy.generate(batch, use_cache=True)
    slow = policy.generate(batch, use_cache=False)
    assert torch.equal(fast["codes"], slow["codes"])
    assert int(fast["subgoal_steps"]) == int(slow["subgoal_steps"])
    torch.testing.assert_close(fast["actions"], slow["actions"], atol=1e-5, rtol=1e-5)
    steps = int(fast["subgoal_steps"])
    n = policy.layout.n_codes
    if threshold == 0.0:
        assert steps == 1  # everything above threshold: one pass
    elif threshold == 1.0:
        assert steps == n  # nothing above threshold: exactly one code per pass
    else:
        assert 1 <= steps <= n


def test_film_makes_the_visual_tokens_depend_on_the_instruction():
    torch.manual_seed(0)
    cfg = get_policy_config_class("cot_vla").tiny(**VARIANTS["cot-film"])
    policy = cfg.build()
    for lin in policy.vision.film:  # trained FiLM weights are nonzero; zero-init starts as identity
        torch.nn.init.normal_(lin.weight, std=0.05)
    batch = cfg.fake_batch(1)
    lay = policy.layout
    vis = slice(lay.n_text + 1, lay.n_text + 1 + lay.n_vis)

    def visual_tokens(task):
        prefix, _ = policy.embed_prefix({**batch, "task": [task]})
        return prefix[:, vis]

    red, green = (
        visual_tokens("put the red cube on the plate"),
        visual_tokens("put the green cube on the plate"),
    )
    assert (red - green).abs().amax() > 1e-4
    plain = get_policy_config_class("cot_vla").tiny().build()
    p1, _ = plain.embed_prefix({**batch, "task": ["put the red cube on the plate"]})
    p2, _ = plain.embed_prefix({**batch, "task": ["put the green cube on the plate"]})
    torch.testing.assert_close(
        p1[:, vis], p2[:, vis]
    )  # without FiLM the visual tokens ignore the instruction
    with pytest.raises(ValueError, match="film_dim=384"):
        get_policy_config_class("cot_vla").tiny(
            vision=ViTEncoderConfig(
                image_size=32, patch_size=8, embed_dim=48, depth=1, num_heads=2, film_dim=7
            )
        ).build()

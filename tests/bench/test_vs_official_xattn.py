"""CPU checks of bench/vs_official_xattn.py, no official code: inputs, capture, rows, headline, JSON."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import vs_official_xattn as vs

T, H, D, BS = 512, 2, 64, 128


def _cfg(tmp_path, **kw):
    base = dict(
        lengths=str(T),
        heads=H,
        head_dim=D,
        strides="16",
        inputs="peaked",
        variants="official_shipped,ours",
        device="cpu",
        impl="reference",
        dtype="float32",
        reps=1,
        warmup=0,
        out_dir=str(tmp_path),
        headline_input="peaked",
        headline_stride=16,
    )
    base.update(kw)
    return vs.VsOfficialConfig(**base)


def _fake_official_module():
    """x-attention's call structure: prefill -> module-level xattn_estimate, block_sparse_attn_func."""
    mod = types.SimpleNamespace()

    def xattn_estimate(
        q, k, block_size, stride, threshold=0.9, use_triton=True, causal=True, chunk_size=2048
    ):
        if use_triton and "100" not in torch.cuda.get_device_properties(0).name:
            print("setting use triton to false. Triton kernel not surpported on this device")
        n = -(-q.shape[2] // block_size)
        mask = torch.ones(1, q.shape[1], n + 1, n + 1, dtype=torch.bool).tril()  # chunk-padded, as upstream
        mask[..., 1:n, 0:1] = False  # drop the sink block off the diagonal: a mask ours would not pick
        return torch.zeros(1), mask

    def block_sparse_attn_func(q, k, v, cu_q, cu_k, hmt, streaming, mask, q_len, k_len, p_dropout=0.0, **kw):
        tok = mask[0].repeat_interleave(BS, -2).repeat_interleave(BS, -1)[:, :q_len, :k_len]
        tok = tok & torch.ones(q_len, k_len, dtype=torch.bool).tril()
        qh, kh, vh = (x.transpose(0, 1).float() for x in (q, k, v))  # (H, T, D)
        s = (qh @ kh.transpose(1, 2)) * q.shape[-1] ** -0.5
        return (torch.softmax(s.masked_fill(~tok, float("-inf")), -1) @ vh).transpose(0, 1).to(q.dtype)

    def xattention_prefill(q, k, v, stride, threshold=0.8, block_size=128, use_triton=True, causal=True):
        _, mask = mod.xattn_estimate(
            q, k, block_size=block_size, stride=stride, threshold=threshold, use_triton=use_triton
        )
        b, h, t, d = q.shape
        n = -(-t // block_size)
        flat = [x.transpose(1, 2).reshape(t, h, d) for x in (q, k, v)]
        out = mod.block_sparse_attn_func(
            *flat, None, None, None, None, mask[:, :, :n, :n], t, t, p_dropout=0.0
        )
        return out.view(b, t, h, d).transpose(1, 2)

    mod.xattn_estimate, mod.block_sparse_attn_func = xattn_estimate, block_sparse_attn_func
    mod.Xattention_prefill = xattention_prefill
    return mod


@pytest.fixture
def h200_name(monkeypatch):
    props = types.SimpleNamespace(name="NVIDIA H200", multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    return props


def test_forced_triton_changes_only_the_name_and_restores(h200_name):
    orig = torch.cuda.get_device_properties
    with vs.official_triton_forced(True):
        p = torch.cuda.get_device_properties(0)
        assert "100" in p.name
        assert p.name.startswith("NVIDIA H200")
        assert p.multi_processor_count == 132
    assert torch.cuda.get_device_properties is orig
    with vs.official_triton_forced(False):
        assert "100" not in torch.cuda.get_device_properties(0).name


def test_run_with_fake_official(tmp_path, h200_name):
    mod = _fake_official_module()

    def factory(name, official_mod, q, k, v, stride, cfg):
        return vs.build_variant(name, mod if name in vs.OFFICIAL_VARIANTS else None, q, k, v, stride, cfg)

    cfg = _cfg(tmp_path, variants="official_shipped,official_triton,ours")
    path, rows, _ = vs.run(cfg, variant_factory=factory)
    var = {r["variant"]: r for r in rows if r["kind"] == "variant"}
    assert set(var) == {"official_shipped", "official_triton", "ours"}
    assert all("error" not in r for r in var.values()), var
    # the shipped variant takes the torch path on an "H200"; the forced one does not
    assert var["official_shipped"]["path"] == "torch"
    assert var["official_triton"]["path"] == "triton"
    n = T // BS
    # the fake mask drops the sink block in rows 1..n-1: density = (n(n+1)/2 - (n-1)) / (n(n+1)/2)
    want = (n * (n + 1) / 2 - (n - 1)) / (n * (n + 1) / 2)
    assert var["official_shipped"]["density"] == pytest.approx(want)
    assert 0 < var["ours"]["density"] <= 1
    assert var["ours"]["rel_err_vs_dense"] < 0.25  # tau = 0.9 on the peaked input
    # the fake official mask drops the sinks, which these inputs attend to: clearly worse than ours
    assert var["official_shipped"]["rel_err_vs_dense"] > 2 * var["ours"]["rel_err_vs_dense"]
    for r in var.values():
        assert 0 <= r["needles_kept"] <= 1
        assert min(r["e2e_ms"], r["estimate_ms"], r["attn_ms"]) > 0
    cross = [r for r in rows if r["kind"] == "cross_attn"]
    assert {(r["kernel_of"], r["mask_of"]) for r in cross} == {
        ("official_shipped", "ours"),
        ("ours", "official_shipped"),
    }
    assert all("attn_ms" in r for r in cross), cross
    doc = json.loads(Path(path).read_text())
    ratios = [r for r in doc["rows"] if r["kind"] == "ratio"]
    assert {r["official"] for r in ratios} == {"official_shipped", "official_triton"}
    # the fake official outputs miss the sinks: not comparable, so the headline falls back to the faster
    assert not any(r["comparable"] for r in ratios)
    best = min(var["official_shipped"]["e2e_ms"], var["official_triton"]["e2e_ms"])
    key = f"vs_official_xattn_{T}"
    assert doc["headline"][key] == pytest.approx(var["ours"]["e2e_ms"] / best)
    assert doc["headline"][f"{key}_official_output_comparable"] is False
    assert doc["config"]["card"] == doc["device"]


def test_captured_attention_replays_with_another_mask(h200_name):
    cfg = _cfg(Path("/tmp"))
    q, k, v, _ = vs.make_inputs("peaked", T, cfg)
    var = vs.OfficialVariant(
        _fake_official_module(), q, k, v, stride=16, tau=0.9, block_size=BS, force_triton=False
    )
    out = var.capture()
    assert out.shape == q.shape
    full = torch.ones(1, H, T // BS, T // BS, dtype=torch.bool)
    dense = vs.dense_reference(q, k, v)
    assert vs.rel_rms(dense, var.attn(full)) < 1e-5  # the full mask gives dense attention
    assert vs.rel_rms(dense, out) > 1e-3  # the fake's own mask does not


def test_headline_picks_faster_official_and_case():
    rows = []
    for variant, e2e in (
        ("official_shipped", 300.0),
        ("official_triton", 200.0),
        ("ours", 50.0),
        ("ours_fp8", 40.0),
    ):
        for stride in (8, 16):
            rows.append(
                {
                    "kind": "variant",
                    "variant": variant,
                    "input": "peaked",
                    "seq_len": 131072,
                    "stride": stride,
                    "path": "x",
                    "e2e_ms": e2e * (2 if stride == 8 else 1),
                    "estimate_ms": 1.0,
                    "attn_ms": 1.0,
                    "density": 0.1,
                }
            )
    rows.append(
        {
            "kind": "variant",
            "variant": "official_triton",
            "input": "diffuse",
            "seq_len": 131072,
            "stride": 16,
            "error": "OOM",
        }
    )
    ratios = vs.ratio_rows(rows)
    assert len(ratios) == 8  # 2 strides x 2 of ours x 2 official; the errored diffuse case has no ours row
    head = vs.headline(ratios, t=131072, input_name="peaked", stride=16)
    assert head["vs_official_xattn_128k"] == pytest.approx(50 / 200)
    assert head["vs_official_xattn_128k_fp8"] == pytest.approx(40 / 200)
    assert head["vs_official_xattn_128k_official_variant"].startswith("official_triton")
    assert head["vs_official_xattn_128k_all"]["peaked_s8_ours"] == pytest.approx(100 / 400)
    none = vs.headline(ratios, t=65536, input_name="peaked", stride=16)
    assert none["vs_official_xattn_64k"] is None


def test_headline_skips_an_official_output_that_is_not_comparable():
    def row(variant, e2e, err):
        return {
            "kind": "variant",
            "variant": variant,
            "input": "peaked",
            "seq_len": 131072,
            "stride": 16,
            "path": "x",
            "e2e_ms": e2e,
            "estimate_ms": 1.0,
            "attn_ms": 1.0,
            "density": 0.1,
            "rel_err_vs_dense": err,
        }

    rows = [row("official_shipped", 100.0, 0.5), row("official_triton", 200.0, 0.07), row("ours", 80.0, 0.06)]
    head = vs.headline(vs.ratio_rows(rows), t=131072, input_name="peaked", stride=16)
    assert head["vs_official_xattn_128k"] == pytest.approx(80 / 200)  # the faster shipped one is off by 0.5
    assert head["vs_official_xattn_128k_official_variant"].startswith("official_triton")
    assert head["vs_official_xattn_128k_per_official"]["official_shipped"]["ratio_e2e"] == pytest.approx(0.8)
    assert head["vs_official_xattn_128k_per_official"]["official_shipped"]["comparable"] is False


def test_missing_official_is_a_clear_error(tmp_path):
    with pytest.raises(vs.OfficialMissingError, match="x-attention"):
        vs.run(_cfg(tmp_path, official_dir=str(tmp_path / "nowhere")))

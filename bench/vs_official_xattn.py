"""Official XAttention (mit-han-lab/x-attention + Block-Sparse-Attention) vs ours, end to end, same inputs.

Issue #5, headline ``vs_official_xattn_128k`` = our end-to-end time (scoring + selection + block-sparse
attention) / the official one's, taking the faster official variant whose output is comparable (error
vs dense at most 2x ours) and naming it; the ratio to each official variant is reported too. Variants:

* ``official_shipped``: ``xattn.src.Xattention.Xattention_prefill(..., use_triton=True)`` as shipped. Its
  ``xattn_estimate`` silently drops to its torch scoring path unless ``"100"`` is in the GPU's name
  (an H200 is ``NVIDIA H200``), so on an H200 this is the torch path (the row's ``official_path``
  says which path ran, read from the message it prints).
* ``official_triton``: the same call with only that name check bypassed (``torch.cuda.
  get_device_properties`` returns the real properties with ``"[100]"`` appended to ``name``, only
  for the duration of the official call), so its Triton scoring kernels run.
* ``ours`` / ``ours_fp8``: ``kernels.xattention.xattention_prefill`` (bf16 / fp8 scoring).

Each row has the end-to-end, estimate (scoring + selection) and attention-only times (CUDA events,
median after a warm-up), the causal block density chosen, the output's relative RMS error vs dense
SDPA, the needles kept, and each attention kernel timed on the *other* side's mask (kernel vs kernel
at equal selection). Inputs are ``bench/prefill_attention.py``'s ("diffuse", "peaked"; B=1, bf16,
causal). The official code is not in this repository: ``bench/official_xattn/README.md`` says how
to get and build it (``.official/``, git-ignored); ``bench/official_xattn/device.sh`` runs it all.

Examples::

    python bench/vs_official_xattn.py                      # needs .official/ and the built extension
    python bench/vs_official_xattn.py --lengths=32768 --strides=16 --inputs=peaked
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import device_name, parse_flags, write_results  # noqa: E402
from bench.prefill_attention import timed  # noqa: E402
from kernels.block_sparse_attention.index import index_to_mask, mask_to_index, visible_blocks  # noqa: E402
from kernels.block_sparse_attention.op import block_sparse_attn  # noqa: E402
from kernels.testing import needles_kept, rel_rms, structured_qkv  # noqa: E402
from kernels.xattention.op import xattention_prefill, xattn_select  # noqa: E402

log = logging.getLogger("bench.vs_official_xattn")

NAME = "vs_official_xattn"
OFFICIAL_VARIANTS = ("official_shipped", "official_triton")
OUR_VARIANTS = ("ours", "ours_fp8")
# The two inputs of bench/prefill_attention.py (same seeds and logits): seed offset and generator overrides.
INPUTS: dict[str, tuple[int, dict[str, float]]] = {
    "diffuse": (0, {}),
    "peaked": (1, {"sink_logit": 12.0, "local_logit": 10.0, "needle_logit": 14.0}),
}
TORCH_PATH_MESSAGE = "setting use triton to false"


@dataclasses.dataclass
class VsOfficialConfig:
    """Benchmark settings (override with ``--field=value``)."""

    lengths: str = "131072,32768,65536"  # 128k first: the headline survives a timeout
    heads: int = 32
    head_dim: int = 128
    block_size: int = 128
    strides: str = "16,8"
    tau: float = 0.9
    inputs: str = "peaked,diffuse"
    variants: str = "official_shipped,official_triton,ours,ours_fp8"
    headline_input: str = "peaked"
    headline_stride: int = 16
    official_dir: str = str(ROOT / ".official")
    dtype: str = "bfloat16"
    device: str = "cuda"
    impl: str = "triton"  # our ops; "reference" for CPU smoke runs
    reps: int = 0  # 0: 3 at >=64k, 5 at 32k, 10 below (as bench/prefill_attention.py)
    warmup: int = 1
    cross: int = 1  # 1: time each attention kernel on the other side's mask too
    budget_s: float = 0.0  # >0: skip cases once this many seconds have passed (results so far are kept)
    out_dir: str = ""
    seed: int = 0


class OfficialMissingError(RuntimeError):
    """The official x-attention sources or the built block_sparse_attn extension are not available."""


def parse_args(argv: list[str]) -> VsOfficialConfig:
    return parse_flags(VsOfficialConfig(), argv)


def load_official(official_dir: str | Path):
    """Import ``xattn.src.Xattention`` from ``<official_dir>/x-attention`` (needs ``block_sparse_attn``)."""
    xdir = Path(official_dir) / "x-attention"
    if not (xdir / "xattn" / "src" / "Xattention.py").is_file():
        raise OfficialMissingError(
            f"official x-attention sources not found under {xdir} (expected xattn/src/Xattention.py); "
            "see bench/official_xattn/README.md (they are never committed)"
        )
    try:
        import block_sparse_attn  # noqa: F401
    except ImportError as e:
        raise OfficialMissingError(
            f"block_sparse_attn (Block-Sparse-Attention's CUDA extension) is not importable: {e}. "
            "Build it with bench/official_xattn/build.sh and put /tmp/bsa on PYTHONPATH"
        ) from e
    if str(xdir) not in sys.path:
        sys.path.insert(0, str(xdir))
    import importlib

    return importlib.import_module("xattn.src.Xattention")


class _PropsWith100:
    """Device properties whose ``name`` contains "100" (everything else is the real card's)."""

    def __init__(self, props):
        self._props = props

    @property
    def name(self) -> str:
        return f"{self._props.name} [100]"

    def __getattr__(self, key):
        return getattr(self._props, key)


@contextlib.contextmanager
def official_triton_forced(enabled: bool):
    """While active, bypass only x-attention's ``"100" in device name`` check (see module docstring)."""
    if not enabled:
        yield
        return
    orig = torch.cuda.get_device_properties

    def patched(device=None):
        return _PropsWith100(orig(device))

    torch.cuda.get_device_properties = patched
    try:
        yield
    finally:
        torch.cuda.get_device_properties = orig


def causal_density(mask: torch.Tensor, t: int, block_size: int) -> float:
    """Kept share of the causally visible blocks of a `(B, H, n, n)` bool mask (same as the prefill bench)."""
    n = -(-t // block_size)
    vis = visible_blocks(t, t, block_size, True, mask.device)
    kept = (mask[..., :n, :n] & vis).sum().item()
    return kept / (mask.shape[0] * mask.shape[1] * n * (n + 1) / 2)


class OursVariant:
    """``kernels.xattention``: public prefill op end to end; selection and attention separately."""

    def __init__(self, q, k, v, *, stride: int, tau: float, block_size: int, fp8: bool, impl: str):
        self.q, self.k, self.v = q, k, v
        self.stride, self.tau, self.bs, self.fp8, self.impl = stride, tau, block_size, fp8, impl
        self.t = q.shape[1]
        self.path = "triton_fp8_scoring" if fp8 else impl

    def e2e(self) -> torch.Tensor:
        """Public prefill op: scoring, selection and attention."""
        return xattention_prefill(
            self.q,
            self.k,
            self.v,
            stride=self.stride,
            tau=self.tau,
            block_size=self.bs,
            causal=True,
            fp8_scoring=self.fp8,
            impl=self.impl,
        )

    def select(self):
        """Scoring + selection: the kept-block index."""
        index, _ = xattn_select(
            self.q,
            self.k,
            stride=self.stride,
            tau=self.tau,
            block_size=self.bs,
            causal=True,
            impl=self.impl,
            config={"fp8": 1} if self.fp8 else None,
        )
        return index

    def attn(self, index) -> torch.Tensor:
        """Block-sparse attention on a given index."""
        return block_sparse_attn(
            self.q, self.k, self.v, block_index=index, block_size=self.bs, causal=True, impl=self.impl
        )

    def to_mask(self, index) -> torch.Tensor:
        """Index to `(B, H, n, n)` bool mask."""
        return index_to_mask(index, -(-self.t // self.bs))

    def from_mask(self, mask: torch.Tensor):
        """Bool mask to index."""
        return mask_to_index(mask, self.t, self.t, self.bs, causal=True)


class OfficialVariant:
    """x-attention's ``Xattention_prefill`` end to end; its two stages replayed from one captured call.

    ``xattn_estimate`` and ``block_sparse_attn_func`` are captured once, with the arguments the prefill
    makes, and replayed to time scoring + selection and attention separately.
    """

    def __init__(self, mod, q, k, v, *, stride: int, tau: float, block_size: int, force_triton: bool):
        # official layout is (B, H, T, D): views of our (B, T, H, D) tensors, as a HF model hands them over
        self.mod = mod
        self.qh, self.kh, self.vh = (x.transpose(1, 2) for x in (q, k, v))
        self.stride, self.tau, self.bs, self.force = stride, tau, block_size, force_triton
        self.t = q.shape[1]
        self.messages = io.StringIO()
        self._est_call = self._attn_call = None
        self._estimate, self._attn = mod.xattn_estimate, mod.block_sparse_attn_func
        self.path = "unknown"

    def _run(self, fn, *args, **kwargs):
        with official_triton_forced(self.force), contextlib.redirect_stdout(self.messages):
            return fn(*args, **kwargs)

    def e2e(self) -> torch.Tensor:
        """``Xattention_prefill`` as the variant runs it; output in ``[B, T, H, D]``."""
        out = self._run(
            self.mod.Xattention_prefill,
            self.qh,
            self.kh,
            self.vh,
            stride=self.stride,
            threshold=self.tau,
            block_size=self.bs,
            use_triton=True,
            causal=True,
        )
        return out.transpose(1, 2)

    def capture(self) -> torch.Tensor:
        """One end-to-end call recording the estimate and attention calls' arguments; returns its output."""

        def est(*a, **kw):
            self._est_call = (a, kw)
            return self._estimate(*a, **kw)

        def attn(*a, **kw):
            self._attn_call = (list(a), kw)
            return self._attn(*a, **kw)

        self.mod.xattn_estimate, self.mod.block_sparse_attn_func = est, attn
        try:
            out = self.e2e()
        finally:
            self.mod.xattn_estimate, self.mod.block_sparse_attn_func = self._estimate, self._attn
        if self._est_call is None or self._attn_call is None:
            raise RuntimeError(
                "official Xattention_prefill did not call xattn_estimate/block_sparse_attn_func"
            )
        self.path = "torch" if TORCH_PATH_MESSAGE in self.messages.getvalue() else "triton"
        return out

    def select(self) -> torch.Tensor:
        """The captured ``xattn_estimate`` call (scoring + selection): its block mask."""
        a, kw = self._est_call
        return self._run(self._estimate, *a, **kw)[1]  # (attn_sums, simple_masks)

    def attn(self, mask: torch.Tensor) -> torch.Tensor:
        """The captured ``block_sparse_attn_func`` call with ``mask`` as its block mask."""
        a, kw = self._attn_call
        a = list(a)
        a[7] = mask  # base_blockmask (positional, as Xattention_prefill passes it)
        b, h = self.qh.shape[:2]
        return self._run(self._attn, *a, **kw).view(b, self.t, h, -1)  # (T, H, D) varlen -> (B, T, H, D)

    def to_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Crop the chunk-padded mask to `(B, H, n, n)`."""
        n = -(-self.t // self.bs)
        return mask[:, :, :n, :n]

    def from_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A bool mask is what ``block_sparse_attn_func`` takes."""
        return mask.contiguous()


def measure(variant, *, dense_out, needles, t: int, block_size: int, timer: Callable) -> dict[str, Any]:
    """Correctness and timings of one variant; keeps its mask on ``variant.mask`` for the cross rows."""
    out = variant.capture() if hasattr(variant, "capture") else variant.e2e()
    sel = variant.select()
    mask = variant.to_mask(sel).bool()
    variant.mask = mask
    row: dict[str, Any] = {
        "path": variant.path,
        "density": causal_density(mask, t, block_size),
        "rel_err_vs_dense": rel_rms(dense_out.float(), out.float()),
        "needles_kept": needles_kept(needles, mask.cpu(), block_size),
    }
    del out
    row["e2e_ms"] = timer(variant.e2e)
    row["estimate_ms"] = timer(variant.select)
    row["attn_ms"] = timer(lambda: variant.attn(sel))
    return row


def make_inputs(name: str, t: int, cfg: VsOfficialConfig):
    """(q, k, v, needles) in ``[B, T, H, D]``, exactly as ``bench/prefill_attention.py`` builds them."""
    offset, overrides = INPUTS[name]
    return structured_qkv(
        1,
        t,
        cfg.heads,
        cfg.heads,
        cfg.head_dim,
        dtype=getattr(torch, cfg.dtype),
        device=cfg.device,
        seed=cfg.seed + offset,
        needle_len=64,
        needles_per_head=2,
        **overrides,
    )


def dense_reference(q, k, v) -> torch.Tensor:
    """Causal SDPA (flash backend on CUDA) on the ``[B, H, T, D]`` views; returns ``[B, T, H, D]``."""
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    if q.is_cuda:
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True).transpose(1, 2)
    return F.scaled_dot_product_attention(qh.float(), kh.float(), vh.float(), is_causal=True).transpose(1, 2)


def build_variant(name: str, official_mod, q, k, v, stride: int, cfg: VsOfficialConfig):
    if name in OUR_VARIANTS:
        return OursVariant(
            q,
            k,
            v,
            stride=stride,
            tau=cfg.tau,
            block_size=cfg.block_size,
            fp8=name == "ours_fp8",
            impl=cfg.impl,
        )
    if name in OFFICIAL_VARIANTS:
        return OfficialVariant(
            official_mod,
            q,
            k,
            v,
            stride=stride,
            tau=cfg.tau,
            block_size=cfg.block_size,
            force_triton=name == "official_triton",
        )
    raise ValueError(f"unknown variant {name!r}; known: {OFFICIAL_VARIANTS + OUR_VARIANTS}")


def run_case(
    input_name: str,
    t: int,
    stride: int,
    inp,
    dense_out,
    cfg: VsOfficialConfig,
    official_mod,
    timer: Callable,
    variant_factory: Callable = build_variant,
) -> list[dict[str, Any]]:
    """All variants on one (input, length, stride): one row each, then the cross-mask attention rows."""
    q, k, v, needles = inp
    rows, done = [], {}
    for name in [x for x in cfg.variants.split(",") if x]:
        base = {"kind": "variant", "variant": name, "input": input_name, "seq_len": t, "stride": stride}
        base["tau"] = cfg.tau
        try:
            var = variant_factory(name, official_mod, q, k, v, stride, cfg)
            row = {
                **base,
                **measure(
                    var, dense_out=dense_out, needles=needles, t=t, block_size=cfg.block_size, timer=timer
                ),
            }
            done[name] = var
        except Exception as e:  # one variant failing (OOM, compile error) must not lose the others
            row = {**base, "error": f"{type(e).__name__}: {str(e)[:400]}"}
        rows.append(row)
        log.info("%s", json.dumps(row))
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    official = next((x for x in done if x in OFFICIAL_VARIANTS), None)  # both share one attention kernel
    ours = "ours" if "ours" in done else next((x for x in done if x in OUR_VARIANTS), None)
    if cfg.cross and official and ours:
        for a, b in ((official, ours), (ours, official)):  # kernel of a on the mask chosen by b
            va, vb = done[a], done[b]
            row = {"kind": "cross_attn", "kernel_of": a, "mask_of": b, "input": input_name}
            row.update(seq_len=t, stride=stride, density=causal_density(vb.mask, t, cfg.block_size))
            try:
                sel = va.from_mask(vb.mask)
                row["attn_ms"] = timer(lambda va=va, sel=sel: va.attn(sel))
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {str(e)[:400]}"
            rows.append(row)
            log.info("%s", json.dumps(row))
    return rows


COMPARABLE_ERR_FACTOR = (
    2.0  # an official output counts as the same computation if its error is at most 2x ours
)


def ratio_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (input, length, stride, our variant, official variant): our e2e / the official e2e.

    ``comparable`` marks an official output whose relative error vs dense is at most
    ``COMPARABLE_ERR_FACTOR`` times ours (the H200's shipped torch path selects ~0.4% of the blocks and
    misses dense attention by 20-370%: timing it is not timing the same computation).
    """
    out = []
    ok = [r for r in rows if r.get("kind") == "variant" and "e2e_ms" in r]
    cases = sorted({(r["input"], r["seq_len"], r["stride"]) for r in ok})
    for inp, t, s in cases:
        case = [r for r in ok if (r["input"], r["seq_len"], r["stride"]) == (inp, t, s)]
        for ours in (r for r in case if r["variant"] in OUR_VARIANTS):
            for off in (r for r in case if r["variant"] in OFFICIAL_VARIANTS):
                err_o, err_ours = off.get("rel_err_vs_dense"), ours.get("rel_err_vs_dense")
                comparable = err_o is None or err_ours is None or err_o <= COMPARABLE_ERR_FACTOR * err_ours
                out.append(
                    {
                        "kind": "ratio",
                        "input": inp,
                        "seq_len": t,
                        "stride": s,
                        "ours": ours["variant"],
                        "official": off["variant"],
                        "official_path": off["path"],
                        "ours_e2e_ms": ours["e2e_ms"],
                        "official_e2e_ms": off["e2e_ms"],
                        "ratio_e2e": ours["e2e_ms"] / off["e2e_ms"],
                        "ratio_estimate": ours["estimate_ms"] / off["estimate_ms"],
                        "ratio_attn": ours["attn_ms"] / off["attn_ms"],
                        "ours_density": ours["density"],
                        "official_density": off["density"],
                        "ours_rel_err": err_ours,
                        "official_rel_err": err_o,
                        "comparable": comparable,
                    }
                )
    return out


def _best(pairs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The faster official among comparable outputs (any official if none is comparable)."""
    good = [r for r in pairs if r["comparable"]] or pairs
    return min(good, key=lambda r: r["official_e2e_ms"], default=None)


def headline(ratios: list[dict[str, Any]], *, t: int, input_name: str, stride: int) -> dict[str, Any]:
    """Headline ``vs_official_xattn_128k``: our bf16-scoring e2e / the faster comparable official e2e.

    At the headline case, plus the fp8 ratio, the ratio to each official variant, and every measured
    case at length ``t``; None where the case was not measured.
    """
    at_t = [r for r in ratios if r["seq_len"] == t]

    def pairs(ours: str, inp: str = input_name, s: int = stride) -> list[dict[str, Any]]:
        return [r for r in at_t if (r["input"], r["stride"], r["ours"]) == (inp, s, ours)]

    main, fp8 = _best(pairs("ours")), _best(pairs("ours_fp8"))
    key = f"vs_official_xattn_{t // 1024}k" if t % 1024 == 0 else f"vs_official_xattn_{t}"
    cases = sorted({(r["input"], r["stride"], r["ours"]) for r in at_t})
    return {
        "card": device_name(),
        key: main["ratio_e2e"] if main else None,
        f"{key}_official_variant": (
            f"{main['official']} ({main['official_path']} scoring)" if main else None
        ),
        f"{key}_official_output_comparable": main["comparable"] if main else None,
        f"{key}_case": {"input": input_name, "stride": stride, "seq_len": t},
        f"{key}_ours_ms": main["ours_e2e_ms"] if main else None,
        f"{key}_official_ms": main["official_e2e_ms"] if main else None,
        f"{key}_density_ours_official": [main["ours_density"], main["official_density"]] if main else None,
        f"{key}_rel_err_ours_official": [main["ours_rel_err"], main["official_rel_err"]] if main else None,
        f"{key}_fp8": fp8["ratio_e2e"] if fp8 else None,
        f"{key}_per_official": {
            f"{r['official']}": {
                "ratio_e2e": r["ratio_e2e"],
                "official_rel_err": r["official_rel_err"],
                "official_density": r["official_density"],
                "comparable": r["comparable"],
            }
            for r in pairs("ours")
        },
        f"{key}_all": {
            f"{i}_s{s}_{o}": b["ratio_e2e"] for i, s, o in cases if (b := _best(pairs(o, i, s))) is not None
        },
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Short text table of the variant rows (last thing device.sh prints)."""
    lines = [
        f"{'T':>7} {'input':8} {'S':>2} {'variant':17} {'path':18} {'e2e ms':>9} {'est ms':>9} "
        f"{'attn ms':>9} {'dens':>6} {'err':>7}"
    ]
    for r in rows:
        if r.get("kind") != "variant":
            continue
        head = f"{r['seq_len']:>7} {r['input']:8} {r['stride']:>2} {r['variant']:17}"
        if "error" in r:
            lines.append(f"{head} ERROR {r['error'][:90]}")
            continue
        lines.append(
            f"{head} {r['path']:18} {r['e2e_ms']:9.2f} {r['estimate_ms']:9.2f} {r['attn_ms']:9.2f} "
            f"{r['density']:6.3f} {r['rel_err_vs_dense']:7.4f}"
        )
    return "\n".join(lines)


def run(cfg: VsOfficialConfig, *, variant_factory: Callable = build_variant, timer: Callable | None = None):
    """Run every length/input/stride; write the JSON after each length; return (path, rows, headline)."""
    wanted = [x for x in cfg.variants.split(",") if x]
    official_mod = None
    if any(v in OFFICIAL_VARIANTS for v in wanted) and variant_factory is build_variant:
        official_mod = load_official(cfg.official_dir)  # raises OfficialMissingError with the reason
    t0 = time.monotonic()
    rows: list[dict[str, Any]] = []
    path, head = None, {}
    lengths = [int(x) for x in cfg.lengths.split(",") if x]
    for t in lengths:
        reps = cfg.reps or (3 if t >= 65536 else 5 if t >= 32768 else 10)

        def tm(fn, reps=reps):
            return (timer or timed)(fn, reps, cfg.warmup)

        for i, input_name in enumerate(x for x in cfg.inputs.split(",") if x):
            if cfg.budget_s and time.monotonic() - t0 > cfg.budget_s:
                rows.append({"kind": "skipped", "seq_len": t, "input": input_name, "reason": "budget_s"})
                continue
            inp = make_inputs(input_name, t, cfg)
            dense_out = dense_reference(*inp[:3])
            if i == 0:
                q, k, v = inp[:3]
                sdpa_ms = tm(lambda q=q, k=k, v=v: dense_reference(q, k, v))
                rows.append({"kind": "sdpa_flash", "seq_len": t, "ms": sdpa_ms})
            for stride in [int(s) for s in cfg.strides.split(",") if s]:
                if cfg.budget_s and time.monotonic() - t0 > cfg.budget_s:
                    rows.append(
                        {
                            "kind": "skipped",
                            "seq_len": t,
                            "input": input_name,
                            "stride": stride,
                            "reason": "budget_s",
                        }
                    )
                    continue
                rows += run_case(
                    input_name, t, stride, inp, dense_out, cfg, official_mod, tm, variant_factory
                )
            del inp, dense_out
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        ratios = ratio_rows(rows)
        head = headline(ratios, t=max(lengths), input_name=cfg.headline_input, stride=cfg.headline_stride)
        path = write_results(
            NAME,
            rows=rows + ratios,
            headline=head,
            config={**dataclasses.asdict(cfg), "card": device_name(), "elapsed_s": time.monotonic() - t0},
            out_dir=Path(cfg.out_dir) if cfg.out_dir else None,
        )
    return path, rows, head


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path, rows, head = run(cfg)
    except OfficialMissingError as e:
        raise SystemExit(f"vs_official_xattn: {e}") from e
    print(table(rows))
    print(json.dumps({k: v for k, v in head.items() if not k.endswith("_all")}, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

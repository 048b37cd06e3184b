"""Policy latency: time per action chunk, split into encoders, subgoal generation and the action pass.

One observation (batch 1) through ``InferencePolicy.infer``, which is what run_eval and the server call.
Stages (device-synchronised, from ``InferencePolicy.last_timing``):
``encoders`` (MiniLM lookup from its cache + ViT per camera + projections), ``subgoal`` (KV-cache prefill
and one decode step per subgoal code), ``actions`` (one parallel pass over ``[c_N, <eoi>, actions]``),
``subgoal_image`` (FSQ decoder). The ``no_cot`` ablation of the same preset shows what the visual chain of
thought costs (CoT-VLA reports about 7x). Weights are random: latency does not depend on their values
(greedy decoding always emits every code).

Examples:
    python -m bench.policy_latency          # CPU here -> bench/results/policy_latency.json
    python -m bench.policy_latency --devices cuda --merge            # on a GPU machine, keeping the CPU rows
    python -m bench.policy_latency --presets configs/policy/cot_vla_tiny.yaml --iters 3 --out /tmp
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch

from bench.common import RESULTS_DIR, write_results

DEFAULT_PRESETS = [
    "configs/policy/cot_vla_small.yaml",
    "configs/policy/cot_vla_base.yaml",
    "configs/train/cot_vla_embedded_goal.yaml",  # the trained recipe: base + FiLM 384, state dropout
]
# the policy of bench/results/policy_embedded.json (a train config: its ``policy`` section is timed)
HEADLINE_PRESET = "cot_vla_embedded_goal"
STAGES = ("encoders", "subgoal", "actions", "subgoal_image")


def _obs(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "observation.images.agentview": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "observation.images.wrist": rng.integers(0, 256, (128, 128, 3), dtype=np.uint8),
        "observation.state": rng.standard_normal(8).astype(np.float32),
        "task": "put the red cube on the plate",
    }


def _cpu_name() -> str:
    import os
    import platform

    name = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def load_policy_config(path: str):
    """A ``PolicyConfig`` from a policy preset, or the ``policy`` of a train config (``TrainConfig``)."""
    import draccus
    import yaml

    from vla.configs import PolicyConfig
    from vla.scripts.train import TrainConfig

    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a YAML mapping (a policy preset or a train config)")
    if "policy" in doc:
        return draccus.parse(TrainConfig, config_path=path, args=[]).policy
    return draccus.parse(PolicyConfig, config_path=path, args=[])


def measure(
    preset: str,
    device: str,
    use_cot: bool,
    iters: int,
    warmup: int,
    text_cache: Path | None = None,
    cuda_graphs: bool = True,
) -> dict:
    """Median stage times of one preset on one device.

    ``text_cache`` is a folder of instruction-feature files (``text<max_tokens>.safetensors``): loaded when
    present (a machine without the MiniLM wheel), written otherwise.
    """
    import dataclasses

    from vla.inference import InferencePolicy

    cfg = dataclasses.replace(load_policy_config(preset), use_cot=use_cot)
    torch.manual_seed(0)
    policy = cfg.build()
    policy.cuda_graphs = cuda_graphs
    inf = InferencePolicy(policy, device=device)
    obs = _obs(0)
    if text_cache is not None:
        from vla.language import get_text_encoder

        enc = get_text_encoder(cfg.text_max_tokens)
        path = text_cache / f"text{cfg.text_max_tokens}.safetensors"
        if path.is_file():
            enc.load_cache(path)
        else:
            enc([obs["task"]])
            text_cache.mkdir(parents=True, exist_ok=True)
            enc.save_cache(path)
    for _ in range(warmup):
        inf.infer(obs)
    timings = []
    for _ in range(iters):
        inf.infer(obs)
        timings.append(dict(inf.last_timing))
    row = {
        "preset": Path(preset).stem,
        "device": device,
        "device_name": _cpu_name() if device == "cpu" else torch.cuda.get_device_name(0),
        "use_cot": use_cot,
        "decode": ("graph" if cuda_graphs else "eager") if device == "cuda" and use_cot else "eager",
        "chunk_ms": statistics.median(t["infer_ms"] for t in timings),
        "params_m": sum(p.numel() for n, p in policy.named_parameters() if not n.startswith("tokenizer."))
        / 1e6,
        "seq_len": policy.layout.total,
        "subgoal_codes": policy.layout.n_codes if use_cot else 0,
        "torch_threads": torch.get_num_threads(),
        "iters": iters,
    }
    for stage in STAGES:
        vals = [t[f"{stage}_ms"] for t in timings if f"{stage}_ms" in t]
        row[f"{stage}_ms"] = statistics.median(vals) if vals else 0.0
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=DEFAULT_PRESETS)
    ap.add_argument("--devices", nargs="+", default=["cpu", *(["cuda"] if torch.cuda.is_available() else [])])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument(
        "--merge", action="store_true", help="keep the existing file's rows of other (preset, device) pairs"
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--text_cache", type=Path, default=None, help="folder of instruction-feature files")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for p in args.presets:
        for d in args.devices:
            rows.append(measure(p, d, True, args.iters, args.warmup, args.text_cache))
            if d == "cuda":  # the same CoT decode without CUDA graphs (eager launches per op)
                rows.append(measure(p, d, True, args.iters, args.warmup, args.text_cache, cuda_graphs=False))
            rows.append(measure(p, d, False, args.iters, args.warmup, args.text_cache))
    old_path = args.out / "policy_latency.json"
    if args.merge and old_path.is_file():
        measured = {(r["preset"], r["device"]) for r in rows}
        old = json.loads(old_path.read_text())["rows"]
        rows = [r for r in old if (r["preset"], r["device"]) not in measured] + rows
    headline: dict[str, float] = {}
    for dev in ("cpu", "cuda"):
        for r in rows:
            if (
                r["device"] == dev
                and r["use_cot"]
                and r["preset"] == HEADLINE_PRESET
                and r.get("decode") in ("graph" if dev == "cuda" else "eager", None)
            ):
                headline[f"chunk_ms_{'gpu' if dev == 'cuda' else 'cpu'}"] = round(r["chunk_ms"], 2)
                nocot = [
                    x for x in rows if x["device"] == dev and not x["use_cot"] and x["preset"] == r["preset"]
                ]
                if nocot:
                    headline[f"cot_over_no_cot_{'gpu' if dev == 'cuda' else 'cpu'}"] = round(
                        r["chunk_ms"] / nocot[0]["chunk_ms"], 2
                    )
    devices = " | ".join(sorted({f"{r['device']}: {r['device_name']}" for r in rows}))
    path = write_results(
        "policy_latency",
        rows=rows,
        headline=headline,
        device=devices,
        out_dir=args.out,
        config={
            "presets": sorted({r["preset"] for r in rows}),
            "iters": args.iters,
            "warmup": args.warmup,
            "batch": 1,
            "camera_images": "2 x 128x128 uint8 (resized by the policy)",
            "headline_preset": HEADLINE_PRESET,
        },
    )
    print(json.dumps({"path": str(path), "headline": headline}))


if __name__ == "__main__":
    main()

"""Training step rate of the CoT-VLA policy: eager against ``--compile=true``, CoT and no-CoT.

Each (variant, mode) trains ``--steps`` steps in its own process through ``bench.policy_embedded train``
(same data, config, batch and seed) and is timed from its ``metrics.jsonl``: the steps between the
second log line and the last over the minutes between them, so data loading, the first steps and
compilation are left out. The final loss of each run is recorded beside it: compiled and eager runs
should train alike. Writes ``bench/results/train_speed.json`` (headline ``steps_per_s_<variant>_<mode>``
and ``compile_speedup_<variant>``).

    # one NVIDIA H200, the base preset, the three plate tasks (data/windows/plate3), batch 256
    python -m bench.train_speed --windows=data/windows/plate3 --batch_size=256 --steps=600 \
        -- --film_dim=384 --state_dropout=0.5 --image_shift=4 --lr=8e-4
    # CPU, the small preset
    python -m bench.train_speed --windows=data/windows/plate3 --batch_size=16 --steps=40 --log_every=5 \
        --train_config=configs/train/cot_vla_small_cpu.yaml --device=cpu
Arguments after ``--`` go to every ``bench.policy_embedded train`` run unchanged.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import RESULTS_DIR, device_name, write_results

MODES = ("eager", "compile")


def step_rate(metrics: Path) -> tuple[float, dict, dict]:
    """Steps per second between the second and the last line of a ``metrics.jsonl``, and those two lines."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if len(rows) < 3:
        raise ValueError(
            f"{metrics} has {len(rows)} log lines; at least 3 are needed: raise --steps or lower --log_every"
        )
    a, b = rows[1], rows[-1]
    seconds = (b["minutes"] - a["minutes"]) * 60
    if seconds <= 0:
        raise ValueError(f"{metrics}: no time passed between steps {a['step']} and {b['step']}")
    return (b["step"] - a["step"]) / seconds, a, b


def measure(args: argparse.Namespace, variant: str, mode: str, out_dir: Path, extra: list[str]) -> dict:
    """Train one (variant, mode) in a fresh process and time it."""
    out = out_dir / f"{variant}_{mode}"
    cmd = [
        sys.executable,
        "-m",
        "bench.policy_embedded",
        "train",
        f"--variant={variant}",
        f"--windows={args.windows}",
        f"--train_config={args.train_config}",
        f"--steps={args.steps}",
        f"--batch_size={args.batch_size}",
        f"--out_dir={out}",
        f"--device={args.device}",
        f"--seed={args.seed}",
        *([f"--log_every={args.log_every}"] if args.log_every else []),
        f"--compile={str(mode == 'compile').lower()}",
        *([f"--tokenizer_path={args.tokenizer_path}"] if variant == "cot" and args.tokenizer_path else []),
        *(["--tokenizer_steps=0"] if variant == "cot" and not args.tokenizer_path else []),
        *extra,
    ]
    print(f"[train_speed] {variant} {mode}: {' '.join(cmd[2:])}", flush=True)
    subprocess.run(cmd, check=True)
    rate, first, last = step_rate(out / variant / "metrics.jsonl")
    return {
        "variant": variant,
        "mode": mode,
        "steps_per_s": rate,
        "samples_per_s": rate * args.batch_size,
        "final_loss": last["loss"],
        "final_action_loss": last["action_loss"],
        "timed_from_step": first["step"],
        "steps": args.steps,
    }


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", required=True, help="vla-export-windows folder")
    ap.add_argument("--train_config", default="configs/train/cot_vla_embedded_goal.yaml")
    ap.add_argument("--variants", nargs="+", default=["no_cot", "cot"], choices=("no_cot", "cot"))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--log_every", type=int, default=0, help="override the config's (0 keeps it)")
    ap.add_argument("--tokenizer_path", default=None, help="trained tokenizer (cot); else a random one")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work_dir", default=None, help="run folders (default: a temporary folder)")
    ap.add_argument("--results_dir", type=Path, default=RESULTS_DIR)
    args = ap.parse_args(own)
    with tempfile.TemporaryDirectory(prefix="train_speed_") as tmp:
        work = Path(args.work_dir or tmp)
        rows = [measure(args, v, m, work, extra) for v in args.variants for m in args.modes]
    headline = {f"steps_per_s_{r['variant']}_{r['mode']}": round(r["steps_per_s"], 3) for r in rows}
    for v in args.variants:
        if f"steps_per_s_{v}_eager" in headline and f"steps_per_s_{v}_compile" in headline:
            headline[f"compile_speedup_{v}"] = round(
                headline[f"steps_per_s_{v}_compile"] / headline[f"steps_per_s_{v}_eager"], 3
            )
    path = write_results(
        "train_speed",
        rows=rows,
        headline=headline,
        config={**{k: str(v) for k, v in vars(args).items()}, "extra": extra},
        device=device_name(),
        out_dir=args.results_dir,
    )
    print(json.dumps(headline, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

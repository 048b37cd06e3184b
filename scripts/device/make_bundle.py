"""Build ``.devbundle/``: what `sim.run_eval` needs on the lent GPU machine that its image lacks.

The machine (Python 3.12, torch, numpy, numba, scipy, opencv, ...) has no MuJoCo, robosuite, gymnasium
or draccus and reaches no registry, and one `run` call carries at most 64 MiB. The bundle holds:

- ``robosuite.tar.xz``: the installed robosuite package with all its code and config but only the
  asset files that the chosen suites' scenes load (robosuite's own tree is 591 MB, almost all meshes
  and textures of robots we do not use), plus its dist-info so results.json records its version.
  The assets are found by building every task's env: the compiled MJCF's ``file*=`` attributes
  (meshes, textures, hfields) and every file Python opens under the package while building
  (robot, gripper, mount, arena and object XMLs).
- ``whl/``: cp312 manylinux wheels of the missing packages (`WHEELS`), fetched with README's
  ``pip download`` recipe (docs: /work/.library/device/README.md, Notes).
- ``gl/``: the GL loader debs (libglvnd, libEGL, libOpenGL, ...) that MuJoCo's EGL backend needs.
- ``textcache/``: instruction features (`make_text_cache.py`) since MiniLM is not there either.
- ``MANIFEST.json``: suites, asset list, wheel and deb names, sizes.

``scripts/device/setup_env.sh`` installs it on the machine; ``scripts/device/README.md`` shows a call.

With ``--libero_suites`` (e.g. ``libero_object``) it also builds ``.devbundle_libero/``, carried in a call
of its own (with ``.devbundle`` the pair is over 64 MiB): ``libero_assets.tar.xz`` (only the files of
LIBERO's asset tree that those suites' scenes load, found the same way, plus the entries
`sim.libero_setup` checks for), ``whl/`` (`LIBERO_WHEELS`) and its ``MANIFEST.json``; the robosuite
archive then also holds the robosuite assets those scenes load. ``setup_env.sh`` installs it when present.

Usage:
    .venv/bin/python scripts/device/make_bundle.py                       # embedded_goal scenes
    .venv/bin/python scripts/device/make_bundle.py --suites embedded_goal robosuite_stock
    .venv/bin/python scripts/device/make_bundle.py --libero_suites libero_object
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROBOSUITE_TAR = "robosuite.tar.xz"
# What sim (and vla's config parsing) imports that the machine's image lacks, pinned to this venv's
# versions. Present there and so not carried: numpy, scipy, numba, opencv, pillow, imageio, tqdm, pyyaml,
# cloudpickle, typing-extensions, absl-py, etils, torch, safetensors, transformers.
WHEELS = (
    "mujoco==3.8.1",
    "pyopengl==3.1.10",  # mujoco.egl and robosuite's EGL context
    "termcolor==3.3.0",  # robosuite.utils.log_utils
    "gymnasium==1.4.0",
    "farama-notifications==0.0.6",
    "draccus==0.10.0",
    "mergedeep==1.3.4",
    "pyyaml-include==1.4.1",
    "toml==0.10.2",
    "typing-inspect==0.9.0",  # draccus pins ~=0.9.0; the image's version is not pinned
    "mypy-extensions==1.2.0",
)
# What hf-libero's envs import that the machine lacks (the rest of its long requirement list is never
# imported by sim.envs.libero). bddl ships only an sdist: it is built into a wheel here.
LIBERO_WHEELS = ("hf-libero==0.1.4", "bddl==1.0.1", "easydict==1.14", "future==1.0.0", "dill==0.4.1")
LIBERO_TAR = "libero_assets.tar.xz"
LIBERO_MAX_MIB = 58.0  # it travels alone: a call's 64 MiB less the working tree (~3 MiB) and some room
PIP_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
GL_DEBS = ("libvulkan1", "libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0", "libgles2")
FILE_ATTR = re.compile(r'\bfile\w*="([^"]+)"')  # file=, and a cube texture's fileright= etc.


def robosuite_root() -> Path:
    """The installed robosuite package folder (found without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("robosuite is not installed in this interpreter; run with .venv/bin/python")
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def libero_assets_root() -> Path | None:
    """The real path of the local LIBERO asset tree (`sim.libero_setup`); None without local assets."""
    from sim.libero_setup import resolve_local_assets

    found = resolve_local_assets()
    return None if found is None else Path(os.path.realpath(found))


def collect_assets(suites: list[str]) -> tuple[list[str], list[str]]:
    """Asset files that the suites' envs load: ``(robosuite's, LIBERO's)``, relative to their roots.

    Builds each task's env without rendering and resets it to init state 0. Must run before anything
    imports robosuite in this process, so that the audit hook sees the XMLs robosuite reads at import.
    The second list is empty unless a LIBERO suite is among ``suites``.
    """
    root = robosuite_root()
    lib = libero_assets_root() if any(s.startswith("libero_") for s in suites) else None
    roots = [r for r in (root, lib) if r is not None]
    opened: set[Path] = set()

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | Path):
            p = Path(os.path.realpath(args[0]))
            if any(p.is_relative_to(r) for r in roots):
                opened.add(p)

    sys.addaudithook(hook)
    from sim.configs import RenderConfig
    from sim.suites import get_suite, make_env

    referenced: set[Path] = set()
    for suite in suites:
        for task in get_suite(suite).tasks:
            env = make_env(suite, task.name, render=RenderConfig.off())
            try:
                env.reset(options={"init_state": 0})
                for name in FILE_ATTR.findall(env.rs_env.model.get_xml()):
                    p = Path(os.path.realpath(name))
                    if not p.is_absolute() or not any(p.is_relative_to(r) for r in roots):
                        raise RuntimeError(
                            f"{suite}/{task.name}: asset {name!r} lies outside robosuite ({root})"
                            + (f" and LIBERO's assets ({lib})" if lib else "")
                        )
                    referenced.add(p)
            finally:
                env.close()
    missing = [p for p in referenced if not p.is_file()]
    if missing:
        raise RuntimeError(f"referenced assets missing from the installed packages: {missing[:5]}")
    found = {p for p in referenced | opened if p.is_file()}
    assets = root / "models" / "assets"
    rs = sorted(str(p.relative_to(root)) for p in found if p.is_relative_to(assets))
    lb = sorted(str(p.relative_to(lib)) for p in found if lib is not None and p.is_relative_to(lib))
    return rs, lb


def package_files(root: Path, assets: list[str]) -> list[str]:
    """Files of the trimmed package: everything outside ``models/assets`` (no caches), plus ``assets``."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        if rel_dir.parts[:2] == ("models", "assets"):
            continue
        out.extend(str(rel_dir / f) for f in filenames if not f.endswith((".pyc", ".nbi", ".nbc")))
    return sorted(set(out) | set(assets))


def write_tar(dest: Path, root: Path, files: list[str]) -> int:
    """Write ``robosuite/<files>`` and robosuite's dist-info into a reproducible tar.xz; return its size."""
    dist_dirs = sorted(root.parent.glob("robosuite-*.dist-info"))
    if len(dist_dirs) != 1:
        raise RuntimeError(f"expected one robosuite-*.dist-info beside {root}, found {dist_dirs}")
    dist_dir = dist_dirs[0]

    def add(tar: tarfile.TarFile, src: Path, arcname: str) -> None:
        info = tarfile.TarInfo(arcname)
        data = src.read_bytes()
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        tar.addfile(info, io.BytesIO(data))

    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w:xz", preset=6) as tar:
        for f in files:
            add(tar, root / f, f"robosuite/{f}")
        for f in sorted(dist_dir.iterdir()):
            if f.is_file() and f.name != "RECORD":  # RECORD would list the files we left out
                add(tar, f, f"{dist_dir.name}/{f.name}")
    tmp.replace(dest)
    return dest.stat().st_size


def download_wheels(dest: Path) -> list[str]:
    """Fetch `WHEELS` as cp312 manylinux wheels (README's recipe); keep the ones already there."""
    dest.mkdir(parents=True, exist_ok=True)
    have = {w.name.split("-")[0].lower().replace("_", "-") for w in dest.glob("*.whl")}
    need = [w for w in WHEELS if w.split("==")[0].lower().replace("_", "-") not in have]
    if need:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.12",
            "--implementation",
            "cp",
            "-q",
            "-d",
            str(dest),
        ]
        for p in PIP_PLATFORMS:
            cmd += ["--platform", p]
        subprocess.run([*cmd, *need], check=True)
    wheels = sorted(w.name for w in dest.glob("*.whl"))
    names = [w.split("-")[0].lower() for w in wheels]
    if len(set(names)) != len(names):
        raise RuntimeError(f"two versions of one package in {dest} stop the install there: {wheels}")
    return wheels


def build_wheels(dest: Path, specs: tuple[str, ...]) -> list[str]:
    """``pip wheel --no-deps`` each spec into ``dest``; keep the ones already there.

    Sdists are built here; all of `LIBERO_WHEELS` are pure Python, so the wheels install on the
    machine's Python 3.12.
    """
    dest.mkdir(parents=True, exist_ok=True)
    have = {w.name.split("-")[0].lower().replace("_", "-") for w in dest.glob("*.whl")}
    need = [w for w in specs if w.split("==")[0].lower().replace("_", "-") not in have]
    if need:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), *need], check=True
        )
    wheels = sorted(w.name for w in dest.glob("*.whl"))
    for w in wheels:
        if not w.endswith("-none-any.whl"):
            raise RuntimeError(f"{w} is not a pure-Python wheel; the machine runs CPython 3.12")
    return wheels


def write_libero_tar(dest: Path, lib: Path, files: list[str]) -> int:
    """Write ``libero_assets/<files>`` into a reproducible tar.xz; return its size.

    The entries `sim.libero_setup` checks for a complete tree (the four object folders, the tabletop
    scene) are added too, so ``VLA_LIBERO_ASSETS`` accepts the trimmed folder.
    """
    from sim.libero_setup import REQUIRED_ASSET_ENTRIES

    names = sorted(set(files) | {e for e in REQUIRED_ASSET_ENTRIES if (lib / e).is_file()})
    dirs = sorted(e for e in REQUIRED_ASSET_ENTRIES if (lib / e).is_dir())
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w:xz", preset=6) as tar:
        for d in dirs:
            info = tarfile.TarInfo(f"libero_assets/{d}")
            info.type, info.mtime, info.mode = tarfile.DIRTYPE, 0, 0o755
            tar.addfile(info)
        for f in names:
            data = (lib / f).read_bytes()
            info = tarfile.TarInfo(f"libero_assets/{f}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(dest)
    return dest.stat().st_size


def download_debs(dest: Path) -> list[str]:
    """Fetch the amd64 GL loader debs with apt-get download (README's recipe); keep the ones already there."""
    dest.mkdir(parents=True, exist_ok=True)
    need = [d for d in GL_DEBS if not list(dest.glob(f"{d}_*.deb"))]
    if need:
        lists = Path("/tmp/amd64")
        (lists / "partial").mkdir(parents=True, exist_ok=True)
        opts = ["-oAPT::Architecture=amd64", "-oAPT::Architectures=amd64", f"-oDir::State::Lists={lists}"]
        subprocess.run(["apt-get", *opts, "-qq", "update"], check=True)
        subprocess.run(["apt-get", *opts, "-qq", "download", *need], check=True, cwd=dest)
    return sorted(d.name for d in dest.glob("*.deb"))


def tree_size(path: Path) -> int:
    """Bytes of every file below ``path``."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    """CLI entry: build (or refresh) the bundle and print its size."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / ".devbundle")
    ap.add_argument("--suites", nargs="+", default=["embedded_goal"])
    ap.add_argument("--libero_suites", nargs="*", default=[], help="also build the LIBERO bundle for these")
    ap.add_argument("--libero_out", type=Path, default=REPO / ".devbundle_libero")
    ap.add_argument("--max_mib", type=float, default=40.0, help="fail when the bundle is larger")
    ap.add_argument("--force", action="store_true", help="rewrite the robosuite archive even if unchanged")
    args = ap.parse_args(argv)
    bad = [s for s in args.libero_suites if not s.startswith("libero_")]
    if bad:
        raise SystemExit(f"--libero_suites takes LIBERO suites (libero_object, ...), got {bad}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    root = robosuite_root()
    assets, libero_assets = collect_assets([*args.suites, *args.libero_suites])
    files = package_files(root, assets)
    digest = hashlib.sha256("\n".join(files).encode()).hexdigest()[:16]
    manifest_path = out / "MANIFEST.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    tar = out / ROBOSUITE_TAR
    if args.force or not tar.is_file() or old.get("robosuite_files_sha256") != digest:
        print(
            f"writing {tar} ({len(files)} files, {sum((root / f).stat().st_size for f in files) / 2**20:.1f} "
            "MiB before compression) ...",
            flush=True,
        )
        write_tar(tar, root, files)
    wheels = download_wheels(out / "whl")
    debs = download_debs(out / "gl")
    subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("make_text_cache.py")),
            "--out",
            str(out / "textcache"),
            "--suites",
            "embedded_goal",
            "robosuite_stock",
            *args.libero_suites,
        ],
        check=True,
    )

    import robosuite

    manifest = {
        "suites": [*args.suites, *args.libero_suites],
        "robosuite_version": robosuite.__version__,
        "robosuite_files_sha256": digest,
        "robosuite_assets": assets,
        "robosuite_assets_mib": round(sum((root / a).stat().st_size for a in assets) / 2**20, 2),
        "wheels": wheels,
        "gl_debs": debs,
        "sizes_mib": {
            name: round(
                (tree_size(out / name) if (out / name).is_dir() else (out / name).stat().st_size) / 2**20, 2
            )
            for name in (ROBOSUITE_TAR, "whl", "gl", "textcache")
        },
    }
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    total = tree_size(out) / 2**20
    for name, mib in manifest["sizes_mib"].items():
        print(f"  {name:<18} {mib:6.2f} MiB")
    suites = ", ".join(manifest["suites"])
    print(f"bundle {out}: {total:.2f} MiB ({len(assets)} robosuite asset files for {suites})")
    if total > args.max_mib:
        raise SystemExit(
            f"bundle is {total:.1f} MiB, over --max_mib={args.max_mib}: a run call carries 64 MiB"
        )
    if args.libero_suites:
        write_libero_bundle(args.libero_out, args.libero_suites, libero_assets)


def write_libero_bundle(out: Path, suites: list[str], files: list[str]) -> None:
    """``.devbundle_libero/``: the trimmed LIBERO asset tree, `LIBERO_WHEELS` and a manifest."""
    lib = libero_assets_root()
    if lib is None:
        raise SystemExit("no local LIBERO assets (install the `libero` extra) to trim")
    out.mkdir(parents=True, exist_ok=True)
    write_libero_tar(out / LIBERO_TAR, lib, files)
    wheels = build_wheels(out / "whl", LIBERO_WHEELS)
    manifest = {
        "suites": suites,
        "libero_assets": files,
        "libero_assets_mib": round(sum((lib / f).stat().st_size for f in files) / 2**20, 2),
        "wheels": wheels,
        "sizes_mib": {
            LIBERO_TAR: round((out / LIBERO_TAR).stat().st_size / 2**20, 2),
            "whl": round(tree_size(out / "whl") / 2**20, 2),
        },
    }
    (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = tree_size(out) / 2**20
    print(f"bundle {out}: {total:.2f} MiB ({len(files)} LIBERO asset files for {', '.join(suites)})")
    if total > LIBERO_MAX_MIB:
        raise SystemExit(
            f"LIBERO bundle is {total:.1f} MiB, over {LIBERO_MAX_MIB}: a call carries 64 MiB with the tree"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()

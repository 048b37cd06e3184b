# Make the lent GPU machine ready for `sim` and `vla`: source it from the repo root, with .devbundle carried.
#
#   source scripts/device/setup_env.sh || exit 1
#
# Once per machine (a stamp of .devbundle/MANIFEST.json in the site folder says it is done, so a second
# call on a warm machine costs nothing): unpack the GL loader debs into / (README of the device tool),
# pip-install the bundle's wheels into $VLA_SITE (default /tmp/vla_site) with no index and no deps,
# unpack the trimmed robosuite there, and check that MuJoCo gets an EGL context on the GPU.
# Every time: export PYTHONPATH (site, then the repo), MUJOCO_GL=egl, PYOPENGL_PLATFORM=egl, and
# VLA_TEXT_CACHE (the bundle's instruction feature files, ':'-separated, which vla.language preloads:
# the machine has no MiniLM) unless already set. Build the bundle here with
# scripts/device/make_bundle.py.

_vla_setup() {
  local bundle=${VLA_DEVBUNDLE:-$PWD/.devbundle}
  local site=${VLA_SITE:-/tmp/vla_site}
  if [ ! -f "$bundle/MANIFEST.json" ]; then
    echo "setup_env: no $bundle/MANIFEST.json: build it with scripts/device/make_bundle.py and carry .devbundle" >&2
    return 1
  fi
  local stamp
  stamp=$(sha256sum "$bundle/MANIFEST.json" | cut -c1-16)
  export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
  # glvnd finds NVIDIA's EGL vendor file here on these machines, not in /usr/share (device README).
  local vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  if [ -z "${__EGL_VENDOR_LIBRARY_FILENAMES:-}" ] && [ -f "$vendor" ] \
      && [ ! -f /usr/share/glvnd/egl_vendor.d/10_nvidia.json ]; then
    export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
  fi
  if [ "$(cat "$site/.bundle_stamp" 2>/dev/null)" != "$stamp" ]; then
    local t0=$SECONDS f
    for f in "$bundle"/gl/*.deb; do dpkg -x "$f" / || return 1; done
    ldconfig
    rm -rf "$site" && mkdir -p "$site" || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$bundle"/whl/*.whl || return 1
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
      "$bundle/robosuite.tar.xz" "$site" || return 1
    PYTHONPATH=$site python3 -c '
from mujoco.egl import GLContext
from OpenGL import GL
c = GLContext(8, 8); c.make_current()
print("setup_env: EGL renderer:", GL.glGetString(GL.GL_RENDERER).decode()); c.free()' || {
      echo "setup_env: MuJoCo could not make an EGL context (see above)" >&2; return 1; }
    echo "$stamp" > "$site/.bundle_stamp"
    echo "setup_env: installed $bundle into $site in $((SECONDS - t0)) s"
  fi
  # LIBERO (make_bundle.py --libero_suites ...): carried in a call of its own; installed into the same
  # site (after the main bundle, which would wipe it), with its own stamp.
  local lbundle=${VLA_LIBERO_BUNDLE:-$PWD/.devbundle_libero} lstamp
  if [ -f "$lbundle/MANIFEST.json" ]; then
    lstamp=$(sha256sum "$lbundle/MANIFEST.json" | cut -c1-16)
    if [ "$(cat "$site/.libero_stamp" 2>/dev/null)" != "$lstamp" ]; then
      local t1=$SECONDS
      rm -rf "$site/libero_assets"
      python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$lbundle"/whl/*.whl || return 1
      python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        "$lbundle/libero_assets.tar.xz" "$site" || return 1
      echo "$lstamp" > "$site/.libero_stamp"
      echo "setup_env: installed $lbundle into $site in $((SECONDS - t1)) s"
    fi
  fi
  if [ -f "$site/.libero_stamp" ]; then  # sim.libero_setup writes LIBERO's config and links these assets
    export VLA_LIBERO_ASSETS=$site/libero_assets LIBERO_CONFIG_PATH=${LIBERO_CONFIG_PATH:-$site/libero_config}
  fi
  export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  if [ -z "${VLA_TEXT_CACHE:-}" ] && [ -d "$bundle/textcache" ]; then
    VLA_TEXT_CACHE=$(printf '%s:' "$bundle"/textcache/*.safetensors)
    export VLA_TEXT_CACHE=${VLA_TEXT_CACHE%:}
  fi
  return 0
}
_vla_setup

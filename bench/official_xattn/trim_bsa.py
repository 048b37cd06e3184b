"""Make a trimmed, forward-only copy of mit-han-lab/Block-Sparse-Attention for one H200 build.

The official sources are never committed: they live in ``.official/`` (git-ignored). This script
copies ``.official/Block-Sparse-Attention`` to ``--dst`` and edits the copy so that exactly the
kernels XAttention's prefill launches on an sm_90 card are compiled:

* head dim 128 only (``HEADDIM_SWITCH``), bf16 and fp16, causal and non-causal (4 .cu files);
* in ``run_flash_fwd_block`` / ``run_mha_fwd_block_hdim128`` each runtime switch is pinned to the
  value the varlen API always takes for these inputs (no dropout, no returned softmax, no exact
  streaming, no local window, ``cu_seqlens`` given so ``is_even_MN`` is false, ``d == 128`` so
  ``is_even_K`` is true, not sm8x). A pinned switch checks its condition at run time and throws if
  it would have chosen the other branch, so the trimmed build never runs a kernel the full build
  would not have run; it fails loudly instead;
* no backward kernels (``bwd_block`` throws).

Each edit must match the expected number of times, so a different upstream commit fails here, not
at link time. Also writes ``setup_trimmed.py`` (a plain ``CUDAExtension`` build; the upstream
``setup.py`` calls git and tries to download wheels).

Usage: ``python bench/official_xattn/trim_bsa.py --src .official/Block-Sparse-Attention --dst /tmp/bsa``
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

KERNEL_SOURCES = [
    "csrc/block_sparse_attn/src/flash_fwd_block_hdim128_bf16_causal_sm80.cu",
    "csrc/block_sparse_attn/src/flash_fwd_block_hdim128_bf16_sm80.cu",
    "csrc/block_sparse_attn/src/flash_fwd_block_hdim128_fp16_causal_sm80.cu",
    "csrc/block_sparse_attn/src/flash_fwd_block_hdim128_fp16_sm80.cu",
]

TRIM_MACROS = r"""
// ---- trimmed build (bench/official_xattn/trim_bsa.py) ----
#include <stdexcept>
#define BSA_TRIM_ONLY(VALUE, COND, CONST_NAME, ...)                                        \
  [&] {                                                                                    \
    if (bool(COND) != (VALUE)) {                                                           \
      throw std::runtime_error("block_sparse_attn trimmed build: " #CONST_NAME             \
                               " must be " #VALUE " (this variant was not compiled)");     \
    }                                                                                      \
    constexpr static bool CONST_NAME = VALUE;                                              \
    return __VA_ARGS__();                                                                  \
  }()
#define BSA_ONLY_FALSE(COND, CONST_NAME, ...) BSA_TRIM_ONLY(false, COND, CONST_NAME, __VA_ARGS__)
#define BSA_ONLY_TRUE(COND, CONST_NAME, ...) BSA_TRIM_ONLY(true, COND, CONST_NAME, __VA_ARGS__)
#define HEADDIM_SWITCH(HEADDIM, ...)                                                       \
  [&] {                                                                                    \
    if ((HEADDIM) != 128) {                                                                \
      throw std::runtime_error("block_sparse_attn trimmed build: head dim 128 only");      \
    }                                                                                      \
    constexpr static int kHeadDim = 128;                                                   \
    return __VA_ARGS__();                                                                  \
  }()
"""

SM8X_GUARD = (
    "constexpr static bool is_sm8x = false; "
    "if (cc_major == 8 && cc_minor > 0) { "
    'throw std::runtime_error("block_sparse_attn trimmed build: sm8x tiles not compiled"); }'
)

# (file, old, new, expected count)
EDITS = [
    (
        "csrc/block_sparse_attn/src/flash_fwd_launch_template.h",
        "BOOL_SWITCH(is_even_MN, IsEvenMNConst",
        "BSA_ONLY_FALSE(is_even_MN, IsEvenMNConst",
        1,
    ),
    (
        "csrc/block_sparse_attn/src/flash_fwd_launch_template.h",
        "BOOL_SWITCH(is_even_K, IsEvenKConst",
        "BSA_ONLY_TRUE(is_even_K, IsEvenKConst",
        1,
    ),
    (
        "csrc/block_sparse_attn/src/flash_fwd_launch_template.h",
        "BOOL_SWITCH((params.window_size_left >= 0 || params.window_size_right >= 0) && !Is_causal, Is_local",
        "BSA_ONLY_FALSE((params.window_size_left >= 0 || params.window_size_right >= 0) && !Is_causal, "
        "Is_local",
        1,
    ),
    (
        "csrc/block_sparse_attn/src/flash_fwd_launch_template.h",
        "BOOL_SWITCH(return_softmax, ReturnSoftmaxConst",
        "BSA_ONLY_FALSE(return_softmax, ReturnSoftmaxConst",
        1,
    ),
    (
        "csrc/block_sparse_attn/src/flash_fwd_launch_template.h",
        "BOOL_SWITCH(params.is_exact_streaming, Is_exact_streaming",
        "BSA_ONLY_FALSE(params.is_exact_streaming, Is_exact_streaming",
        1,
    ),
    (
        "csrc/block_sparse_attn/src/flash_fwd_launch_template.h",
        "BOOL_SWITCH(params.p_dropout < 1.f, Is_dropout",
        "BSA_ONLY_FALSE(params.p_dropout < 1.f, Is_dropout",
        3,  # hdim 32, 64, 128 launchers (only 128 is instantiated)
    ),
    (
        "csrc/block_sparse_attn/src/flash_fwd_launch_template.h",
        "bool is_sm8x = cc_major == 8 && cc_minor > 0;",
        SM8X_GUARD,
        1,
    ),
    (
        "csrc/block_sparse_attn/src/flash_fwd_launch_template.h",
        "if (is_sm8x) {",
        "if constexpr (is_sm8x) {",
        1,
    ),
    (
        "csrc/block_sparse_attn/flash_api.cpp",
        "run_mha_bwd_block_<elem_type, kHeadDim, Is_causal>(params, stream);",
        'throw std::runtime_error("block_sparse_attn trimmed build: forward only");',
        1,
    ),
]

SETUP_TRIMMED = '''"""Trimmed block_sparse_attn_cuda build (written by bench/official_xattn/trim_bsa.py)."""
import os
from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

here = Path(__file__).resolve().parent
arch = os.environ.get("BSA_ARCH", "90")
nvcc = [
    "-O3", "-std=c++17",
    "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
    "-U__CUDA_NO_HALF2_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
    "-gencode", f"arch=compute_{arch},code=sm_{arch}",
]
setup(
    name="block_sparse_attn",
    version="0.0.2+trimmed",
    packages=["block_sparse_attn", "block_sparse_attn.utils"],
    ext_modules=[
        CUDAExtension(
            name="block_sparse_attn_cuda",
            sources=%(sources)r,
            extra_compile_args={"cxx": ["-O3", "-std=c++17"], "nvcc": nvcc},
            include_dirs=[
                str(here / "csrc" / "block_sparse_attn"),
                str(here / "csrc" / "block_sparse_attn" / "src"),
                str(here / "csrc" / "cutlass" / "include"),
            ],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
'''


def trim(src: Path, dst: Path) -> list[str]:
    """Copy ``src`` to ``dst`` (replacing it), apply the edits; return the compiled source list."""
    src, dst = Path(src), Path(dst)
    if not (src / "csrc/block_sparse_attn/flash_api.cpp").is_file():
        raise SystemExit(
            f"{src} is not a Block-Sparse-Attention checkout (see bench/official_xattn/README.md)"
        )
    if not (src / "csrc/cutlass/include/cute/tensor.hpp").is_file():
        raise SystemExit(f"{src}/csrc/cutlass/include is missing (copy NVIDIA/cutlass include/ there)")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    switch = dst / "csrc/block_sparse_attn/src/static_switch.h"
    text = switch.read_text()
    start = text.index("#define HEADDIM_SWITCH")
    end = text.index("}()", start) + len("}()")
    switch.write_text(text[:start] + TRIM_MACROS + text[end:])
    for rel, old, new, count in EDITS:
        path = dst / rel
        text = path.read_text()
        found = text.count(old)
        if found != count:
            raise SystemExit(f"trim_bsa: expected {count}x {old!r} in {rel}, found {found}")
        path.write_text(text.replace(old, new))
    sources = ["csrc/block_sparse_attn/flash_api.cpp", *KERNEL_SOURCES]
    for rel in sources:
        if not (dst / rel).is_file():
            raise SystemExit(f"trim_bsa: missing {rel}")
    (dst / "setup_trimmed.py").write_text(SETUP_TRIMMED % {"sources": sources})
    return sources


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", default=".official/Block-Sparse-Attention")
    ap.add_argument("--dst", default="/tmp/bsa")
    args = ap.parse_args()
    for s in trim(Path(args.src), Path(args.dst)):
        print(s)


if __name__ == "__main__":
    main()

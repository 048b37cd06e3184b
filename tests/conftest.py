"""Test-wide settings: headless rendering, offline hubs and Triton's CPU interpreter, before anything
imports MuJoCo, HF or a Triton kernel (kernels are bound to the interpreter when first decorated, so
a test module outside tests/kernels that imports them first would otherwise fix the GPU driver)."""

import os

import torch

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

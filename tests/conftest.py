"""Test-session setup shared by every test folder.

Only one job here: without a CUDA device, run the Triton kernels through Triton's CPU
interpreter. ``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates the kernels, i.e.
when ``kernels.splat`` etc. are first imported, so it must be set before any test module
imports ``kernels`` -- the root conftest is loaded before all of them, whatever the order.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

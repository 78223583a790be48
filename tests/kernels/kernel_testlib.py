"""Helpers for the kernel parity tests (imported by basename: tests/kernels has no
``__init__.py``, which would shadow the real ``kernels`` package)."""

from __future__ import annotations

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="No CUDA device")


def assert_parity(out, ref, rel_l2: float, max_abs: float, name: str = "") -> None:
    """All finite, relative L2 error <= rel_l2 and max abs error <= max_abs (max_abs is
    relative to max(1, max |ref|) so large outputs such as depth get the same slack)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert out.dtype == ref.dtype, f"{name}: dtype {out.dtype} != {ref.dtype}"
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten element?)"
    err = (out - ref).norm().item()
    den = ref.norm().item()
    assert err <= rel_l2 * max(den, 1e-30) or err <= max_abs, (
        f"{name}: rel L2 {err / max(den, 1e-30):.3g} > {rel_l2:g}"
    )
    mae = (out - ref).abs().max().item()
    scale = max(1.0, ref.abs().max().item())
    assert mae <= max_abs * scale, f"{name}: max abs {mae:.3g} > {max_abs:g} * {scale:.3g}"


def errors(out, ref) -> tuple[float, float]:
    """``(relative L2 error, max abs error relative to max(1, max |ref|))`` of ``out``
    against ``ref``, in float64 on the CPU."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    d = out - ref
    return (
        d.norm().item() / max(ref.norm().item(), 1e-300),
        d.abs().max().item() / max(1.0, ref.abs().max().item()),
    )


def assert_as_close_as_reference(out, ref, exact, factor: float, floor: tuple, name=""):
    """``out`` (a kernel's result) is at most ``factor`` times as far from ``exact`` as the
    eager reference ``ref`` is, plus ``floor`` = (rel_l2, max_abs), in both measures of
    :func:`errors`. ``out`` and ``ref`` are computed in the same precision (float32) from
    the same inputs, ``exact`` in float64 from those inputs cast to float64: it measures
    the kernel's error instead of its distance to another float32 computation, and a
    kernel bug (1% off while the reference is 1e-6 off) still fails. Returns the errors
    ``{"kernel": (rel, abs), "reference": (rel, abs)}``."""
    assert out.shape == ref.shape == exact.shape, f"{name}: shapes differ"
    assert torch.isfinite(out).all(), f"{name}: non-finite values (unwritten element?)"
    ek, er = errors(out, exact), errors(ref, exact)
    for i, what in enumerate(("rel L2", "max abs")):
        bound = factor * er[i] + floor[i]
        assert ek[i] <= bound, (
            f"{name}: {what} against float64 {ek[i]:.3g} > {factor:g} x the float32 "
            f"reference's {er[i]:.3g} + {floor[i]:g} (kernel rel L2 {ek[0]:.3g}, max abs "
            f"{ek[1]:.3g}; reference {er[0]:.3g}, {er[1]:.3g})"
        )
    return {"kernel": ek, "reference": er}


# Per-dtype tolerances: (rel_l2, max_abs). float32 outputs are sums of up to K^3 or D
# terms in a different order than the reference; gradients go through atomics (splat)
# and a different recursion (projection), hence the looser gradient bounds.
TOL = {
    torch.float32: {"fwd": (1e-6, 1e-5), "bwd": (1e-5, 1e-4)},
    torch.float64: {"fwd": (1e-12, 1e-11), "bwd": (1e-11, 1e-10)},
}


def occupancy_input(shape, gen, dtype):
    """Splat-like volume: half zeros, values in (-0.2, 2.2): some > 1 (clipped before the
    blur) and a few negative (never from a splat, but the clip must handle them)."""
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * 2.4 - 0.2
    x = torch.where(torch.rand(shape, generator=gen, dtype=torch.float64) < 0.5, 0.0, x)
    return x.to(dtype).to(DEVICE)

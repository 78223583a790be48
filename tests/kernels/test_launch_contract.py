"""What the launchers hand to the kernels, beyond parity: float64 scalars reach float64
kernels exactly, gradients are deterministic, blur taps are cached, launches run on the
tensors' device, and no renderer op synchronises the host.

The interpreter keeps Python doubles, so a float64 parity test alone cannot catch a
scalar that the compiled kernel would receive as fp32 (``mangle_type(2.1) == "fp32"``):
``test_no_python_float_reaches_a_runtime_argument`` checks every launch's arguments the
way the compiler types them.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from kernel_testlib import DEVICE, HAS_CUDA, TOL, assert_parity
from triton.runtime.jit import mangle_type

import kernels
import kernels.blur
import kernels.fused
import kernels.project
import kernels.splat
from kernels.blur import taps_for
from kernels.reference import gaussian_kernel1d, ray_project_ref

KERNEL_MODULES = (kernels.splat, kernels.blur, kernels.project, kernels.fused)


def _jit_kernels(mod):
    return {n: k for n, k in vars(mod).items() if n.endswith("_kernel") and hasattr(k, "fn")}


@pytest.fixture
def launches(monkeypatch):
    """Record (kernel name, {param: value}, constexpr names) of every kernel launch."""
    seen = []

    class Recorder:
        def __init__(self, name, k):
            self.name, self.k = name, k
            sig = inspect.signature(k.fn)
            self.params = list(sig.parameters)
            self.const = {n for n, p in sig.parameters.items() if "constexpr" in str(p.annotation)}

        def __getitem__(self, grid):
            def launch(*args, **kw):
                bound = dict(zip(self.params, args)) | kw
                seen.append((self.name, bound, self.const))
                return self.k[grid](*args, **kw)

            return launch

    for mod in KERNEL_MODULES:
        for name, k in _jit_kernels(mod).items():
            monkeypatch.setattr(mod, name, Recorder(name, k))
    return seen


def _render_everything(dtype, variant):
    """A float64 render through every kernel: splat (with colours), fused and plain blur,
    both projections, forward and backward."""
    from dpc.render import PointCloudRenderer, RenderSettings

    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(2, 60, 3, generator=g, dtype=dtype) - 0.5).to(DEVICE).requires_grad_()
    q = torch.randn(2, 4, generator=g, dtype=dtype).to(DEVICE)
    s = (torch.rand(2, generator=g, dtype=dtype) + 0.5).to(DEVICE).requires_grad_()
    col = torch.rand(2, 60, 3, generator=g, dtype=dtype).to(DEVICE).requires_grad_()
    st = dict(vox_size=16, kernel_size=5, camera_distance=2.1, background=0.1, max_depth=9.7)
    r = PointCloudRenderer(RenderSettings(backend="triton", kernel_variant=variant, **st))
    out = r(pts, q, 1.3, scale=s, return_depth=True)
    (out.silhouette.sum() + out.depth.sum()).backward()
    out = r(pts, q, 1.3, scale=s, colors=col, return_depth=True, return_probs=True)
    (out.silhouette.sum() + out.color.sum() + out.probs.sum()).backward()


@pytest.mark.parametrize("variant", ["passes", "fused"])
def test_no_python_float_reaches_a_runtime_argument(launches, variant):
    """Every non-constexpr argument of every launch in a float64 render is typed as the
    compiler would type it: no fp32 scalar (floats must be constexprs or tensors)."""
    _render_everything(torch.float64, variant)
    names = {n for n, _, _ in launches}
    assert names, "no kernel was launched"
    for name, bound, const in launches:
        for param, value in bound.items():
            if param in const or param in ("num_warps", "num_stages"):
                continue
            ty = mangle_type(value)
            assert ty != "fp32" and not isinstance(value, float), (
                f"{name}: argument {param}={value!r} would be compiled as {ty}"
            )
            if isinstance(value, torch.Tensor):
                assert value.dtype == torch.float64 or not value.is_floating_point(), (
                    f"{name}: {param} is {value.dtype} in a float64 render"
                )


def test_float64_scalars_not_exact_in_fp32(gen):
    """Camera distance 2.1, background 0.1, max depth 9.7 (not exact in fp32): float64
    depth and colour to float64 precision (fp32 rounding would be off by ~1e-7)."""
    from kernel_testlib import TOL as _TOL  # noqa: F401

    occ = torch.rand(2, 1, 7, 5, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    occ.requires_grad_()
    col = torch.rand(2, 2, 7, 5, 6, generator=gen, dtype=torch.float64).to(DEVICE)
    kw = dict(camera_distance=2.1, max_depth=9.7, background=0.1, return_probs=True)
    out = kernels.ray_project(occ, col, backend="triton", **kw)
    ref = ray_project_ref(occ, col, **kw)
    for name, a, r in zip(("silhouette", "depth", "color", "probs"), out, ref):
        torch.testing.assert_close(a, r, rtol=1e-13, atol=1e-13, msg=name)
    g = torch.autograd.grad(out.depth.sum() + out.color.sum(), occ)[0]
    g_r = torch.autograd.grad(ref.depth.sum() + ref.color.sum(), occ)[0]
    assert_parity(g, g_r, *TOL[torch.float64]["bwd"], name="grad_occupancy")


def test_blur_occupancy_grad_scale_deterministic(gpu_blocks, gen):
    """d(scale) is a two-stage reduction (per-tile partials, then a fixed-order sum), not
    float atomics: repeated backward passes agree bit for bit (gradcheck's reentrancy
    check needs that on a GPU)."""
    x = torch.rand(3, 1, 9, 10, 150, generator=gen, dtype=torch.float64).to(DEVICE)
    x.requires_grad_()
    s = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).to(DEVICE).requires_grad_()
    y = kernels.blur_occupancy(x, 1.5, 5, s, backend="triton")
    v = torch.randn(y.shape, generator=gen, dtype=torch.float64).to(DEVICE)
    grads = [torch.autograd.grad(y, (x, s), v, retain_graph=True) for _ in range(3)]
    for gx, gs in grads[1:]:
        assert torch.equal(gx, grads[0][0]) and torch.equal(gs, grads[0][1])


def test_blur_taps_cached_per_key():
    like = torch.zeros(1, dtype=torch.float64, device=DEVICE)
    a = taps_for(1.7, 9, like)
    assert taps_for(1.7, 9, like) is a  # cached: no device work the second time
    assert taps_for(1.7, 9, like.float()) is not a  # dtype is part of the key
    assert taps_for(1.8, 9, like) is not a
    torch.testing.assert_close(a, gaussian_kernel1d(1.7, 9, dtype=torch.float64).to(DEVICE))
    # Built on the device with the reference's formula: the same bits as the reference
    # built there, and no host-to-device copy (issue 22: graph capture, stream syncs).
    assert a.device == like.device
    assert torch.equal(a, gaussian_kernel1d(1.7, 9, dtype=torch.float64, device=DEVICE))


def test_blur_taps_make_no_host_copy(monkeypatch):
    """Taps for a new sigma come from device kernels alone: no Tensor.to / copy_."""
    from kernels import blur

    def no_copy(*a, **k):
        raise AssertionError("taps copied from the host")

    like = torch.zeros(1, device=DEVICE)
    monkeypatch.setattr(torch.Tensor, "to", no_copy)
    monkeypatch.setattr(torch.Tensor, "copy_", no_copy)
    blur._taps_cached.cache_clear()
    taps = taps_for(0.731, 21, like)
    assert taps.shape == (21,) and taps.device == like.device


def test_render_has_no_host_sync(monkeypatch):
    """The training path never reads a device value back: make every host read-back
    (Tensor.item / bool / tolist) raise during a render forward and backward."""
    from dpc.render import PointCloudRenderer, RenderSettings

    def boom(*a, **k):
        raise AssertionError("host synchronisation on the render path")

    g = torch.Generator().manual_seed(1)
    pts = (torch.rand(2, 50, 3, generator=g) - 0.5).to(DEVICE).requires_grad_()
    q = torch.randn(2, 4, generator=g).to(DEVICE)
    s = (torch.rand(2, generator=g) + 0.5).to(DEVICE).requires_grad_()
    for variant in ("passes", "fused"):
        st = RenderSettings(vox_size=12, kernel_size=3, backend="triton", kernel_variant=variant)
        r = PointCloudRenderer(st)
        r(pts, q, 1.0, scale=s)  # warm the taps cache (first use builds them)
        with monkeypatch.context() as m:
            for name in ("item", "__bool__", "tolist"):
                m.setattr(torch.Tensor, name, boom)
            out = r(pts, q, 1.0, scale=s)
            out.silhouette.sum().backward()


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_second_device_cuda():
    """Tensors on cuda:1 while cuda:0 is current: every launch must run on cuda:1."""
    torch.cuda.set_device(0)
    g = torch.Generator().manual_seed(0)
    pts = (torch.rand(4, 2000, 3, generator=g) - 0.5).requires_grad_()
    q = torch.randn(4, 4, generator=g)
    s = torch.rand(4, generator=g) + 0.5
    from dpc.render import PointCloudRenderer, RenderSettings

    outs = []
    for dev, backend in (("cuda:1", "triton"), ("cpu", "reference")):
        for variant in ("passes", "fused"):
            r = PointCloudRenderer(
                RenderSettings(vox_size=32, kernel_size=7, backend=backend, kernel_variant=variant)
            )
            p = pts.detach().to(dev).requires_grad_()
            out = r(p, q.to(dev), 1.5, scale=s.to(dev), return_depth=True)
            (out.silhouette.sum() + out.depth.sum()).backward()
            outs.append((out.silhouette.cpu(), p.grad.cpu()))
    for sil, gp in outs[:2]:
        assert_parity(sil, outs[2][0], 1e-5, 1e-4, name="silhouette")
        assert_parity(gp, outs[2][1], 1e-4, 1e-3, name="grad_points")

"""kernels.cpu.nearest against the torch oracle (cdist + argmin).

Without numba ``nearest_index_cpu`` *is* cdist + argmin, so the comparison would test
the oracle against itself: the module needs numba, and checks that the numba pass is
the one taken."""

import pytest
import torch

pytest.importorskip("numba")

from kernels.cpu import nearest_index_cpu  # noqa: E402
from kernels.cpu._jit import HAVE_NUMBA  # noqa: E402


def test_the_numba_pass_is_the_one_tested():
    assert HAVE_NUMBA, "numba imports but kernels.cpu._jit fell back to torch"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 7, 1), (2, 1, 13), (4, 257, 1001)])
def test_matches_cdist_argmin(dtype, shape):
    B, S, N = shape
    g = torch.Generator().manual_seed(B * 1000 + S + N)
    q = torch.rand(B, S, 3, generator=g, dtype=dtype) - 0.5
    p = torch.rand(B, N, 3, generator=g, dtype=dtype) - 0.5
    got = nearest_index_cpu(q, p)
    want = torch.cdist(q.double(), p.double()).argmin(-1)
    d = lambda i: (p.gather(1, i[..., None].expand(-1, -1, 3)) - q).square().sum(-1)
    # the same point, or (ties / float32 rounding) one at the same distance
    assert got.dtype == torch.int64 and got.shape == (B, S)
    assert torch.allclose(d(got), d(want), rtol=1e-5, atol=1e-7)


def test_ties_take_the_first_point_and_batches_stay_apart():
    p = torch.tensor(
        [[[1.0, 0, 0], [-1.0, 0, 0], [1.0, 0, 0]], [[5.0, 0, 0], [0, 0, 0], [9, 9, 9]]]
    )
    q = torch.zeros(2, 1, 3)
    assert nearest_index_cpu(q, p).tolist() == [[0], [1]]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"q \[B, S, 3\]"):
        nearest_index_cpu(torch.zeros(2, 3), torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match="no points"):
        nearest_index_cpu(torch.zeros(1, 2, 3), torch.zeros(1, 0, 3))

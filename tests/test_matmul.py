"""The decode step's matmul layouts give F.linear's results for every row count and both oneDNN settings."""

import pytest
import torch
import torch.nn.functional as F

from troubadour.matmul import few_rows_linear, onednn_linear_works


@pytest.mark.parametrize("onednn", [False, True])
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 32, 33, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_f_linear(rows, onednn, bias):
    if onednn and not onednn_linear_works():
        pytest.skip("this PyTorch build has no oneDNN linear")
    torch.manual_seed(rows)
    w = torch.randn(96, 256)
    b = torch.randn(96) if bias else None
    x = torch.randn(rows, 1, 256)
    y = few_rows_linear(x, w, b, onednn)
    assert y.shape == (rows, 1, 96) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, w, b), atol=1e-4, rtol=1e-5)


def test_onednn_is_found_on_x86_cpu_builds():
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("oneDNN's linear is only promised on x86 builds here")
    assert onednn_linear_works()


@pytest.mark.parametrize("bias", [False, True])
def test_fused_linears_give_the_parts_and_share_their_memory(bias):
    from troubadour.matmul import fuse_linears

    parts = [torch.nn.Linear(16, n, bias=bias) for n in (4, 6, 5)]
    x = torch.randn(3, 16)
    before = [p(x).detach() for p in parts]
    fused = fuse_linears(parts)
    torch.testing.assert_close(fused(x).detach(), torch.cat(before, dim=1))
    for p, b in zip(parts, before):   # the originals still work, now as views of the fused weight
        torch.testing.assert_close(p(x).detach(), b)
        assert p.weight.untyped_storage().data_ptr() == fused.weight.untyped_storage().data_ptr()

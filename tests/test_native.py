"""The native decode kernel (gemv.c through native.py): built once per machine into its cache folder, equal
to F.linear (and its decode-step attention to scaled_dot_product_attention), and optional: every way it can be missing leaves the engine on PyTorch's matmuls with a reason."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import native_kernel_expected
from troubadour import native
from troubadour.matmul import few_rows_linear

pytestmark = pytest.mark.skipif(not native_kernel_expected(),
                                reason="not Linux with a C compiler (.ci/run installs gcc)")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A kernel built from nothing into an empty folder."""
    monkeypatch.setenv("TROUBADOUR_NATIVE_DIR", str(tmp_path))
    native.reset()
    yield tmp_path
    native.reset()


def test_builds_once_into_its_folder_and_is_reused(fresh):
    k = native.kernel()
    assert k is not None, native.why_not()
    assert k.path.parent == fresh and k.path.name.startswith("gemv-") and k.path.suffix == ".so"
    built = k.path.stat().st_mtime_ns
    native.reset()
    again = native.kernel()
    assert again.path == k.path and again.path.stat().st_mtime_ns == built   # loaded, not rebuilt
    assert [p.name for p in fresh.iterdir()] == [k.path.name]                # no temporary files left


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("width", [64, 1000, 2100, 4096])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_f_linear(fresh, rows, width, bias):
    """Widths with and without a tail past the vector blocks, and past one column block (1024); an output
    count that is not a whole number of row groups (32)."""
    k = native.kernel()
    torch.manual_seed(width + rows)
    w = torch.randn(201, width) / width ** 0.5   # scaled like a trained layer: outputs of order 1
    b = torch.randn(201) if bias else None
    x = torch.randn(rows, 1, width)
    y = few_rows_linear(x, w, b, onednn=False, gemv=k)
    assert y.shape == (rows, 1, 201) and y.is_contiguous()
    torch.testing.assert_close(y, F.linear(x, w, b), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(k(x.reshape(rows, width), w, b), F.linear(x.reshape(rows, width), w, b),
                               atol=1e-4, rtol=1e-5)


def test_non_contiguous_inputs_and_weight_views(fresh):
    """A transposed input is copied first; a fused weight's row slice (how q/k/v are held) is read in place;
    a column slice (not contiguous) goes to PyTorch."""
    k = native.kernel()
    x = torch.randn(256, 2).t()
    big = torch.randn(300, 256)
    for w in (big[100:200], big[:, :128]):
        xx = x[:, :w.shape[1]]
        torch.testing.assert_close(few_rows_linear(xx, w, None, False, k), F.linear(xx, w), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("rows,heads,d", [(2, 16, 64), (1, 2, 16), (8, 24, 64), (6, 4, 128), (3, 3, 256)])
@pytest.mark.parametrize("length", [1, 2, 37, 1500])
def test_attend_equals_scaled_dot_product_attention(fresh, rows, heads, d, length):
    """A decode step's self-attention as the engine calls it: q a view into the fused q/k/v output, k and v
    the first `length` positions of a longer preallocated cache."""
    k = native.kernel()
    torch.manual_seed(rows * 1000 + length)
    q = torch.randn(rows, 1, 3 * heads * d).view(rows, 1, 3, heads, d).unbind(2)[0]
    kc, vc = (torch.randn(rows, heads, length + 9, d) for _ in range(2))
    scale = d ** -0.5
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), kc[:, :, :length], vc[:, :, :length], scale=scale)
    got = k.attend(q, kc, vc, length, scale)
    assert got.shape == (rows, 1, heads * d)
    torch.testing.assert_close(got, ref.transpose(1, 2).reshape(rows, 1, heads * d), atol=1e-5, rtol=1e-4)


def test_attend_with_a_length_per_row_equals_masked_attention(fresh):
    """The text cross-attention: each row attends to its own prompt's tokens (right-padded), one int64 each."""
    k = native.kernel()
    torch.manual_seed(3)
    q = torch.randn(4, 1, 3, 32)
    kk, vv = torch.randn(4, 3, 9, 32), torch.randn(4, 3, 9, 32)
    lengths = torch.tensor([9, 2, 5, 1])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    bias = torch.zeros(4, 1, 1, 9).masked_fill(~mask[:, None, None, :], float("-inf"))
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), kk, vv, attn_mask=bias, scale=0.2)
    torch.testing.assert_close(k.attend(q, kk, vv, 9, 0.2, lengths), ref.transpose(1, 2).reshape(4, 1, -1),
                               atol=1e-5, rtol=1e-4)
    for bad in (torch.tensor([9, 2, 0, 1]), torch.tensor([9, 2, 10, 1])):
        with pytest.raises(ValueError, match="row length"):
            k.attend(q, kk, vv, 9, 0.2, bad)
    with pytest.raises(ValueError, match="int64"):
        k.attend(q, kk, vv, 9, 0.2, lengths.to(torch.int32))


def test_attend_takes_any_cache_length(fresh):
    """Its scores live in a scratch tensor, not on an OpenMP thread's stack."""
    k = native.kernel()
    q, kc, vc = torch.randn(2, 1, 2, 16), torch.randn(2, 2, 40000, 16), torch.randn(2, 2, 40000, 16)
    ref = F.scaled_dot_product_attention(q.transpose(1, 2), kc, vc, scale=0.25).transpose(1, 2).reshape(2, 1, 32)
    torch.testing.assert_close(k.attend(q, kc, vc, 40000, 0.25), ref, atol=1e-5, rtol=1e-4)


def test_attend_refuses_what_it_does_not_take(fresh):
    k = native.kernel()
    q = torch.randn(2, 1, 4, 20)                       # head size not a multiple of 16
    kc = torch.randn(2, 4, 10, 20)
    with pytest.raises(ValueError, match="head size 20"):
        k.attend(q, kc, kc.clone(), 5, 1.0)
    q = torch.randn(2, 1, 4, 16)
    kc = torch.randn(2, 4, 16, 10).transpose(2, 3)     # positions not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        k.attend(q, kc, kc.clone(), 5, 1.0)


@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("width,panels", [(64, 1), (128, 3), (512, 8)])
def test_panels_equal_f_linear(fresh, rows, width, panels):
    """Weights stored as column panels (panels.py), a row slice of them (how q/k/v sit in the fused qkv) with
    an output count that is not a whole number of output groups (4 or 2)."""
    k = native.kernel()
    torch.manual_seed(rows * width + panels)
    n = width * panels
    w = torch.randn(211, n) / n ** 0.5
    b = torch.randn(201)
    p = w.view(211, panels, width).transpose(0, 1).contiguous()[:, 7:208]
    x = torch.randn(rows, n)
    torch.testing.assert_close(k.panels(x, p, b), F.linear(x, w[7:208], b), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(k.panels(x, p, None), F.linear(x, w[7:208]), atol=1e-4, rtol=1e-5)


def test_panels_refuse_what_they_do_not_take(fresh):
    k = native.kernel()
    with pytest.raises(ValueError):
        k.panels(torch.randn(9, 128), torch.randn(2, 8, 64), None)        # 9 rows
    with pytest.raises(ValueError):
        k.panels(torch.randn(2, 64), torch.randn(2, 8, 32), None)         # 32 wide: not a multiple of 64
    with pytest.raises(ValueError, match="contiguous"):
        k.panels(torch.randn(2, 128), torch.randn(2, 64, 8).transpose(1, 2), None)


def test_more_rows_are_refused_by_the_kernel_and_routed_elsewhere(fresh):
    k = native.kernel()
    x, w = torch.randn(9, 64), torch.randn(8, 64)
    with pytest.raises(ValueError):
        k(x, w, None)
    torch.testing.assert_close(few_rows_linear(x, w, None, False, k), F.linear(x, w), atol=1e-4, rtol=1e-5)


def test_uses_pytorchs_thread_count(fresh):
    k = native.kernel()
    x, w = torch.randn(2, 512), torch.randn(4096, 512)
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            torch.testing.assert_close(k(x, w, None), F.linear(x, w), atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(old)


def _load_in_a_new_process(folder) -> str:
    code = ("from troubadour import native; k = native.kernel(); "
            "print(k.path if k else 'NONE ' + native.why_not())")
    env = {**os.environ, "TROUBADOUR_NATIVE_DIR": str(folder)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


def test_a_damaged_kernel_file_is_rebuilt(fresh):
    """(In a new process: this one keeps the loaded library mapped, and replacing it in place would crash it;
    the kernel's own builds replace the file with a new one, never in place.)"""
    path = native.kernel().path
    path.unlink()
    path.write_bytes(b"not a shared library")
    out = _load_in_a_new_process(fresh).communicate(timeout=300)[0].strip()
    assert out == str(path) and path.read_bytes()[:4] == b"\x7fELF"


def test_no_compiler_means_pytorch_with_a_reason(fresh, monkeypatch):
    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    assert native.kernel() is None
    assert "no-such-cc" in native.why_not()
    x, w = torch.randn(2, 300), torch.randn(50, 300)
    torch.testing.assert_close(few_rows_linear(x, w, None, False, native.kernel()), F.linear(x, w),
                               atol=1e-4, rtol=1e-5)


def test_a_failing_compiler_is_reported(fresh, monkeypatch):
    monkeypatch.setenv("CC", shutil.which("false"))
    assert native.kernel() is None and "failed" in native.why_not()


def test_turned_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("TROUBADOUR_NATIVE", "0")
    assert native.kernel() is None and "TROUBADOUR_NATIVE=0" in native.why_not()
    assert not any(fresh.iterdir())


def test_two_processes_building_at_once_both_load_it(fresh):
    procs = [_load_in_a_new_process(fresh) for _ in range(3)]
    outs = {p.communicate(timeout=300)[0].strip() for p in procs}
    assert len(outs) == 1 and not outs.pop().startswith("NONE")
    assert len(list(fresh.iterdir())) == 1

"""The decode step's native matmul kernel (gemv.c): built with the machine's C compiler on first use, then
loaded from a cache folder.

Optional by design: without a compiler, without OpenMP (Apple clang), on Windows, or when the built kernel
disagrees with F.linear on a self-check, `kernel()` returns None with the reason in `why_not()` and the engine
keeps PyTorch's matmuls. TROUBADOUR_NATIVE=0 turns it off; TROUBADOUR_NATIVE_DIR moves the cache folder.
The file name carries a hash of the source, the compiler and the CPU, so a cache folder shared between
machines (a synced home) never loads a kernel built for another CPU with -march=native.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("troubadour.native")

SOURCE = Path(__file__).with_name("gemv.c")
_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> Path:
    if os.environ.get("TROUBADOUR_NATIVE_DIR"):
        return Path(os.environ["TROUBADOUR_NATIVE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "troubadour" / "native"


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    return cc if cc else next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)


def _cpu() -> str:
    """What -march=native depends on: the CPU's model and feature flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(lines))
    except OSError:
        return platform.processor() + platform.machine()


def _key(cc: str) -> str:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h = hashlib.sha256(SOURCE.read_bytes() + version.encode() + _cpu().encode() + torch.__version__.encode())
    return h.hexdigest()[:16]


def _build(cc: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    errors = []
    # -march=native first; some compilers (older Apple clang on arm64) only know -mcpu=native
    for arch in (["-march=native"], ["-mcpu=native"], []):
        cmd = [cc, "-O3", *arch, "-fopenmp", "-shared", "-fPIC", "-o", str(tmp), str(SOURCE), "-lm"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            os.replace(tmp, out)   # atomic: a second process building at once never loads half a file
            return
        errors.append(r.stderr.strip().splitlines()[-1:] or [f"exit {r.returncode}"])
    tmp.unlink(missing_ok=True)
    raise RuntimeError(f"{cc} failed: {errors[0][0]}")


class Gemv:
    """y = x @ w^T + bias for 1 to 8 rows of fp32 CPU tensors, and a decode step's self-attention (`attend`),
    on PyTorch's thread count."""

    def __init__(self, path: Path):
        self.path = path
        lib = ctypes.CDLL(str(path))
        fn = lib.troubadour_gemv
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._fn = fn
        att = lib.troubadour_attend
        att.argtypes = ([ctypes.c_void_p, ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p] * 2 +
                        [ctypes.c_long] * 2 + [ctypes.c_void_p] + [ctypes.c_long] * 2 + [ctypes.c_int] * 2 +
                        [ctypes.c_long, ctypes.c_int, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p,
                         ctypes.c_int])
        att.restype = ctypes.c_int
        self._att = att
        pan = lib.troubadour_panels
        pan.argtypes = ([ctypes.c_void_p, ctypes.c_long, ctypes.c_long] + [ctypes.c_void_p] * 3 +
                        [ctypes.c_long] * 2 + [ctypes.c_int] * 2)
        pan.restype = ctypes.c_int
        self._pan = pan

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: (rows, in) contiguous, rows 1 to 8; weight: (out, in) contiguous; bias: (out,) or None."""
        rows, out = x.shape[0], weight.shape[0]
        y = torch.empty(rows, out)
        rc = self._fn(weight.data_ptr(), x.data_ptr(), None if bias is None else bias.data_ptr(), y.data_ptr(),
                      out, weight.shape[1], rows, torch.get_num_threads())
        if rc:
            raise ValueError(f"native gemv takes 1 to 8 rows, got {rows}")
        return y

    def panels(self, x: torch.Tensor, p: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x @ W^T + bias with W as panels (panels.py): p (k, out, width), rows within a panel contiguous (a
        row slice of wider panels is fine); x: (rows, k * width) contiguous, rows 1 to 8."""
        rows, (k, out, width) = x.shape[0], p.shape
        if not _panel_rows_contiguous(p):
            raise ValueError("panels: each panel's rows must be contiguous")
        y = torch.empty(rows, out)
        rc = self._pan(*_panel_head(p), x.data_ptr(), None if bias is None else bias.data_ptr(),
                       y.data_ptr(), out, k * width, rows, torch.get_num_threads())
        if rc:
            raise ValueError(f"native panels take 1 to 8 rows and widths of 64 to 512, got {rows} x {width}")
        return y

    def panels_call(self, mod) -> Callable[[torch.Tensor], torch.Tensor]:
        """A decode step's call of a PanelLinear (panels.py): its pointers and shape bound once, so each call
        costs the kernel and one ctypes call (the generic path spent ~4 us a call in Python, 169 calls a
        small-shaped step). More than 8 rows or another dtype go to the module's own forward."""
        p, bias, forward = mod.panels.detach(), mod.bias, mod.forward
        k, out, width = p.shape
        if p.dtype != torch.float32 or p.device.type != "cpu" or not _panel_rows_contiguous(p) \
                or (bias is not None and not bias.is_contiguous()):
            return forward
        n_in = k * width
        head = _panel_head(p)
        bptr = None if bias is None else bias.data_ptr()
        fn, empty, threads, f32 = self._pan, torch.empty, torch.get_num_threads, torch.float32

        def call(x: torch.Tensor) -> torch.Tensor:
            rows = x.numel() // n_in
            if rows > 8 or x.dtype != f32:
                return forward(x)
            x2 = x.reshape(rows, n_in).contiguous()
            y = empty(rows, out)
            fn(*head, x2.data_ptr(), bptr, y.data_ptr(), out, n_in, rows, threads())
            return y.view(*x.shape[:-1], out)

        call.holds = (p, bias)   # the pointers above stay valid as long as this call lives
        return call

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, length: int, scale: float,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """A decode step's attention: q (rows, 1, heads, d), k and v (rows, heads, >= length, d) with the same
        strides (the KV cache, or the text's keys and values); the first `length` positions are attended, or
        each row's first lengths[r] (an int64 tensor). Returns (rows, 1, heads * d)."""
        rows, _, heads, d = q.shape
        if k.stride() != v.stride() or k.stride(3) != 1 or k.stride(2) != d or q.stride(3) != 1:
            raise ValueError("attend: k and v need the same layout, positions and features contiguous")
        if lengths is not None and (lengths.dtype != torch.int64 or lengths.shape != (rows,)
                                    or not lengths.is_contiguous()):
            raise ValueError("attend: lengths must be one int64 per row")
        out, scores = torch.empty(rows, 1, heads * d), torch.empty(rows * heads * length)
        rc = self._att(q.data_ptr(), q.stride(0), q.stride(2), k.data_ptr(), v.data_ptr(), k.stride(0),
                       k.stride(1), out.data_ptr(), heads * d, d, rows, heads, length, d, scale,
                       scores.data_ptr(), None if lengths is None else lengths.data_ptr(),
                       torch.get_num_threads())
        if rc:
            raise ValueError(f"native attend does not take head size {d} over {length} positions "
                             f"(or a row length outside 1..{length})")
        return out

    def agrees(self) -> bool:
        """Same results as F.linear, tails (widths not a multiple of 64) and bias included."""
        g = torch.Generator().manual_seed(0)
        for rows, width, bias in ((1, 64, False), (2, 1000, True), (2, 320, False), (1, 77, True), (3, 70, True),
                                  (8, 256, False), (5, 33, True)):
            x, w = torch.randn(rows, width, generator=g), torch.randn(41, width, generator=g)
            b = torch.randn(41, generator=g) if bias else None
            if not torch.allclose(self(x, w, b), F.linear(x, w, b), atol=1e-4, rtol=1e-4):
                return False
        for rows, width, k, out, bias in ((1, 64, 3, 41, True), (2, 512, 2, 37, False), (3, 128, 2, 9, True),
                                          (5, 64, 1, 6, False), (8, 192, 2, 23, True)):
            x, w = torch.randn(rows, k * width, generator=g), torch.randn(out + 3, k * width, generator=g)
            b = torch.randn(out, generator=g) if bias else None
            p = w.view(out + 3, k, width).transpose(0, 1).contiguous()[:, 2:out + 2]   # a row slice
            if not torch.allclose(self.panels(x, p, b), F.linear(x, w[2:out + 2], b), atol=1e-4, rtol=1e-4):
                return False
        for rows, heads, d, length in ((2, 4, 64, 7), (1, 2, 16, 1), (3, 3, 32, 40)):
            q = torch.randn(rows, 1, heads, d, generator=g)
            k, v = (torch.randn(rows, heads, length + 5, d, generator=g) for _ in range(2))
            ref = F.scaled_dot_product_attention(q.transpose(1, 2), k[:, :, :length], v[:, :, :length], scale=0.3)
            if not torch.allclose(self.attend(q, k, v, length, 0.3), ref.transpose(1, 2).reshape(rows, 1, -1),
                                  atol=1e-5, rtol=1e-4):
                return False
            lengths = torch.arange(rows, dtype=torch.int64) % length + 1   # each row its own length
            own = self.attend(q, k, v, length, 0.3, lengths)
            for r in range(rows):
                n = int(lengths[r])
                ref = F.scaled_dot_product_attention(q[r:r + 1].transpose(1, 2), k[r:r + 1, :, :n], v[r:r + 1, :, :n],
                                                     scale=0.3).transpose(1, 2).reshape(1, 1, -1)
                if not torch.allclose(own[r:r + 1], ref, atol=1e-5, rtol=1e-4):
                    return False
        return True


def _panel_rows_contiguous(p: torch.Tensor) -> bool:
    return p.stride(2) == 1 and p.stride(1) == p.shape[2]


def _panel_head(p: torch.Tensor) -> tuple[int, int, int]:
    """The kernel's first arguments for panels p (k, out, width): pointer, width, floats between panels."""
    k, out, width = p.shape
    return p.data_ptr(), width, p.stride(0) if k > 1 else out * width   # (a size-1 dim's stride is arbitrary)


def _load() -> Gemv:
    if os.environ.get("TROUBADOUR_NATIVE", "1") == "0":
        raise RuntimeError("turned off by TROUBADOUR_NATIVE=0")
    if not SOURCE.exists():
        raise RuntimeError(f"{SOURCE.name} is not installed with the package")
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (cc, gcc or clang; or set CC)")
    path = cache_dir() / f"gemv-{_key(cc)}.so"
    if not path.exists():
        _build(cc, path)
        log.info("built the native decode kernel: %s", path)
    try:
        kernel = Gemv(path)
    except OSError:   # a damaged file (disk full while copying a cache folder): build it again
        path.unlink(missing_ok=True)
        _build(cc, path)
        kernel = Gemv(path)
    if not kernel.agrees():
        raise RuntimeError(f"{path} disagrees with F.linear; not used")
    return kernel


def kernel() -> Gemv | None:
    """The loaded kernel, built on first call; None where it cannot be had (see why_not())."""
    with _lock:
        if "kernel" not in _state:
            try:
                _state["kernel"], _state["why"] = _load(), None
            except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
                _state["kernel"], _state["why"] = None, str(e)
                log.warning("native decode kernel unavailable (%s); using PyTorch's matmuls", e)
        return _state["kernel"]


def why_not() -> str | None:
    kernel()
    return _state["why"]


def reset() -> None:
    """Forget the loaded kernel (tests, and after changing the environment variables)."""
    with _lock:
        _state.clear()

"""Random-weight checkpoints for the benchmarks, cached under the system temp dir so reruns are fast.

`medium_shaped()` (for the device section) has musicgen-medium's decoder (48 layers, hidden 1536, 24 heads,
ffn 6144; 6 GB in fp32) with the same codec and cut text encoder. `small_shaped()` has musicgen-small's decoder and codec geometry (decoder: 24 layers, hidden 1024, 16 heads,
ffn 4096, 4 codebooks x 2048; EnCodec 32 kHz: 64 filters, hidden 128, upsampling [8, 5, 4, 4], 2 LSTM layers,
codebook 2048). The T5 text encoder keeps d_model 768 (so the 768 -> 1024 projection has the real shape) but
has 2 layers instead of 12: it runs once per request and is not what the benchmarks measure.
Weights are random (built from config), saved with save_pretrained and loaded with load_backend like any
checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

SMALL_VERSION = 2


def _cached(name: str, build) -> Path:
    path = Path(tempfile.gettempdir()) / name
    if not (path / "config.json").exists():
        tmp = Path(tempfile.mkdtemp(dir=tempfile.gettempdir(), prefix=name + "-building-"))
        build(tmp)
        try:
            tmp.rename(path)
        except OSError:   # another process won the race
            pass
    return path


def tiny(stereo: bool = False) -> Path:
    """The test suite's tiny checkpoint (2 layers, hidden 32, codebooks of 64)."""
    from troubadour.testmodel import build_test_model
    return _cached(f"troubadour-bench-tiny{'-stereo' if stereo else ''}",
                   lambda d: build_test_model(d, stereo=stereo))


def small_shaped() -> Path:
    return _cached(f"troubadour-bench-small-shaped-v{SMALL_VERSION}", build_small_shaped)


def build_small_shaped(out_dir: str | Path, seed: int = 0) -> Path:
    """musicgen-small's decoder (24 layers, 1024 wide, 16 heads, 4 x 2048 codebooks) and 32 kHz EnCodec sizes;
    the text encoder is cut to 2 T5-base-wide layers since it runs once per request."""
    from troubadour.testmodel import build_test_model

    return build_test_model(out_dir, seed=seed, layers=24, hidden=1024, heads=16, codebook_size=2048,
                            text_dim=768, text_kv=64, text_ff=3072, text_layers=2, text_heads=12,
                            codec_hidden=128, codec_filters=64, max_positions=2048)


def medium_shaped() -> Path:
    return _cached(f"troubadour-bench-medium-shaped-v{SMALL_VERSION}", build_medium_shaped)


def build_medium_shaped(out_dir: str | Path, seed: int = 0) -> Path:
    """musicgen-medium's decoder (48 layers, 1536 wide, 24 heads, 4 x 2048 codebooks), otherwise as small."""
    from troubadour.testmodel import build_test_model

    return build_test_model(out_dir, seed=seed, layers=48, hidden=1536, heads=24, codebook_size=2048,
                            text_dim=768, text_kv=64, text_ff=3072, text_layers=2, text_heads=12,
                            codec_hidden=128, codec_filters=64, max_positions=2048)

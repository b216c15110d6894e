"""Random-weight checkpoints for the benchmarks, cached under the system temp dir so reruns are fast.

`small_shaped()` has musicgen-small's decoder and codec geometry (decoder: 24 layers, hidden 1024, 16 heads,
ffn 4096, 4 codebooks x 2048; EnCodec 32 kHz: 64 filters, hidden 128, upsampling [8, 5, 4, 4], 2 LSTM layers,
codebook 2048). The T5 text encoder keeps d_model 768 (so the 768 -> 1024 projection has the real shape) but
has 2 layers instead of 12: it runs once per request and is not what the benchmarks measure.
Weights are random (built from config), saved with save_pretrained and loaded with load_backend like any
checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

SMALL_VERSION = 1


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
    import torch
    from transformers import (EncodecConfig, EncodecFeatureExtractor, MusicgenConfig, MusicgenDecoderConfig,
                              MusicgenForConditionalGeneration, MusicgenProcessor, T5Config)

    from troubadour.testmodel import _tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(vocab_size=200)
    text = T5Config(vocab_size=len(tokenizer), d_model=768, d_kv=64, d_ff=3072, num_layers=2, num_heads=12,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    audio = EncodecConfig(sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4],
                          target_bandwidths=[2.2], codebook_size=2048, hidden_size=128, num_filters=64,
                          num_lstm_layers=2, use_causal_conv=False, normalize=False, chunk_length_s=None)
    vocab = 2048
    decoder = MusicgenDecoderConfig(vocab_size=vocab, max_position_embeddings=2048, num_hidden_layers=24,
                                    ffn_dim=4096, num_attention_heads=16, hidden_size=1024, num_codebooks=4,
                                    audio_channels=1, pad_token_id=vocab, decoder_start_token_id=vocab,
                                    bos_token_id=vocab)
    config = MusicgenConfig(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    torch.manual_seed(seed)
    model = MusicgenForConditionalGeneration(config)
    with torch.no_grad():   # k-means codebooks start as zeros; random ones make the audio depend on the codes
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_(0.0, 1.0)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.cluster_size.fill_(1.0)
            layer.codebook.inited.fill_(True)
    gen = model.generation_config
    gen.do_sample, gen.guidance_scale, gen.max_length, gen.top_k = True, 3.0, 1503, 250
    gen.pad_token_id = gen.decoder_start_token_id = gen.bos_token_id = vocab
    model.save_pretrained(out)
    fe = EncodecFeatureExtractor(feature_size=1, sampling_rate=32000, padding_value=0.0)
    MusicgenProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(out)
    (out / "README.md").write_text("Random-weight musicgen-small-shaped checkpoint for troubadour's bench/. Noise.\n")
    return out

"""Tiny random-weight MusicGen checkpoints for wiring and tests.

They have the real models' audio shape (32 kHz, 50 Hz frames, 4 codebooks, delay pattern) and load through
the same `from_pretrained(dir)` path as `facebook/musicgen-*`, but their weights are random: they make noise.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

# Words the tokenizer is trained on; any prompt still tokenizes (unknown pieces fall back to characters).
_CORPUS = """
a calm piano piece with soft strings and warm pads at a slow tempo
an epic orchestral battle theme with drums brass and choir at a fast tempo 140 bpm
a mysterious ambient soundscape featuring dark synths and a slow build
an upbeat chiptune melody with square leads and arpeggios for a retro video game
a sad melancholic violin solo in d minor with a gentle ending
a happy jazz tune with saxophone double bass and brushed drums
electronic dance music with heavy bass, synth stabs and a driving beat
a heroic fanfare for victory with trumpets and timpani
game over music, slow, somber and quiet
exploration music for a forest level with flutes, harp and light percussion
"""


def _tokenizer(vocab_size: int):
    import sentencepiece as spm
    from transformers import T5Tokenizer

    lines = [ln for ln in _CORPUS.strip().splitlines() if ln] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, byte_fallback=False, minloglevel=2, hard_vocab_limit=False,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
    )
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    # `vocab_file=` silently yields 4 tokens in transformers 5; passing pieces works.
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def build_test_model(out_dir: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 32,
                     heads: int = 2, codebook_size: int = 64, stereo: bool = False, melody: bool = False,
                     text_dim: int = 32, text_kv: int = 8, text_ff: int = 64, text_layers: int = 1,
                     text_heads: int = 2, codec_hidden: int = 32, codec_filters: int = 4,
                     max_positions: int = 4096) -> Path:
    """Write a random-weight MusicGen (or MusicGen-Melody) checkpoint with its tokenizer to `out_dir`.

    The defaults are tiny; bench/ passes musicgen-small's sizes for a small-shaped one."""
    import torch
    from transformers import (EncodecConfig, EncodecFeatureExtractor, MusicgenConfig,
                              MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration, MusicgenProcessor, T5Config)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(vocab_size=200)
    text = T5Config(vocab_size=len(tokenizer), d_model=text_dim, d_kv=text_kv, d_ff=text_ff,
                    num_layers=text_layers, num_heads=text_heads, decoder_start_token_id=0, pad_token_id=0,
                    eos_token_id=1)
    audio = EncodecConfig(sampling_rate=32000, audio_channels=1, upsampling_ratios=[8, 5, 4, 4],
                          target_bandwidths=[2.2], codebook_size=codebook_size, hidden_size=codec_hidden,
                          num_filters=codec_filters,
                          num_lstm_layers=2, use_causal_conv=False, normalize=False, chunk_length_s=None)
    codebooks = 8 if stereo else 4
    decoder_cls = MusicgenMelodyDecoderConfig if melody else MusicgenDecoderConfig
    decoder = decoder_cls(vocab_size=codebook_size, max_position_embeddings=max_positions,
                                    num_hidden_layers=layers, ffn_dim=hidden * 4, num_attention_heads=heads,
                                    hidden_size=hidden, num_codebooks=codebooks,
                                    audio_channels=2 if stereo else 1, pad_token_id=codebook_size,
                                    decoder_start_token_id=codebook_size, bos_token_id=codebook_size)
    parts = dict(text_encoder=text.to_dict(), audio_encoder=audio.to_dict(), decoder=decoder.to_dict())
    torch.manual_seed(seed)
    if melody:   # conditions on a chroma prefix (12 pitch classes) instead of cross-attention
        model = MusicgenMelodyForConditionalGeneration(MusicgenMelodyConfig(**parts, num_chroma=12,
                                                                            chroma_length=235))
    else:
        model = MusicgenForConditionalGeneration(MusicgenConfig(**parts))
    # EnCodec codebooks start as zeros (they are learned by k-means); random ones make audio depend on codes.
    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.normal_(0.0, 1.0)
            layer.codebook.embed_avg.copy_(layer.codebook.embed)
            layer.codebook.cluster_size.fill_(1.0)
            layer.codebook.inited.fill_(True)
    gen = model.generation_config
    gen.do_sample, gen.guidance_scale, gen.max_length, gen.top_k = True, 3.0, 1503, 250
    gen.pad_token_id = gen.decoder_start_token_id = gen.bos_token_id = codebook_size
    model.save_pretrained(out)
    if melody:   # its feature extractor needs torchaudio; the tokenizer is all troubadour loads
        tokenizer.save_pretrained(out)
    else:
        fe = EncodecFeatureExtractor(feature_size=1, sampling_rate=32000, padding_value=0.0)
        MusicgenProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(out)
    (out / "README.md").write_text(
        "Tiny random-weight MusicGen checkpoint written by `troubadour make-test-model`.\n"
        "For wiring and tests only: it produces noise, not music.\n")
    return out


def cached_test_model(**kwargs) -> Path:
    """A test model shared by the processes of one machine (built once per kwargs)."""
    key = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items())) or "default"
    path = Path(tempfile.gettempdir()) / f"troubadour-test-model-{key}"
    if not (path / "config.json").exists():
        tmp = Path(tempfile.mkdtemp(dir=tempfile.gettempdir()))
        build_test_model(tmp, **kwargs)
        try:
            tmp.rename(path)
        except OSError:  # another process won the race
            pass
    return path

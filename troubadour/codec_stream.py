"""EnCodec decoding chunk by chunk with the LSTM's state carried between chunks.

The decoder is conv (kernel 7) -> LSTM -> upsampling stack. Decoding every chunk from its codes again, with 50
frames of left context for the LSTM to settle, cost 80 frames of codec per 25-frame chunk (bench/README.md:
the codec was ~15 % of a track's generation on the CPU, and the LSTM at batch 1 re-reads its recurrent weights
every frame). Here each frame goes through the first conv and the LSTM once, in order, with the LSTM's (h, c)
kept per track; only the upsampling stack is re-run over a few frames of its own context. The LSTM sees exactly
the inputs a whole-sequence decode gives it, so the chunks equal a whole decode up to float rounding (tested
against one, as the windowed decode was).

Frames, per track: codes arrive up to `filled`; a chunk [emitted, end) is due with end <= filled - lookahead.
The first conv needs PRE_REACH frames on each side, the upsampling stack POST_REACH (its receptive field is
~850 samples of 640 a frame), so the LSTM is advanced to end + POST_REACH, which needs codes up to
end + POST_REACH + PRE_REACH = end + lookahead; a final chunk ends the track, where the codec's own edge
padding applies as in a whole decode.
"""

from __future__ import annotations

import torch

PRE_REACH = 3     # the first conv: kernel 7, stride 1
POST_REACH = 2    # frames of LSTM output the upsampling stack reads on either side of a chunk


def supports(enc, lookahead_frames: int) -> bool:
    """Whether `enc` (a transformers EncodecModel) has the layout this decoder relies on."""
    try:
        layers = enc.decoder.layers
        first, lstm = layers[0], layers[1]
        conv = first.conv
    except (AttributeError, IndexError, TypeError):
        return False
    return (type(lstm).__name__ == "EncodecLSTM" and isinstance(lstm.lstm, torch.nn.LSTM)
            and not lstm.lstm.bidirectional and conv.stride[0] == 1 and conv.dilation[0] == 1
            and (conv.kernel_size[0] - 1) // 2 <= PRE_REACH and not getattr(first, "causal", False)
            and getattr(enc.config, "chunk_length", None) is None
            and lookahead_frames >= PRE_REACH + POST_REACH)


class PanelLSTM:
    """The codec's LSTM over a chunk's frames with its recurrent matmul in the native kernel. At batch 1 each
    frame multiplies one row by both layers' (4 D, D) recurrent weights (2 x 16 MB for musicgen's codec):
    PyTorch's LSTM read them at ~22 GB/s, 37 of a chunk's 97 ms (bench/README.md). Same gates, same order
    (i, f, g, o) as torch.nn.LSTM; the input projections of all frames are one matmul per layer."""

    def __init__(self, lstm: torch.nn.LSTM, gemv):
        from .panels import pack_weight

        self.layers = []
        for n in range(lstm.num_layers):
            w_ih = getattr(lstm, f"weight_ih_l{n}").detach()
            w_hh = pack_weight(getattr(lstm, f"weight_hh_l{n}"))   # a packed copy: 16 MB a layer
            bias = (getattr(lstm, f"bias_ih_l{n}") + getattr(lstm, f"bias_hh_l{n}")).detach()
            self.layers.append((w_ih, gemv.panels_call(w_hh), bias))   # (the call holds the packed copy)
        self.hidden = lstm.hidden_size

    @staticmethod
    def usable(lstm: torch.nn.LSTM, gemv) -> bool:
        from .panels import width_for

        w = lstm.weight_hh_l0
        return (gemv is not None and w.dtype == torch.float32 and w.device.type == "cpu" and lstm.bias
                and not lstm.batch_first and lstm.proj_size == 0 and width_for(lstm.hidden_size) is not None)

    def __call__(self, seq: torch.Tensor, state):
        """seq (n, 1, D) -> (out (n, 1, D), (h, c) each (layers, 1, D)), as torch.nn.LSTM."""
        x = seq[:, 0]
        h_all, c_all = state if state is not None else (None, None)
        hs, cs = [], []
        for n, (w_ih, hh, bias) in enumerate(self.layers):
            pre = torch.addmm(bias, x, w_ih.t())                       # (frames, 4 D)
            h = torch.zeros(1, self.hidden) if h_all is None else h_all[n]
            c = torch.zeros(1, self.hidden) if c_all is None else c_all[n]
            outs = []
            for t in range(pre.shape[0]):
                i, f, g, o = (pre[t:t + 1] + hh(h)).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outs.append(h)
            x = torch.cat(outs)
            hs.append(h)
            cs.append(c)
        return x[:, None], (torch.stack(hs), torch.stack(cs))


class TrackDecoder:
    """One mono code stream's decoder state (a stereo track has two)."""

    def __init__(self, enc, lstm=None):
        layers = enc.decoder.layers
        self.quantizer, self.first, self.post = enc.quantizer, layers[0], layers[2:]
        self.lstm = lstm or layers[1].lstm
        self.state = None          # the LSTM's (h, c) after `done` frames
        self.done = 0              # frames through the LSTM
        self.kept = None           # LSTM block outputs (1, D, n) for frames [kept_from, done)
        self.kept_from = 0

    def chunk(self, codes: torch.Tensor, emitted: int, end: int, final: bool) -> torch.Tensor:
        """Audio (1, channels, (end - emitted) * hop) for frames [emitted, end) of `codes` (K, filled)."""
        filled = codes.shape[1]
        upto = filled if final else min(end + POST_REACH, filled - PRE_REACH)
        if upto > self.done:
            self._advance(codes, upto, final)
        lo = max(0, emitted - POST_REACH)
        hidden = self.kept[:, :, lo - self.kept_from:upto - self.kept_from]
        for layer in self.post:
            hidden = layer(hidden)
        hop = hidden.shape[2] // (upto - lo)
        # keep what the next chunk's left context needs
        keep_from = max(0, end - POST_REACH)
        self.kept = self.kept[:, :, keep_from - self.kept_from:]
        self.kept_from = keep_from
        return hidden[:, :, (emitted - lo) * hop:(end - lo) * hop]

    def _advance(self, codes: torch.Tensor, upto: int, final: bool) -> None:
        a = max(0, self.done - PRE_REACH)
        b = codes.shape[1] if final else min(codes.shape[1], upto + PRE_REACH)
        emb = self.quantizer.decode(codes[None, :, a:b].transpose(0, 1))        # (1, D_codes, b - a)
        x = self.first(emb)[:, :, self.done - a:upto - a]                       # exact: PRE_REACH each side
        seq = x.permute(2, 0, 1)                                                 # (n, 1, D)
        out, self.state = self.lstm(seq, self.state)
        block = (out + seq).permute(1, 2, 0)                                     # EncodecLSTM's residual
        self.kept = block if self.kept is None else torch.cat([self.kept, block], dim=2)
        self.done = upto


class StreamDecoder:
    """A track's decoder: one TrackDecoder per channel (stereo codes interleave left and right codebooks).
    lstm: a shared PanelLSTM, or None for the codec's own."""

    def __init__(self, enc, channels: int, lstm=None):
        self.tracks = [TrackDecoder(enc, lstm) for _ in range(channels)]

    def chunk(self, codes: torch.Tensor, emitted: int, end: int, final: bool) -> torch.Tensor:
        """(channels, samples) for frames [emitted, end) of codes (K, filled)."""
        with torch.inference_mode():
            if len(self.tracks) == 1:
                return self.tracks[0].chunk(codes, emitted, end, final)[0]
            parts = [t.chunk(codes[c::2], emitted, end, final)[0] for c, t in enumerate(self.tracks)]
            return torch.cat(parts, dim=0)

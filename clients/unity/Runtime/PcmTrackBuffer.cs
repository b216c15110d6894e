// Audio of one streamed track for a game's audio callback. The network side appends PCM as chunks arrive; the
// audio side reads; a lock guards only index updates and short copies, so neither side ever waits long.
// Unlike a plain ring buffer it keeps the whole track (frames are known up front), so a looping track plays its
// loop region [loopStart, loopEnd) again and again after the stream ended, reading around it like a ring.
using System;

namespace Troubadour
{
    public sealed class PcmTrackBuffer
    {
        readonly object gate = new object();
        readonly float[] samples;
        readonly byte[] carry = new byte[8];   // a partial frame sample left over from the previous write
        int carryLen;
        long wpos;      // samples written (writer side only: a write may end inside a frame)
        long written;   // frames available
        long cursor;    // next frame to play
        long played;    // frames handed to the audio side, loops included
        bool complete, finished;
        long underruns;

        public readonly int Channels;
        public readonly long Frames;
        public readonly bool Loop;
        public readonly long LoopStart, LoopEnd;

        /// <summary>frames, channels: from the track header. loop: play [loopStart, loopEnd) forever once the
        /// end is reached (loopEnd &lt;= 0: the whole track).</summary>
        public PcmTrackBuffer(long frames, int channels, bool loop, long loopStart = 0, long loopEnd = 0)
        {
            if (frames <= 0 || channels <= 0) throw new ArgumentException("frames and channels must be positive");
            Frames = frames;
            Channels = channels;
            samples = new float[frames * channels];
            Loop = loop;
            LoopEnd = loopEnd > 0 && loopEnd <= frames ? loopEnd : frames;
            LoopStart = loopStart >= 0 && loopStart < LoopEnd ? loopStart : 0;
        }

        public static PcmTrackBuffer For(TrackHeader h)
        {
            return new PcmTrackBuffer(h.Frames, h.Channels, h.Loops, Math.Max(0, h.LoopStart), Math.Max(0, h.LoopEnd));
        }

        /// <summary>Appends interleaved PCM bytes (pcm_s16le or pcm_f32le). Network side.</summary>
        public void Write(byte[] data, int offset, int count, string format)
        {
            int width = format == AudioFormats.PcmF32 ? 4 : 2;
            long pos = wpos;
            int i = offset, end = offset + count;
            // finish a sample split across two writes
            while (carryLen > 0 && i < end)
            {
                carry[carryLen++] = data[i++];
                if (carryLen == width)
                {
                    if (pos < samples.Length) samples[pos++] = Sample(carry, 0, width);
                    carryLen = 0;
                }
            }
            for (; i + width <= end; i += width)
            {
                if (pos >= samples.Length) break;
                samples[pos++] = Sample(data, i, width);
            }
            while (i < end && pos < samples.Length) carry[carryLen++] = data[i++];
            wpos = pos;
            lock (gate) written = Math.Min(Frames, pos / Channels);   // samples beyond `written` were never read
        }

        static float Sample(byte[] d, int i, int width)
        {
            if (width == 2) return (short)(d[i] | (d[i + 1] << 8)) / 32768f;
            return BitConverter.ToSingle(BitConverter.IsLittleEndian ? d : Reverse(d, i), BitConverter.IsLittleEndian ? i : 0);
        }

        static byte[] Reverse(byte[] d, int i)
        {
            return new[] { d[i + 3], d[i + 2], d[i + 1], d[i] };
        }

        /// <summary>No more data will come: the end of the stream, or a stream that failed part-way, which then
        /// plays what arrived (looping over it when the track loops) instead of falling silent.</summary>
        public void Complete()
        {
            lock (gate) complete = true;
        }

        /// <summary>Fills dst (interleaved) from the play position. Missing audio (underrun) and the time after a
        /// non-looping track ended are silence. Audio side; never blocks for long. Returns frames of real audio.</summary>
        public int Read(float[] dst)
        {
            int need = dst.Length / Channels, got = 0;
            lock (gate)
            {
                while (got < need)
                {
                    long limit = Loop ? Math.Min(LoopEnd, written) : written;
                    if (cursor >= limit)
                    {
                        if (Loop && (cursor >= LoopEnd || (complete && limit > 0)))
                        {
                            // the loop points belong to the whole track: one cut short before its loop end
                            // loops all that arrived
                            cursor = written < LoopEnd ? 0 : LoopStart;
                            continue;
                        }
                        if (complete) finished = true;
                        else underruns++;
                        break;
                    }
                    int n = (int)Math.Min(need - got, limit - cursor);
                    Array.Copy(samples, cursor * Channels, dst, (long)got * Channels, (long)n * Channels);
                    got += n;
                    cursor += n;
                }
                played += got;
            }
            Array.Clear(dst, got * Channels, dst.Length - got * Channels);
            return got;
        }

        /// <summary>Frame the next Read starts at (inside the loop region once looping).</summary>
        public long Position { get { lock (gate) return cursor; } }
        /// <summary>Frames played so far, loops included.</summary>
        public long Played { get { lock (gate) return played; } }
        public long Written { get { lock (gate) return written; } }
        public bool IsComplete { get { lock (gate) return complete; } }
        /// <summary>A non-looping track played to its end.</summary>
        public bool Finished { get { lock (gate) return finished; } }
        /// <summary>Reads that ran out of data before the end (the stream was slower than playback).</summary>
        public long Underruns { get { lock (gate) return underruns; } }

        /// <summary>Frames ready to play ahead of the play position.</summary>
        public long Buffered
        {
            get
            {
                lock (gate) return complete ? long.MaxValue : Math.Max(0, written - cursor);
            }
        }
    }
}

// Engine-independent pieces without a server: PcmTrackBuffer, key order, offline failure.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Threading;

namespace Troubadour.Tests
{
    public static class UnitTests
    {
        static int failures;

        static void Check(string name, bool ok, string why = "")
        {
            if (ok) Console.WriteLine("OK " + name);
            else
            {
                failures++;
                Console.WriteLine("FAIL " + name + ": " + why);
            }
        }

        public static int Run()
        {
            failures = 0;
            BufferStreamsLoopsAndUnderruns();
            BufferNonLoopingEndsAndOddWrites();
            BufferWritesSplitInsideAFrame();
            BufferCutShortLoopsWhatArrived();
            KeysSortedByCodePoint();
            TrackChecksumAndResume();
            OfflineRequestFails();
            UnsendableValueThrowsAtTheCall();
            NestingLimitCountsContainers();
            return failures;
        }

        static byte[] S16(params short[] v)
        {
            var b = new byte[v.Length * 2];
            for (int i = 0; i < v.Length; i++) { b[2 * i] = (byte)v[i]; b[2 * i + 1] = (byte)(v[i] >> 8); }
            return b;
        }

        static void BufferStreamsLoopsAndUnderruns()
        {
            // 6 stereo frames, frame i = (i, -i) * 1000; loop region [2, 6).
            var buf = new PcmTrackBuffer(6, 2, true, 2, 6);
            buf.Write(S16(0, 0, 1000, -1000), 0, 8, AudioFormats.PcmS16);
            var dst = new float[6];   // 3 frames
            int got = buf.Read(dst);
            Check("buffer_underrun_is_silence", got == 2 && dst[2] == 1000 / 32768f && dst[4] == 0f && buf.Underruns == 1,
                  "got " + got + " underruns " + buf.Underruns);
            buf.Write(S16(2000, -2000, 3000, -3000, 4000, -4000, 5000, -5000), 0, 16, AudioFormats.PcmS16);
            buf.Complete();
            dst = new float[12];       // 6 frames: 2 3 4 5 | 2 3
            got = buf.Read(dst);
            bool ok = got == 6;
            int[] want = { 2, 3, 4, 5, 2, 3 };
            for (int i = 0; i < 6; i++) ok &= dst[2 * i] == want[i] * 1000 / 32768f && dst[2 * i + 1] == -want[i] * 1000 / 32768f;
            Check("buffer_loops_its_region", ok && buf.Position == 4 && buf.Played == 8, "got " + got + " pos " + buf.Position);
        }

        static void BufferNonLoopingEndsAndOddWrites()
        {
            var buf = new PcmTrackBuffer(3, 1, false);
            var bytes = new byte[12];
            for (int i = 0; i < 3; i++) Buffer.BlockCopy(BitConverter.GetBytes(0.25f * (i + 1)), 0, bytes, 4 * i, 4);
            buf.Write(bytes, 0, 5, AudioFormats.PcmF32);   // a sample split across writes
            buf.Write(bytes, 5, 7, AudioFormats.PcmF32);
            buf.Complete();
            var dst = new float[5];
            int got = buf.Read(dst);
            Check("buffer_plays_once_then_silence",
                  got == 3 && dst[0] == 0.25f && dst[1] == 0.5f && dst[2] == 0.75f && dst[3] == 0f && buf.Finished && buf.Underruns == 0,
                  "got " + got + " finished " + buf.Finished);
        }

        static void BufferWritesSplitInsideAFrame()
        {
            // stereo frames (1000,-1000) (2000,-2000) (3000,-3000), split after 3 and after 6 bytes (mid-frame)
            var bytes = S16(1000, -1000, 2000, -2000, 3000, -3000);
            bool ok = true;
            foreach (var cut in new[] { 3, 6 })
            {
                var buf = new PcmTrackBuffer(3, 2, false);
                buf.Write(bytes, 0, cut, AudioFormats.PcmS16);
                buf.Write(bytes, cut, bytes.Length - cut, AudioFormats.PcmS16);
                buf.Complete();
                var dst = new float[6];
                ok &= buf.Read(dst) == 3;
                for (int i = 0; i < 6; i++) ok &= dst[i] == (i % 2 == 0 ? 1 : -1) * (i / 2 + 1) * 1000 / 32768f;
            }
            Check("buffer_write_split_inside_a_frame", ok, "samples out of place");
        }

        static void BufferCutShortLoopsWhatArrived()
        {
            // a looping 8-frame track whose stream failed after 3 frames: it loops those 3, no underrun
            var buf = new PcmTrackBuffer(8, 1, true, 2, 8);
            buf.Write(S16(1000, 2000, 3000), 0, 6, AudioFormats.PcmS16);
            buf.Complete();
            var dst = new float[7];
            int got = buf.Read(dst);
            bool ok = got == 7 && buf.Underruns == 0 && !buf.Finished;
            int[] want = { 1, 2, 3, 1, 2, 3, 1 };   // the loop region [2, 8) is not all there: all that arrived
            for (int i = 0; i < 7; i++) ok &= dst[i] == want[i] * 1000 / 32768f;
            var once = new PcmTrackBuffer(8, 1, false);
            once.Write(S16(1000, 2000), 0, 4, AudioFormats.PcmS16);
            once.Complete();
            ok &= once.Read(new float[4]) == 2 && once.Finished;
            Check("buffer_cut_short_loops_what_arrived", ok, "got " + got + " underruns " + buf.Underruns);
        }

        static void KeysSortedByCodePoint()
        {
            // UTF-16 order would put U+1D11E (a surrogate pair) before U+FFFF; the protocol sorts by code point.
            var body = new Dictionary<string, object> { { "\U0001D11E", 1L }, { "\uFFFF", 2L }, { "\u00e9", 3L }, { "z", 4L } };
            var enc = MsgPack.Encode(body);
            var keys = new List<string>();
            int pos = 1;
            for (int i = 0; i < 4; i++)
            {
                int n = enc[pos] & 0x1f;
                keys.Add(System.Text.Encoding.UTF8.GetString(enc, pos + 1, n));
                pos += 1 + n + 1;
            }
            Check("msgpack_keys_sorted_by_code_point",
                  keys[0] == "z" && keys[1] == "\u00e9" && keys[2] == "\uFFFF" && keys[3] == "\U0001D11E", string.Join(",", keys));
        }

        static Message Msg(string type, long seq, bool final, Dictionary<string, object> fields, byte[] payload = null)
        {
            var body = new Dictionary<string, object>(fields) { { "id", 1L }, { "seq", seq }, { "final", final } };
            return new Message(type, body, payload);
        }

        static string Sha(byte[] b)
        {
            using (var sha = System.Security.Cryptography.SHA256.Create()) return VectorTests.ToHex(sha.ComputeHash(b));
        }

        static void TrackChecksumAndResume()
        {
            // TrackHandler fed by hand: a transfer cut after one chunk, resent, resumed; then a bad checksum.
            var client = new TroubadourClient(new ClientOptions { DispatchOnIoThread = true });
            var got = new System.IO.MemoryStream();
            TrackEnd end = null;
            int headers = 0;
            var cb = new TrackCallbacks
            {
                OnHeader = th => headers++, OnChunk = c => got.Write(c.Data, c.Offset, c.Count), OnEnd = e => end = e
            };
            var header = new Dictionary<string, object> {
                { "track_id", "ab" }, { "frames", 4L }, { "channels", 1L }, { "sample_rate", 32000L }, { "format", "pcm_s16le" } };
            var audio = S16(1, 2, 3, 4);
            var first = new byte[4];
            var rest = new byte[4];
            Array.Copy(audio, first, 4);
            Array.Copy(audio, 4, rest, 0, 4);
            var h = new TrackHandler(client, cb, true);
            h.OnMessage(Msg("track", 0, false, header));
            h.OnMessage(Msg("chunk", 1, false, new Dictionary<string, object> { { "offset", 0L }, { "frames", 2L }, { "bytes", 4L } }, first));
            h.OnResend();
            h.OnMessage(Msg("track", 0, false, header));
            h.OnMessage(Msg("chunk", 1, false, new Dictionary<string, object> { { "offset", 0L }, { "frames", 4L }, { "bytes", 8L } }, audio));
            var err = h.OnMessage(Msg("end", 2, true, new Dictionary<string, object> { { "frames", 4L }, { "bytes", 8L }, { "sha256", Sha(audio) } }));
            var bytes = got.ToArray();
            Check("track_resume_skips_delivered_bytes",
                  err == null && end != null && end.Resumes == 1 && headers == 1 && VectorTests.Diff(bytes, audio, "audio") == null,
                  err != null ? err.ToString() : "resumes " + (end == null ? -1 : end.Resumes) + ", " + bytes.Length + " bytes");

            // resent, but the new transfer's first bytes are not the ones delivered (another encoding of the
            // track): an error, not the two joined (the end's checksum covers only the new transfer)
            var other = S16(9, 2, 3, 4);
            h = new TrackHandler(client, new TrackCallbacks(), true);
            h.OnMessage(Msg("track", 0, false, header));
            h.OnMessage(Msg("chunk", 1, false, new Dictionary<string, object> { { "offset", 0L }, { "frames", 2L }, { "bytes", 4L } }, first));
            h.OnResend();
            h.OnMessage(Msg("track", 0, false, header));
            err = h.OnMessage(Msg("chunk", 1, false, new Dictionary<string, object> { { "offset", 0L }, { "frames", 4L }, { "bytes", 8L } }, other));
            Check("track_resume_checks_the_skipped_bytes", err != null && err.Code == ErrorCodes.InvalidReply,
                  err == null ? "no error" : err.ToString());
            // resent, and the new transfer ends before reaching what was delivered
            h = new TrackHandler(client, new TrackCallbacks(), true);
            h.OnMessage(Msg("track", 0, false, header));
            h.OnMessage(Msg("chunk", 1, false, new Dictionary<string, object> { { "offset", 0L }, { "frames", 4L }, { "bytes", 8L } }, audio));
            h.OnResend();
            h.OnMessage(Msg("track", 0, false, header));
            h.OnMessage(Msg("chunk", 1, false, new Dictionary<string, object> { { "offset", 0L }, { "frames", 2L }, { "bytes", 4L } }, first));
            err = h.OnMessage(Msg("end", 2, true, new Dictionary<string, object> { { "frames", 4L }, { "bytes", 4L }, { "sha256", Sha(first) } }));
            Check("track_resume_short_transfer_fails", err != null && err.Code == ErrorCodes.InvalidReply,
                  err == null ? "no error" : err.ToString());

            h = new TrackHandler(client, new TrackCallbacks(), true);
            h.OnMessage(Msg("track", 0, false, header));
            h.OnMessage(Msg("chunk", 1, false, new Dictionary<string, object> { { "offset", 0L }, { "frames", 4L }, { "bytes", 8L } }, audio));
            err = h.OnMessage(Msg("end", 2, true, new Dictionary<string, object> { { "frames", 4L }, { "bytes", 8L }, { "sha256", Sha(rest) } }));
            Check("track_checksum_mismatch_detected", err != null && err.Code == ErrorCodes.ChecksumMismatch, "no error");
            client.Dispose();
        }

        static void OfflineRequestFails()
        {
            // Nothing listens on port 1: requests wait for a connection, then fail with connection_lost.
            var c = new TroubadourClient(new ClientOptions { OfflineTimeoutSeconds = 1, ConnectTimeoutMs = 500 });
            c.Connect("127.0.0.1", 1);
            TroubadourError err = null;
            var req = c.Info(si => { }, e => err = e);
            var sw = Stopwatch.StartNew();
            while (err == null && sw.Elapsed.TotalSeconds < 5) { c.Poll(); Thread.Sleep(5); }
            Check("offline_request_fails_with_connection_lost",
                  err != null && err.Code == ErrorCodes.ConnectionLost && err.IsRetryable && req.IsDone && sw.Elapsed.TotalSeconds < 4,
                  err == null ? "no error" : err.ToString());
            c.Dispose();
        }
        static void UnsendableValueThrowsAtTheCall()
        {
            // A seed past 2^63 cannot be a msgpack int64: the call throws, and later requests still go through
            // the queue (they fail with connection_lost here, nothing listening, instead of never finishing).
            var c = new TroubadourClient(new ClientOptions { OfflineTimeoutSeconds = 1, ConnectTimeoutMs = 500 });
            c.Connect("127.0.0.1", 1);
            string thrown = null;
            try
            {
                c.Send("get_track", new Dictionary<string, object> {
                    { "context", "battle" }, { "params", new Dictionary<string, object> { { "seed", ulong.MaxValue } } } },
                    m => { }, e => { }, true);
            }
            catch (ArgumentException e) { thrown = e.Message; }
            TroubadourError err = null;
            var req = c.Info(si => { }, e => err = e);
            var sw = Stopwatch.StartNew();
            while (err == null && sw.Elapsed.TotalSeconds < 5) { c.Poll(); Thread.Sleep(5); }
            Check("unsendable_value_throws_at_the_call", thrown != null && thrown.Contains("int64"), "thrown: " + thrown);
            Check("unsendable_value_leaves_the_queue_working", err != null && err.Code == ErrorCodes.ConnectionLost && req.IsDone,
                  err == null ? "no error" : err.ToString());
            c.Dispose();
        }

        static object Nest(int containers, object leaf)
        {
            object v = leaf;
            for (int i = 0; i < containers; i++) v = new List<object> { v };
            return v;
        }

        static void NestingLimitCountsContainers()
        {
            // The body map is level 1, so 15 lists inside it reach level 16 (allowed, with contents); 16 lists do not.
            byte[] ok = null;
            try { ok = MsgPack.Encode(new Dictionary<string, object> { { "x", Nest(15, 1) } }); } catch (ProtocolException) { }
            string deep = null;
            try { MsgPack.Encode(new Dictionary<string, object> { { "x", Nest(16, 1) } }); }
            catch (ProtocolException e) { deep = e.Code; }
            Check("nesting_16_levels_encodes", ok != null && ok.Length == 1 + 2 + 15 + 1, ok == null ? "refused" : ok.Length + " bytes");
            Check("nesting_17_levels_refused", deep == ErrorCodes.TooLarge, "got " + deep);
        }
    }
}

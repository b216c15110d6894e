// Per-request reply handling (on the I/O thread). Handlers hand user callbacks to client.Dispatch.
using System;
using System.Collections.Generic;
using System.Security.Cryptography;
using System.Text;

namespace Troubadour
{
    abstract class ReplyHandler
    {
        internal Pending Pending;
        protected readonly TroubadourClient Client;

        protected ReplyHandler(TroubadourClient client) { Client = client; }

        /// <summary>One non-error message for this request, in seq order; returns an error to fail the request.</summary>
        public abstract TroubadourError OnMessage(Message m);
        /// <summary>The connection dropped and the request will be sent again from scratch.</summary>
        public virtual void OnResend() { }
        /// <summary>The request failed (dispatched like any callback, or inline for internal requests).</summary>
        public abstract void OnFail(TroubadourError e);
    }

    sealed class SimpleHandler : ReplyHandler
    {
        readonly Action<Message> onReply;
        readonly Action<TroubadourError> onError;
        readonly bool inline;

        public SimpleHandler(TroubadourClient client, Action<Message> onReply, Action<TroubadourError> onError,
                             bool inline = false) : base(client)
        {
            this.onReply = onReply;
            this.onError = onError;
            this.inline = inline;
        }

        public override TroubadourError OnMessage(Message m)
        {
            if (!m.Final || onReply == null) return null;
            if (inline) onReply(m);
            else Client.Dispatch(() => onReply(m));
            return null;
        }

        public override void OnFail(TroubadourError e)
        {
            if (onError != null) onError(e);
        }
    }

    /// <summary>The `info` sent first on every connection (version check, heartbeat interval).</summary>
    sealed class InfoHandler : ReplyHandler
    {
        public InfoHandler(TroubadourClient client) : base(client) { }

        public override TroubadourError OnMessage(Message m)
        {
            if (m.Final && m.Type == "info") Client.OnInfo(new ServerInfo(m.Body));
            return null;
        }

        public override void OnFail(TroubadourError e)
        {
            if (e.Code == ErrorCodes.UnsupportedVersion) Client.Incompatible(e.Message);
            else Client.Drop("info failed: " + e);
        }
    }

    /// <summary>get_track: header, chunks, end; SHA-256 over the payloads; resume after a resend.</summary>
    sealed class TrackHandler : ReplyHandler
    {
        readonly TrackCallbacks cb;
        readonly bool stream;
        TrackHeader delivering;   // the header the caller got
        TrackHeader current;      // the header of this transfer
        SHA256 sha;
        long streamBytes, delivered, skip;
        int resumes;
        // FNV-1a over the bytes the caller got, and over the bytes a resumed transfer skips: they must agree
        // (a resumed transfer that differs would be joined to the first one without any error).
        const ulong FnvStart = 14695981039346656037UL;
        ulong deliveredHash = FnvStart, skippedHash, wantSkipped;

        public TrackHandler(TroubadourClient client, TrackCallbacks cb, bool stream) : base(client)
        {
            this.cb = cb;
            this.stream = stream;
        }

        public override void OnResend()
        {
            current = null;
        }

        public override TroubadourError OnMessage(Message m)
        {
            var b = m.Body;
            switch (m.Type)
            {
                case "track":
                    if (current != null) return Invalid("a second track header");
                    var h = new TrackHeader(b);
                    current = h;
                    if (sha != null) ((IDisposable)sha).Dispose();
                    sha = SHA256.Create();
                    streamBytes = 0;
                    skip = 0;
                    if (delivering == null)
                    {
                        if (h.Fallback) Client.NoteFallback(h.Context);
                        Deliver(h);
                    }
                    else if (h.SameAudioAs(delivering))
                    {
                        skip = delivered;   // resumed: the caller already has these bytes
                        skippedHash = FnvStart;
                        wantSkipped = deliveredHash;
                        resumes++;
                    }
                    else
                    {
                        h.Restarted = true;
                        delivered = 0;
                        deliveredHash = FnvStart;
                        Deliver(h);
                    }
                    if (!m.Final) return stream ? null : Invalid("track not final");
                    return Feed(m.Payload, 0, h.Frames) ?? Finish(h.Frames, Fields.Long(b, "bytes", -1), Fields.Str(b, "sha256"), b);
                case "chunk":
                    if (current == null) return Invalid("chunk before track");
                    return Feed(m.Payload, Fields.Long(b, "offset"), Fields.Long(b, "frames"));
                case "end":
                    if (current == null) return Invalid("end before track");
                    if (Fields.Long(b, "frames", -1) != current.Frames) return Invalid("end.frames differs from track.frames");
                    return Finish(current.Frames, Fields.Long(b, "bytes", -1), Fields.Str(b, "sha256"), b);
                default:
                    return null;   // unknown message types are ignored
            }
        }

        void Deliver(TrackHeader h)
        {
            delivering = h;
            if (cb.OnHeader != null) Client.Dispatch(() => cb.OnHeader(h));
        }

        static ulong Fnv(ulong h, byte[] data, int offset, int count)
        {
            for (int i = offset; i < offset + count; i++) h = (h ^ data[i]) * 1099511628211UL;
            return h;
        }

        TroubadourError Feed(byte[] payload, long frameOffset, long frames)
        {
            sha.TransformBlock(payload, 0, payload.Length, null, 0);
            streamBytes += payload.Length;
            int start = 0;
            if (skip > 0)
            {
                start = (int)Math.Min(skip, payload.Length);
                skippedHash = Fnv(skippedHash, payload, 0, start);
                skip -= start;
                if (skip == 0 && skippedHash != wantSkipped)
                    return Invalid("the stream resent after reconnecting differs from the audio already delivered");
            }
            if (start >= payload.Length) return null;
            int bpf = current.BytesPerFrame;
            var c = new TrackChunk
            {
                Data = payload, Offset = start, Count = payload.Length - start,
                FrameOffset = frameOffset + (bpf > 0 ? start / bpf : 0),
                Frames = bpf > 0 ? (payload.Length - start) / bpf : (start == 0 ? frames : 0)
            };
            delivered += c.Count;
            deliveredHash = Fnv(deliveredHash, payload, start, c.Count);
            if (cb.OnChunk != null) Client.Dispatch(() => cb.OnChunk(c));
            return null;
        }

        TroubadourError Finish(long frames, long bytes, string expected, Dictionary<string, object> raw)
        {
            if (skip > 0) return Invalid("the stream resent after reconnecting ended before the audio already delivered");
            sha.TransformFinalBlock(new byte[0], 0, 0);
            var hex = new StringBuilder(64);
            foreach (var x in sha.Hash) hex.Append(x.ToString("x2"));
            var actual = hex.ToString();
            if (bytes != streamBytes)
                return new TroubadourError(ErrorCodes.ChecksumMismatch, "got " + streamBytes + " bytes, server says " + bytes);
            if (actual != expected)
                return new TroubadourError(ErrorCodes.ChecksumMismatch, "sha256 " + actual + " != " + expected);
            var end = new TrackEnd { Frames = frames, Bytes = bytes, Sha256 = actual, Resumes = resumes, Raw = raw };
            if (cb.OnEnd != null) Client.Dispatch(() => cb.OnEnd(end));
            return null;
        }

        static TroubadourError Invalid(string what)
        {
            return new TroubadourError(ErrorCodes.InvalidReply, "get_track: " + what);
        }

        public override void OnFail(TroubadourError e)
        {
            if (cb.OnError != null) cb.OnError(e);
        }
    }

    sealed class PrefetchHandler : ReplyHandler
    {
        readonly Action<PrefetchProgress> onProgress;
        readonly Action<PrefetchResult> onDone;
        readonly Action<TroubadourError> onError;
        readonly PrefetchResult result = new PrefetchResult();

        public PrefetchHandler(TroubadourClient client, Action<PrefetchProgress> onProgress, Action<PrefetchResult> onDone,
                               Action<TroubadourError> onError) : base(client)
        {
            this.onProgress = onProgress;
            this.onDone = onDone;
            this.onError = onError;
        }

        public override TroubadourError OnMessage(Message m)
        {
            var b = m.Body;
            if (m.Type == "accepted")
            {
                foreach (var o in Fields.List(b, "jobs"))
                {
                    var j = o as Dictionary<string, object>;
                    if (j == null) continue;
                    result.Jobs.Add(new PrefetchJob
                    {
                        Context = Fields.Str(j, "context"), TrackId = Fields.Str(j, "track_id"),
                        Variant = (int)Fields.Long(j, "variant"), Cached = Fields.Bool(j, "cached")
                    });
                }
                if (m.Final) Done(b);
            }
            else if (m.Type == "progress")
            {
                var p = new PrefetchProgress(b);
                if (onProgress != null) Client.Dispatch(() => onProgress(p));
            }
            else if (m.Type == "done")
            {
                result.Generated = Fields.Long(b, "generated");
                result.Cached = Fields.Long(b, "cached");
                result.Failed = Fields.List(b, "failed");
                Done(b);
            }
            return null;
        }

        void Done(Dictionary<string, object> b)
        {
            result.Raw = b;
            if (onDone != null) Client.Dispatch(() => onDone(result));
        }

        public override void OnFail(TroubadourError e)
        {
            if (onError != null) onError(e);
        }
    }
}

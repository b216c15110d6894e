// Typed views of the protocol's replies and events. Every type keeps the whole body in Raw, so fields added
// by newer servers are still reachable.
using System;
using System.Collections.Generic;

namespace Troubadour
{
    public static class AudioFormats
    {
        public const string PcmS16 = "pcm_s16le";
        public const string PcmF32 = "pcm_f32le";
        public const string Wav = "wav";
        public const string Ogg = "ogg";
    }

    public sealed class ServerInfo
    {
        public string ServerVersion, ModelId, ModelIdentity, Device;
        public int ProtocolVersion, ProtocolMinor, SampleRate, Channels, HeartbeatMs;
        public List<string> Profiles, Formats;
        public List<long> SampleRates = new List<long>();
        public Dictionary<string, object> Raw;

        public ServerInfo(Dictionary<string, object> b)
        {
            Raw = b;
            ServerVersion = Fields.Str(b, "server_version");
            ProtocolVersion = (int)Fields.Long(b, "protocol_version");
            ProtocolMinor = (int)Fields.Long(b, "protocol_minor");
            var model = Fields.Map(b, "model");
            ModelId = Fields.Str(model, "id");
            ModelIdentity = Fields.Str(model, "identity");
            Device = Fields.Str(model, "device");
            SampleRate = (int)Fields.Long(model, "sample_rate");
            Channels = (int)Fields.Long(model, "channels", 1);
            HeartbeatMs = (int)Fields.Long(b, "heartbeat_ms", 2000);
            Profiles = Fields.Strings(b, "profiles");
            Formats = Fields.Strings(b, "formats");
            foreach (var r in Fields.List(b, "sample_rates")) if (r is long) SampleRates.Add((long)r);
        }
    }

    public sealed class HealthInfo
    {
        public string Status;   // ok | loading | degraded
        public long Queue, Generating;
        public double UptimeSeconds;
        public Dictionary<string, object> Raw;

        public HealthInfo(Dictionary<string, object> b)
        {
            Raw = b;
            Status = Fields.Str(b, "status");
            Queue = Fields.Long(b, "queue");
            Generating = Fields.Long(b, "generating");
            UptimeSeconds = Fields.Num(b, "uptime_s");
        }
    }

    public sealed class ContextProfile
    {
        public string Name, Prompt, Meter;
        public int Variants;
        public double Duration, Bpm;   // Bpm 0: unset
        public bool Loop;
        public Dictionary<string, object> Raw;

        public ContextProfile(Dictionary<string, object> b)
        {
            Raw = b;
            Name = Fields.Str(b, "name");
            Prompt = Fields.Str(b, "prompt");
            Meter = Fields.Str(b, "meter", "4/4");
            Variants = (int)Fields.Long(b, "variants", 1);
            Duration = Fields.Num(b, "duration");
            Bpm = Fields.Num(b, "bpm");
            Loop = Fields.Bool(b, "loop", true);
        }
    }

    /// <summary>What to ask get_track for. Exactly one of Context and Prompt.</summary>
    public sealed class TrackOptions
    {
        public string Context, Prompt;
        public int? Variant, SampleRate, Priority;
        public bool? Fallback;
        public string Format = AudioFormats.PcmS16;
        public bool Stream = true;
        public bool Regenerate, CachedOnly;
        /// <summary>Overrides: duration, temperature, top_k, top_p, cfg_coef, seed (PROTOCOL.md 5.4).</summary>
        public Dictionary<string, object> Params;

        internal Dictionary<string, object> ToBody()
        {
            var b = new Dictionary<string, object>();
            if (Context != null) b["context"] = Context;
            if (Prompt != null) b["prompt"] = Prompt;
            if (Variant.HasValue) b["variant"] = (long)Variant.Value;
            if (Fallback.HasValue) b["fallback"] = Fallback.Value;
            if (Params != null && Params.Count > 0) b["params"] = Params;
            if (Format != null) b["format"] = Format;
            if (SampleRate.HasValue) b["sample_rate"] = (long)SampleRate.Value;
            if (Stream) b["stream"] = true;
            if (Regenerate) b["regenerate"] = true;
            if (CachedOnly) b["cached_only"] = true;
            if (Priority.HasValue) b["priority"] = (long)Priority.Value;
            return b;
        }
    }

    /// <summary>The `track` message: what is coming (or, when not streamed, what came).</summary>
    public sealed class TrackHeader
    {
        public string TrackId, Context, Format, Meter, Prompt;
        public bool Cached, Fallback;
        public int Variant = -1, SampleRate, Channels;
        public long Frames;
        public double Bpm;                        // 0: unknown
        public long LoopStart = -1, LoopEnd = -1;  // -1: not sent
        /// <summary>Whether the track is meant to loop: loop_start/loop_end or `loop` when sent, else true.</summary>
        public bool Loops;
        /// <summary>True when a reconnect delivered a different track than the one started: discard what was
        /// received and start over with this header.</summary>
        public bool Restarted;
        public Dictionary<string, object> Params, Raw;

        public TrackHeader(Dictionary<string, object> b)
        {
            Raw = b;
            TrackId = Fields.Str(b, "track_id");
            Context = Fields.Str(b, "context");
            Format = Fields.Str(b, "format", AudioFormats.PcmS16);
            Meter = Fields.Str(b, "meter");
            Prompt = Fields.Str(b, "prompt");
            Cached = Fields.Bool(b, "cached");
            Fallback = Fields.Bool(b, "fallback");
            Variant = (int)Fields.Long(b, "variant", -1);
            SampleRate = (int)Fields.Long(b, "sample_rate");
            Channels = (int)Fields.Long(b, "channels", 1);
            Frames = Fields.Long(b, "frames");
            Bpm = Fields.Num(b, "bpm");
            LoopStart = Fields.Long(b, "loop_start", -1);
            LoopEnd = Fields.Long(b, "loop_end", -1);
            Loops = LoopEnd > 0 || Fields.Bool(b, "loop", true);
            Params = Fields.Map(b, "params");
        }

        /// <summary>Beats per bar from `meter` ("3/4" gives 3); 4 when unknown.</summary>
        public int BeatsPerBar
        {
            get
            {
                int n;
                var m = Meter ?? "";
                int slash = m.IndexOf('/');
                return slash > 0 && int.TryParse(m.Substring(0, slash), out n) && n > 0 ? n : 4;
            }
        }

        /// <summary>Bytes per frame for PCM formats, 0 for wav/ogg.</summary>
        public int BytesPerFrame
        {
            get
            {
                if (Format == AudioFormats.PcmS16) return 2 * Channels;
                if (Format == AudioFormats.PcmF32) return 4 * Channels;
                return 0;
            }
        }

        internal bool SameAudioAs(TrackHeader o)
        {
            return o != null && TrackId == o.TrackId && Format == o.Format && SampleRate == o.SampleRate &&
                   Channels == o.Channels && Frames == o.Frames;
        }
    }

    /// <summary>One piece of audio: Data[Offset .. Offset+Count) (Data is the payload frame, not copied).</summary>
    public sealed class TrackChunk
    {
        public long FrameOffset;   // first frame (PCM exact; for wav/ogg see PROTOCOL.md 5.4)
        public long Frames;
        public byte[] Data;
        public int Offset, Count;
    }

    /// <summary>Stream finished: Sha256 was checked against the audio bytes of this (last) transfer.</summary>
    public sealed class TrackEnd
    {
        public long Frames, Bytes;
        public string Sha256;
        /// <summary>How often the stream was resumed after reconnecting (bytes already delivered were skipped).</summary>
        public int Resumes;
        public Dictionary<string, object> Raw;
    }

    public sealed class PrefetchJob
    {
        public string Context, TrackId;
        public int Variant;
        public bool Cached;
    }

    public sealed class PrefetchProgress
    {
        public string Context, TrackId;
        public int Variant;
        public long DoneSteps, TotalSteps;
        public Dictionary<string, object> Raw;

        public PrefetchProgress(Dictionary<string, object> b)
        {
            Raw = b;
            Context = Fields.Str(b, "context");
            TrackId = Fields.Str(b, "track_id");
            Variant = (int)Fields.Long(b, "variant", -1);
            DoneSteps = Fields.Long(b, "done_steps");
            TotalSteps = Fields.Long(b, "total_steps");
        }
    }

    public sealed class PrefetchResult
    {
        public List<PrefetchJob> Jobs = new List<PrefetchJob>();
        public long Generated, Cached;
        /// <summary>Failed jobs as sent: maps with context, variant, error {code, message}.</summary>
        public List<object> Failed = new List<object>();
        public Dictionary<string, object> Raw;
    }

    public sealed class ReloadResult
    {
        public List<string> Contexts, Changed;
    }

    /// <summary>A subscription event (PROTOCOL.md section 6). Name: track_ready, profiles_changed, profiles_error,
    /// progress, or a newer one (then only Raw is filled).</summary>
    public sealed class TroubadourEvent
    {
        public string Name, Context, TrackId, Reason, ErrorMessage, File;
        public int Variant = -1;
        public long DoneSteps, TotalSteps;
        public List<string> Contexts;
        public Dictionary<string, object> Raw;

        public TroubadourEvent(Dictionary<string, object> b)
        {
            Raw = b;
            Name = Fields.Str(b, "event");
            Context = Fields.Str(b, "context");
            TrackId = Fields.Str(b, "track_id");
            Reason = Fields.Str(b, "reason");
            ErrorMessage = Fields.Str(b, "message");
            File = Fields.Str(b, "file");
            Variant = (int)Fields.Long(b, "variant", -1);
            DoneSteps = Fields.Long(b, "done_steps");
            TotalSteps = Fields.Long(b, "total_steps");
            Contexts = Fields.Strings(b, "contexts");
        }
    }

    /// <summary>Callbacks of a get_track. OnHeader, then OnChunk for each piece, then OnEnd; or OnError.
    /// A header with Restarted set means: forget the audio received so far.</summary>
    public sealed class TrackCallbacks
    {
        public Action<TrackHeader> OnHeader;
        public Action<TrackChunk> OnChunk;
        public Action<TrackEnd> OnEnd;
        public Action<TroubadourError> OnError;
    }
}

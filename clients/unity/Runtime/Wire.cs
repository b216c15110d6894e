// Troubadour framing (PROTOCOL.md section 2): header "TRB"+1, type, msgpack body map, optional payload.
using System;
using System.Collections.Generic;
using System.Text;

namespace Troubadour
{
    /// <summary>One protocol message (frames after the empty delimiter).</summary>
    public sealed class Message
    {
        public readonly string Type;
        public readonly Dictionary<string, object> Body;
        public readonly byte[] Payload;   // null when there is no payload frame

        public Message(string type, Dictionary<string, object> body, byte[] payload = null)
        {
            Type = type;
            Body = body;
            Payload = payload;
        }

        /// <summary>The request id this answers: a long, a string, or null (events).</summary>
        public object Id { get { object v; return Body.TryGetValue("id", out v) ? v : null; } }
        public long Seq { get { return Fields.Long(Body, "seq", -1); } }
        public bool Final { get { return Fields.Bool(Body, "final", false); } }
    }

    public static class Wire
    {
        public const int Version = 1;
        public static readonly byte[] Header = { 0x54, 0x52, 0x42, 0x01 };   // "TRB" + 1
        public const int MaxTypeLen = 32;
        public const int MaxRequestBytes = 65536;
        public const int MaxReplyBodyBytes = 1 << 20;
        public const int MaxChunkBytes = 1 << 20;
        public const int MaxTrackBytes = 32 << 20;

        public static readonly HashSet<string> RequestTypes = new HashSet<string> {
            "info", "health", "list_profiles", "get_track", "prefetch", "cancel", "subscribe", "unsubscribe",
            "reload_profiles", "ping" };
        public static readonly HashSet<string> ReplyTypes = new HashSet<string> {
            "info", "health", "profiles", "track", "chunk", "end", "accepted", "progress", "done", "cancelled",
            "subscribed", "unsubscribed", "reloaded", "pong", "event", "error" };

        /// <summary>Frames header, type, body[, payload] (without the empty delimiter).</summary>
        public static List<byte[]> Encode(string type, IDictionary<string, object> body, byte[] payload = null)
        {
            var frames = new List<byte[]> { Header, Encoding.ASCII.GetBytes(type), MsgPack.Encode(body) };
            if (payload != null) frames.Add(payload);
            return frames;
        }

        /// <summary>Parses frames 1-4 (delimiter removed). reply: true for server messages. Throws
        /// ProtocolException with the code the protocol prescribes.</summary>
        public static Message Decode(IList<byte[]> frames, bool reply)
        {
            if (frames == null || frames.Count == 0) throw new ProtocolException(ErrorCodes.BadRequest, "no frames");
            var h = frames[0];
            if (h.Length >= 4 && h[0] == Header[0] && h[1] == Header[1] && h[2] == Header[2] && h[3] != Version)
                throw new ProtocolException(ErrorCodes.UnsupportedVersion, "protocol version " + h[3] + " is not supported");
            if (h.Length != 4 || h[3] != Version || h[0] != Header[0] || h[1] != Header[1] || h[2] != Header[2])
                throw new ProtocolException(ErrorCodes.BadRequest, "first frame must be the header TRB\\x01");
            if (frames.Count < 3 || frames.Count > 4)
                throw new ProtocolException(ErrorCodes.BadRequest, "a message has 3 or 4 frames, got " + frames.Count);
            var type = ParseType(frames[1]);
            if (!reply)
            {
                long total = 0;
                foreach (var f in frames) total += f.Length;
                if (total > MaxRequestBytes) throw new ProtocolException(ErrorCodes.TooLarge, "request larger than 65536 bytes");
            }
            else if (frames[2].Length > MaxReplyBodyBytes)
                throw new ProtocolException(ErrorCodes.TooLarge, "body larger than 1 MiB");
            if (!(reply ? ReplyTypes : RequestTypes).Contains(type))
            {
                object id = null;
                try { id = RequestId(DecodeBody(frames[2])); } catch (ProtocolException) { }
                throw new ProtocolException(ErrorCodes.UnknownType, "unknown message type " + type, null, id);
            }
            var body = DecodeBody(frames[2]);
            var payload = frames.Count == 4 ? frames[3] : null;
            if (reply) CheckReply(type, body, payload);
            else if (payload != null)
                throw new ProtocolException(ErrorCodes.BadRequest, "requests carry no payload frame", null, RequestId(body));
            return new Message(type, body, payload);
        }

        static string ParseType(byte[] t)
        {
            bool ok = t.Length >= 1 && t.Length <= MaxTypeLen && t[0] >= 'a' && t[0] <= 'z';
            for (int i = 0; ok && i < t.Length; i++)
            {
                byte c = t[i];
                ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
            }
            if (!ok) throw new ProtocolException(ErrorCodes.BadRequest, "message type must be 1-32 characters a-z, 0-9, _");
            return Encoding.ASCII.GetString(t);
        }

        static Dictionary<string, object> DecodeBody(byte[] data)
        {
            var body = MsgPack.Decode(data) as Dictionary<string, object>;
            if (body == null) throw new ProtocolException(ErrorCodes.BadRequest, "body must be a msgpack map");
            return body;
        }

        /// <summary>The request id of a message Decode refused (frames without the delimiter), or null. readable is
        /// false when no id can be read at all: body not a msgpack map, id missing or malformed.</summary>
        public static object PeekId(IList<byte[]> frames, out bool readable)
        {
            readable = false;
            if (frames == null || frames.Count < 3) return null;
            Dictionary<string, object> body;
            try { body = DecodeBody(frames[2]); }
            catch (Exception) { return null; }
            object id;
            if (!body.TryGetValue("id", out id)) return null;
            var rid = RequestId(body);
            readable = id == null || rid != null;
            return rid;
        }

        /// <summary>The body's id if it is a valid request id (long 0..2^63-1 or string of 1-64 chars), else null.</summary>
        public static object RequestId(Dictionary<string, object> body)
        {
            object id;
            if (body == null || !body.TryGetValue("id", out id)) return null;
            if (id is long && (long)id >= 0) return id;
            var s = id as string;
            if (s != null && s.Length >= 1 && CharCount(s) <= 64) return s;
            return null;
        }

        static int CharCount(string s)   // code points, as Python counts them
        {
            int n = 0;
            for (int i = 0; i < s.Length; i++) if (!char.IsLowSurrogate(s[i])) n++;
            return n;
        }

        static void CheckReply(string type, Dictionary<string, object> body, byte[] payload)
        {
            object id;
            if (!body.TryGetValue("id", out id) || (id != null && RequestId(body) == null))
                throw new ProtocolException(ErrorCodes.BadRequest, "id must be nil, an int >= 0 or a string", "id");
            object seq, fin;
            if (!body.TryGetValue("seq", out seq) || !(seq is long) || (long)seq < 0)
                throw new ProtocolException(ErrorCodes.BadRequest, "seq must be an int >= 0", "seq");
            if (!body.TryGetValue("final", out fin) || !(fin is bool))
                throw new ProtocolException(ErrorCodes.BadRequest, "final must be a bool", "final");
            if (type == "chunk")
            {
                if (payload == null) throw new ProtocolException(ErrorCodes.BadRequest, "chunk needs a payload");
                if (payload.Length > MaxChunkBytes) throw new ProtocolException(ErrorCodes.TooLarge, "chunk payload over 1 MiB");
            }
            else if (type == "track")
            {
                if ((payload != null) != (bool)fin)
                    throw new ProtocolException(ErrorCodes.BadRequest, "track carries a payload exactly when final is true");
                if (payload != null && payload.Length > MaxTrackBytes)
                    throw new ProtocolException(ErrorCodes.TooLarge, "track payload over 32 MiB");
            }
            else if (payload != null)
                throw new ProtocolException(ErrorCodes.BadRequest, type + " carries no payload frame");
        }
    }

    /// <summary>Tolerant typed access to body fields: a missing or mistyped field gives the default.</summary>
    public static class Fields
    {
        public static string Str(IDictionary<string, object> m, string key, string dflt = null)
        {
            object v;
            return m != null && m.TryGetValue(key, out v) && v is string ? (string)v : dflt;
        }

        public static long Long(IDictionary<string, object> m, string key, long dflt = 0)
        {
            object v;
            return m != null && m.TryGetValue(key, out v) && v is long ? (long)v : dflt;
        }

        /// <summary>A "number" field: int or float.</summary>
        public static double Num(IDictionary<string, object> m, string key, double dflt = 0)
        {
            object v;
            if (m == null || !m.TryGetValue(key, out v)) return dflt;
            if (v is double) return (double)v;
            if (v is long) return (long)v;
            return dflt;
        }

        public static bool Bool(IDictionary<string, object> m, string key, bool dflt = false)
        {
            object v;
            return m != null && m.TryGetValue(key, out v) && v is bool ? (bool)v : dflt;
        }

        public static bool Has(IDictionary<string, object> m, string key)
        {
            object v;
            return m != null && m.TryGetValue(key, out v) && v != null;
        }

        public static Dictionary<string, object> Map(IDictionary<string, object> m, string key)
        {
            object v;
            return m != null && m.TryGetValue(key, out v) ? v as Dictionary<string, object> : null;
        }

        public static List<object> List(IDictionary<string, object> m, string key)
        {
            object v;
            return m != null && m.TryGetValue(key, out v) && v is List<object> ? (List<object>)v : new List<object>();
        }

        public static List<string> Strings(IDictionary<string, object> m, string key)
        {
            var outList = new List<string>();
            foreach (var o in List(m, key)) if (o is string) outList.Add((string)o);
            return outList;
        }
    }
}

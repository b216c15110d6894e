// Golden vectors (protocol/vectors/vectors.json): decode, compare with `decoded`, re-encode byte for byte;
// invalid ones must be rejected with the listed code.
using System;
using System.Collections.Generic;
using System.Globalization;
using System.IO;

namespace Troubadour.Tests
{
    public static class VectorTests
    {
        public static int Run(string path)
        {
            var root = (Dictionary<string, object>)MiniJson.Parse(File.ReadAllText(path));
            int failures = 0, count = 0;
            foreach (var o in (List<object>)root["vectors"])
            {
                var v = (Dictionary<string, object>)o;
                var name = (string)v["name"];
                string problem;
                try { problem = Check(v); }
                catch (Exception e) { problem = "exception: " + e; }
                count++;
                if (problem == null) Console.WriteLine("OK vector " + name);
                else
                {
                    failures++;
                    Console.WriteLine("FAIL vector " + name + ": " + problem);
                }
            }
            Console.WriteLine("VECTORS " + count + " " + failures);
            return failures;
        }

        static string Check(Dictionary<string, object> v)
        {
            bool reply = (string)v["direction"] == "reply";
            var frames = new List<byte[]>();
            foreach (var h in (List<object>)v["frames"]) frames.Add(Hex((string)h));
            if ((bool)v["valid"])
            {
                Message m;
                try { m = Wire.Decode(frames, reply); }
                catch (ProtocolException e) { return "rejected: " + e.Code + ": " + e.Message; }
                var dec = (Dictionary<string, object>)v["decoded"];
                if (m.Type != (string)dec["type"]) return "type " + m.Type;
                var expected = (Dictionary<string, object>)FromJson(dec["body"]);
                var diff = Diff(m.Body, expected, "body");
                if (diff != null) return diff;
                var payloadHex = dec["payload_hex"] as string;
                var expectedPayload = payloadHex == null ? null : Hex(payloadHex);
                diff = Diff(m.Payload, expectedPayload, "payload");
                if (diff != null) return diff;
                // Encoding the decoded message and the expected JSON must both give the frames back.
                diff = SameFrames(Wire.Encode(m.Type, m.Body, m.Payload), frames, "re-encoded");
                if (diff != null) return diff;
                return SameFrames(Wire.Encode((string)dec["type"], expected, expectedPayload), frames, "encoded from JSON");
            }
            var err = (Dictionary<string, object>)v["error"];
            if ((string)err["stage"] == "request")
            {
                // Frames that decode fine; refusing them is the server's job (PROTOCOL.md section 13).
                try { Wire.Decode(frames, reply); }
                catch (ProtocolException e) { return "stage request, but decoding failed: " + e.Code; }
                return null;
            }
            try
            {
                Wire.Decode(frames, reply);
                return "accepted, expected " + err["code"];
            }
            catch (ProtocolException e)
            {
                if (e.Code != (string)err["code"]) return "code " + e.Code + " (" + e.Message + "), expected " + err["code"];
                if (e.Field != err["field"] as string) return "field " + e.Field + ", expected " + err["field"];
                if (!Equals(e.Id, err["id"])) return "id " + e.Id + ", expected " + err["id"];
                return null;
            }
        }

        /// <summary>JSON conventions of the vectors: {"$bin": hex}, {"$int": "decimal"}, {"$float": "nan"|"inf"|"-inf"}.</summary>
        public static object FromJson(object j)
        {
            var d = j as Dictionary<string, object>;
            if (d != null)
            {
                if (d.Count == 1 && d.ContainsKey("$bin")) return Hex((string)d["$bin"]);
                if (d.Count == 1 && d.ContainsKey("$int")) return long.Parse((string)d["$int"], CultureInfo.InvariantCulture);
                if (d.Count == 1 && d.ContainsKey("$float"))
                {
                    var f = (string)d["$float"];
                    return f == "nan" ? double.NaN : f == "inf" ? double.PositiveInfinity : double.NegativeInfinity;
                }
                var outMap = new Dictionary<string, object>();
                foreach (var kv in d) outMap[kv.Key] = FromJson(kv.Value);
                return outMap;
            }
            var l = j as List<object>;
            if (l != null)
            {
                var outList = new List<object>();
                foreach (var x in l) outList.Add(FromJson(x));
                return outList;
            }
            return j;
        }

        /// <summary>null when equal, with msgpack types compared strictly (int is not float).</summary>
        public static string Diff(object a, object b, string path)
        {
            if (a == null || b == null) return a == b ? null : path + ": " + Show(a) + " != " + Show(b);
            if (a.GetType() != b.GetType()) return path + ": type " + a.GetType().Name + " != " + b.GetType().Name;
            if (a is double)
            {
                double x = (double)a, y = (double)b;
                bool same = (double.IsNaN(x) && double.IsNaN(y)) || BitConverter.DoubleToInt64Bits(x) == BitConverter.DoubleToInt64Bits(y);
                return same ? null : path + ": " + x.ToString("R") + " != " + y.ToString("R");
            }
            if (a is byte[])
            {
                var x = (byte[])a;
                var y = (byte[])b;
                if (x.Length != y.Length) return path + ": " + x.Length + " bytes != " + y.Length;
                for (int i = 0; i < x.Length; i++) if (x[i] != y[i]) return path + ": byte " + i + " differs";
                return null;
            }
            var da = a as Dictionary<string, object>;
            if (da != null)
            {
                var db = (Dictionary<string, object>)b;
                if (da.Count != db.Count) return path + ": " + da.Count + " keys != " + db.Count;
                foreach (var kv in da)
                {
                    if (!db.ContainsKey(kv.Key)) return path + ": unexpected key " + kv.Key;
                    var d = Diff(kv.Value, db[kv.Key], path + "." + kv.Key);
                    if (d != null) return d;
                }
                return null;
            }
            var la = a as List<object>;
            if (la != null)
            {
                var lb = (List<object>)b;
                if (la.Count != lb.Count) return path + ": " + la.Count + " items != " + lb.Count;
                for (int i = 0; i < la.Count; i++)
                {
                    var d = Diff(la[i], lb[i], path + "[" + i + "]");
                    if (d != null) return d;
                }
                return null;
            }
            return a.Equals(b) ? null : path + ": " + Show(a) + " != " + Show(b);
        }

        static string SameFrames(List<byte[]> got, List<byte[]> want, string what)
        {
            if (got.Count != want.Count) return what + ": " + got.Count + " frames, want " + want.Count;
            for (int i = 0; i < got.Count; i++)
            {
                var d = Diff(got[i], want[i], what + " frame " + (i + 1));
                if (d != null) return d + " (" + ToHex(got[i]) + ")";
            }
            return null;
        }

        static string Show(object o) { return o == null ? "null" : o.ToString(); }

        public static byte[] Hex(string h)
        {
            var b = new byte[h.Length / 2];
            for (int i = 0; i < b.Length; i++) b[i] = Convert.ToByte(h.Substring(2 * i, 2), 16);
            return b;
        }

        public static string ToHex(byte[] b)
        {
            var s = new System.Text.StringBuilder();
            foreach (var x in b) s.Append(x.ToString("x2"));
            return s.ToString();
        }
    }
}

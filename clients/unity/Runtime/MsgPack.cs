// The msgpack subset of PROTOCOL.md section 3: nil, bool, int (as long), float (as double), str, bin (byte[]),
// array (List<object>), map (Dictionary<string, object>, string keys only). No ext types.
// The encoder writes the shortest forms and sorts map keys by UTF-8 bytes, so its output matches the golden
// vectors byte for byte.
using System;
using System.Collections;
using System.Collections.Generic;
using System.IO;
using System.Text;

namespace Troubadour
{
    public static class MsgPack
    {
        public const int MaxStrBytes = 16384;
        public const int MaxArrayLen = 4096;
        public const int MaxMapLen = 256;
        public const int MaxDepth = 16;   // the body map is depth 1

        static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, true);

        // ------------------------------------------------------------------ encoding
        public static byte[] Encode(object value)
        {
            var ms = new MemoryStream();
            Write(ms, value, 1);
            return ms.ToArray();
        }

        static void Write(MemoryStream o, object v, int depth)
        {
            if (v == null) { o.WriteByte(0xc0); return; }
            if (v is bool) { o.WriteByte((bool)v ? (byte)0xc3 : (byte)0xc2); return; }
            if (v is string) { WriteStr(o, (string)v); return; }
            if (v is byte[]) { WriteBin(o, (byte[])v); return; }
            if (v is double) { WriteFloat(o, (double)v); return; }
            if (v is float) { WriteFloat(o, (float)v); return; }
            if (v is ulong)
            {
                var u = (ulong)v;
                if (u > long.MaxValue) throw new ProtocolException(ErrorCodes.BadRequest, "integer outside the int64 range");
                WriteInt(o, (long)u);
                return;
            }
            if (v is long || v is int || v is short || v is sbyte || v is byte || v is ushort || v is uint)
            {
                WriteInt(o, Convert.ToInt64(v));
                return;
            }
            var dict = v as IDictionary;
            var list = v as IList;
            // Containers count the depth (the body map is 1), as the decoder and the server do; scalars do not.
            if ((dict != null || list != null) && depth > MaxDepth)
                throw new ProtocolException(ErrorCodes.TooLarge, "nesting deeper than 16 levels");
            if (dict != null) { WriteMap(o, dict, depth); return; }
            if (list != null)
            {
                WriteHeader(o, list.Count, 0x90, 16, 0xdc, 0xdd);
                foreach (var item in list) Write(o, item, depth + 1);
                return;
            }
            throw new ProtocolException(ErrorCodes.BadRequest, v.GetType().Name + " is not in the msgpack subset");
        }

        static void WriteMap(MemoryStream o, IDictionary dict, int depth)
        {
            var keys = new List<byte[]>(dict.Count);
            var values = new Dictionary<byte[], object>();
            foreach (DictionaryEntry e in dict)
            {
                var k = e.Key as string;
                if (k == null) throw new ProtocolException(ErrorCodes.BadRequest, "map keys must be strings");
                var kb = Encoding.UTF8.GetBytes(k);
                keys.Add(kb);
                values[kb] = e.Value;
            }
            keys.Sort(CompareBytes);   // code point order == UTF-8 byte order
            WriteHeader(o, keys.Count, 0x80, 16, 0xde, 0xdf);
            foreach (var kb in keys)
            {
                WriteStrBytes(o, kb);
                Write(o, values[kb], depth + 1);
            }
        }

        static int CompareBytes(byte[] a, byte[] b)
        {
            int n = Math.Min(a.Length, b.Length);
            for (int i = 0; i < n; i++)
                if (a[i] != b[i]) return a[i] - b[i];
            return a.Length - b.Length;
        }

        static void WriteHeader(MemoryStream o, int count, int fixBase, int fixLimit, byte code16, byte code32)
        {
            if (count < fixLimit) o.WriteByte((byte)(fixBase | count));
            else if (count <= 0xffff) { o.WriteByte(code16); WriteBE(o, (ulong)count, 2); }
            else { o.WriteByte(code32); WriteBE(o, (ulong)count, 4); }
        }

        static void WriteStr(MemoryStream o, string s)
        {
            WriteStrBytes(o, Encoding.UTF8.GetBytes(s));
        }

        static void WriteStrBytes(MemoryStream o, byte[] b)
        {
            int n = b.Length;
            if (n < 32) o.WriteByte((byte)(0xa0 | n));
            else if (n <= 0xff) { o.WriteByte(0xd9); o.WriteByte((byte)n); }
            else if (n <= 0xffff) { o.WriteByte(0xda); WriteBE(o, (ulong)n, 2); }
            else { o.WriteByte(0xdb); WriteBE(o, (ulong)n, 4); }
            o.Write(b, 0, n);
        }

        static void WriteBin(MemoryStream o, byte[] b)
        {
            int n = b.Length;
            if (n <= 0xff) { o.WriteByte(0xc4); o.WriteByte((byte)n); }
            else if (n <= 0xffff) { o.WriteByte(0xc5); WriteBE(o, (ulong)n, 2); }
            else { o.WriteByte(0xc6); WriteBE(o, (ulong)n, 4); }
            o.Write(b, 0, n);
        }

        static void WriteFloat(MemoryStream o, double d)
        {
            o.WriteByte(0xcb);   // always float64, as the protocol's shortest form prescribes
            // One NaN for all (.NET's double.NaN has the sign bit set; Python's is 0x7ff8000000000000).
            ulong bits = double.IsNaN(d) ? 0x7ff8000000000000UL : (ulong)BitConverter.DoubleToInt64Bits(d);
            WriteBE(o, bits, 8);
        }

        static void WriteInt(MemoryStream o, long v)
        {
            if (v >= 0)
            {
                if (v <= 0x7f) o.WriteByte((byte)v);
                else if (v <= 0xff) { o.WriteByte(0xcc); o.WriteByte((byte)v); }
                else if (v <= 0xffff) { o.WriteByte(0xcd); WriteBE(o, (ulong)v, 2); }
                else if (v <= 0xffffffffL) { o.WriteByte(0xce); WriteBE(o, (ulong)v, 4); }
                else { o.WriteByte(0xcf); WriteBE(o, (ulong)v, 8); }
            }
            else
            {
                if (v >= -32) o.WriteByte((byte)(sbyte)v);
                else if (v >= sbyte.MinValue) { o.WriteByte(0xd0); o.WriteByte((byte)(sbyte)v); }
                else if (v >= short.MinValue) { o.WriteByte(0xd1); WriteBE(o, (ulong)v, 2); }
                else if (v >= int.MinValue) { o.WriteByte(0xd2); WriteBE(o, (ulong)v, 4); }
                else { o.WriteByte(0xd3); WriteBE(o, (ulong)v, 8); }
            }
        }

        static void WriteBE(MemoryStream o, ulong v, int bytes)
        {
            for (int i = bytes - 1; i >= 0; i--) o.WriteByte((byte)(v >> (8 * i)));
        }

        // ------------------------------------------------------------------ decoding
        /// <summary>Decodes exactly one value filling all of data; errors are ProtocolException
        /// (bad_request, or too_large for the limits of PROTOCOL.md section 10).</summary>
        public static object Decode(byte[] data)
        {
            int pos = 0;
            var v = Read(data, ref pos, 1);
            if (pos != data.Length) throw Bad("trailing bytes after the body");
            return v;
        }

        static ProtocolException Bad(string message)
        {
            return new ProtocolException(ErrorCodes.BadRequest, "body is not valid msgpack: " + message);
        }

        static ulong ReadBE(byte[] d, ref int pos, int bytes)
        {
            if (d.Length - pos < bytes) throw Bad("truncated");
            ulong v = 0;
            for (int i = 0; i < bytes; i++) v = (v << 8) | d[pos + i];
            pos += bytes;
            return v;
        }

        static object Read(byte[] d, ref int pos, int depth)
        {
            if (pos >= d.Length) throw Bad("truncated");
            int b = d[pos++];
            if (b <= 0x7f) return (long)b;
            if (b >= 0xe0) return (long)(sbyte)b;
            if (b >= 0xa0 && b <= 0xbf) return ReadStr(d, ref pos, b & 0x1f);
            if (b >= 0x90 && b <= 0x9f) return ReadArray(d, ref pos, b & 0x0f, depth);
            if (b >= 0x80 && b <= 0x8f) return ReadMap(d, ref pos, b & 0x0f, depth);
            switch (b)
            {
                case 0xc0: return null;
                case 0xc2: return false;
                case 0xc3: return true;
                case 0xc4: return ReadBin(d, ref pos, (long)ReadBE(d, ref pos, 1));
                case 0xc5: return ReadBin(d, ref pos, (long)ReadBE(d, ref pos, 2));
                case 0xc6: return ReadBin(d, ref pos, (long)ReadBE(d, ref pos, 4));
                case 0xca:
                {
                    var bits = (int)(uint)ReadBE(d, ref pos, 4);
                    return (double)BitConverter.ToSingle(BitConverter.GetBytes(bits), 0);
                }
                case 0xcb: return BitConverter.Int64BitsToDouble((long)ReadBE(d, ref pos, 8));
                case 0xcc: return (long)ReadBE(d, ref pos, 1);
                case 0xcd: return (long)ReadBE(d, ref pos, 2);
                case 0xce: return (long)ReadBE(d, ref pos, 4);
                case 0xcf:
                {
                    var u = ReadBE(d, ref pos, 8);
                    if (u > long.MaxValue) throw new ProtocolException(ErrorCodes.BadRequest, "integer above the int64 range");
                    return (long)u;
                }
                case 0xd0: return (long)(sbyte)ReadBE(d, ref pos, 1);
                case 0xd1: return (long)(short)ReadBE(d, ref pos, 2);
                case 0xd2: return (long)(int)ReadBE(d, ref pos, 4);
                case 0xd3: return (long)ReadBE(d, ref pos, 8);
                case 0xd9: return ReadStr(d, ref pos, (long)ReadBE(d, ref pos, 1));
                case 0xda: return ReadStr(d, ref pos, (long)ReadBE(d, ref pos, 2));
                case 0xdb: return ReadStr(d, ref pos, (long)ReadBE(d, ref pos, 4));
                case 0xdc: return ReadArray(d, ref pos, (long)ReadBE(d, ref pos, 2), depth);
                case 0xdd: return ReadArray(d, ref pos, (long)ReadBE(d, ref pos, 4), depth);
                case 0xde: return ReadMap(d, ref pos, (long)ReadBE(d, ref pos, 2), depth);
                case 0xdf: return ReadMap(d, ref pos, (long)ReadBE(d, ref pos, 4), depth);
                case 0xc7: case 0xc8: case 0xc9: case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
                    throw new ProtocolException(ErrorCodes.BadRequest, "msgpack ext types are not allowed");
                default:
                    throw Bad("invalid type byte 0x" + b.ToString("x2"));
            }
        }

        static string ReadStr(byte[] d, ref int pos, long n)
        {
            if (n > MaxStrBytes) throw new ProtocolException(ErrorCodes.TooLarge, "string longer than 16384 bytes");
            if (d.Length - pos < n) throw Bad("truncated");
            string s;
            try { s = StrictUtf8.GetString(d, pos, (int)n); }
            catch (ArgumentException) { throw new ProtocolException(ErrorCodes.BadRequest, "string is not valid UTF-8"); }
            pos += (int)n;
            return s;
        }

        static byte[] ReadBin(byte[] d, ref int pos, long n)
        {
            if (n > MaxStrBytes) throw new ProtocolException(ErrorCodes.TooLarge, "bin longer than 16384 bytes");
            if (d.Length - pos < n) throw Bad("truncated");
            var b = new byte[n];
            Buffer.BlockCopy(d, pos, b, 0, (int)n);
            pos += (int)n;
            return b;
        }

        static List<object> ReadArray(byte[] d, ref int pos, long n, int depth)
        {
            if (depth > MaxDepth) throw new ProtocolException(ErrorCodes.TooLarge, "nesting deeper than 16 levels");
            if (n > MaxArrayLen) throw new ProtocolException(ErrorCodes.TooLarge, "array with more than 4096 items");
            var list = new List<object>((int)n);
            for (long i = 0; i < n; i++) list.Add(Read(d, ref pos, depth + 1));
            return list;
        }

        static Dictionary<string, object> ReadMap(byte[] d, ref int pos, long n, int depth)
        {
            if (depth > MaxDepth) throw new ProtocolException(ErrorCodes.TooLarge, "nesting deeper than 16 levels");
            if (n > MaxMapLen) throw new ProtocolException(ErrorCodes.TooLarge, "map with more than 256 entries");
            var map = new Dictionary<string, object>((int)n);
            for (long i = 0; i < n; i++)
            {
                var key = Read(d, ref pos, depth + 1) as string;
                if (key == null) throw new ProtocolException(ErrorCodes.BadRequest, "map keys must be strings");
                map[key] = Read(d, ref pos, depth + 1);
            }
            return map;
        }
    }
}

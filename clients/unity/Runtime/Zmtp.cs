// A minimal ZeroMQ DEALER over TCP: ZMTP 3.0 (RFC 23) with the NULL security mechanism. Enough to talk to
// a libzmq ROUTER: greeting, READY handshake, multipart messages, PING -> PONG, ERROR.
using System;
using System.Collections.Generic;
using System.IO;
using System.Net.Sockets;
using System.Text;
using System.Threading;

namespace Troubadour
{
    public sealed class ZmtpException : Exception
    {
        public ZmtpException(string message) : base(message) { }
    }

    /// <summary>One ZMTP connection. Receive() is meant for one reader thread; Send() may be called from any
    /// thread (writes are serialized). Any IOException/SocketException/ZmtpException means the connection is dead.</summary>
    public sealed class ZmtpDealer : IDisposable
    {
        public const int MaxFrameBytes = (32 << 20) + 4096;   // largest server frame: a whole 32 MiB track
        const int MaxFramesPerMessage = 16;
        const byte FlagMore = 1, FlagLong = 2, FlagCommand = 4;

        readonly TcpClient tcp;
        readonly NetworkStream stream;
        readonly object writeLock = new object();
        readonly byte[] rbuf = new byte[64 * 1024];
        int rpos, rlen;
        volatile bool closed;
        int pingsAnswered;

        /// <summary>Connects and performs the ZMTP handshake; throws on failure or after timeoutMs.</summary>
        public static ZmtpDealer Connect(string host, int port, int timeoutMs)
        {
            var tcp = new TcpClient();
            try
            {
                var ar = tcp.BeginConnect(host, port, null, null);
                if (!ar.AsyncWaitHandle.WaitOne(timeoutMs))
                    throw new ZmtpException("connect to " + host + ":" + port + " timed out");
                tcp.EndConnect(ar);
                var z = new ZmtpDealer(tcp);
                z.Handshake(timeoutMs);
                return z;
            }
            catch
            {
                tcp.Close();
                throw;
            }
        }

        ZmtpDealer(TcpClient tcp)
        {
            this.tcp = tcp;
            tcp.NoDelay = true;
            stream = tcp.GetStream();
        }

        void Handshake(int timeoutMs)
        {
            tcp.ReceiveTimeout = timeoutMs;
            tcp.SendTimeout = timeoutMs;
            // Greeting: signature, version 3.0, mechanism "NULL" padded to 20 bytes, as-server 0, 31 filler bytes.
            var greeting = new byte[64];
            greeting[0] = 0xff;
            greeting[9] = 0x7f;
            greeting[10] = 3;
            greeting[11] = 0;
            Encoding.ASCII.GetBytes("NULL", 0, 4, greeting, 12);
            WriteRaw(greeting, 0, 64);
            var peer = new byte[64];
            ReadExact(peer, 0, 64);
            if (peer[0] != 0xff || peer[9] != 0x7f) throw new ZmtpException("peer is not a ZMTP peer");
            if (peer[10] < 3) throw new ZmtpException("peer speaks ZMTP " + peer[10] + ".x, need 3.x");
            var mech = Encoding.ASCII.GetString(peer, 12, 20).TrimEnd('\0');
            if (mech != "NULL")
                throw new ZmtpException("the server requires the " + mech + " security mechanism; this client speaks NULL only");

            var ready = new MemoryStream();
            WriteCommandName(ready, "READY");
            WriteProperty(ready, "Socket-Type", Encoding.ASCII.GetBytes("DEALER"));
            WriteProperty(ready, "Identity", new byte[0]);   // empty: the ROUTER picks a random routing id
            WriteFrame(ready.ToArray(), FlagCommand);

            // The peer's READY must be the first command; it names its socket type.
            var cmd = ReadFrame();
            if (!cmd.IsCommand) throw new ZmtpException("expected READY, got a message frame");
            string name;
            var props = ParseCommand(cmd.Data, out name);
            if (name == "ERROR") throw new ZmtpException("peer refused the handshake");
            if (name != "READY") throw new ZmtpException("expected READY, got " + name);
            byte[] st;
            var peerType = props.TryGetValue("Socket-Type", out st) ? Encoding.ASCII.GetString(st) : "";
            if (peerType != "ROUTER" && peerType != "DEALER")
                throw new ZmtpException("a DEALER cannot talk to a " + peerType + " socket");
            tcp.ReceiveTimeout = 0;   // from now on liveness is the protocol's heartbeat
        }

        public bool IsClosed { get { return closed; } }
        /// <summary>ZMTP heartbeat PINGs from the peer answered with PONG.</summary>
        public int PingsAnswered { get { return Volatile.Read(ref pingsAnswered); } }

        /// <summary>Sends one multipart message (all frames in one write).</summary>
        public void Send(IList<byte[]> frames)
        {
            var ms = new MemoryStream();
            for (int i = 0; i < frames.Count; i++)
                AppendFrame(ms, frames[i], i < frames.Count - 1 ? FlagMore : (byte)0);
            var buf = ms.GetBuffer();
            WriteRaw(buf, 0, (int)ms.Length);
        }

        /// <summary>Blocks until a whole message arrives; answers PING commands on the way.</summary>
        public List<byte[]> Receive()
        {
            var frames = new List<byte[]>();
            while (true)
            {
                var f = ReadFrame();
                if (f.IsCommand)
                {
                    if (frames.Count > 0) throw new ZmtpException("command inside a multipart message");
                    HandleCommand(f.Data);
                    continue;
                }
                frames.Add(f.Data);
                if (frames.Count > MaxFramesPerMessage) throw new ZmtpException("too many frames in one message");
                if (!f.More) return frames;
            }
        }

        void HandleCommand(byte[] data)
        {
            string name;
            int bodyStart = CommandBody(data, out name);
            if (name == "PING")   // ZMTP 3.1 heartbeat: TTL (2 bytes) + context; answer PONG + the same context
            {
                var ms = new MemoryStream();
                WriteCommandName(ms, "PONG");
                int ctx = bodyStart + 2;
                if (ctx < data.Length) ms.Write(data, ctx, data.Length - ctx);
                WriteFrame(ms.ToArray(), FlagCommand);
                Interlocked.Increment(ref pingsAnswered);
            }
            else if (name == "ERROR")
                throw new ZmtpException("peer sent ERROR");
            // PONG, READY again, unknown commands: ignored.
        }

        public void Dispose()
        {
            closed = true;
            // Shutdown first: closing alone may not wake a reader blocked in recv on every runtime (IL2CPP)
            try { tcp.Client.Shutdown(SocketShutdown.Both); } catch (Exception) { }
            try { stream.Close(); } catch (Exception) { }
            try { tcp.Close(); } catch (Exception) { }
        }

        // ------------------------------------------------------------------ frames
        struct Frame
        {
            public bool More, IsCommand;
            public byte[] Data;
        }

        Frame ReadFrame()
        {
            var head = new byte[8];
            ReadExact(head, 0, 1);
            byte flags = head[0];
            if ((flags & 0xf8) != 0) throw new ZmtpException("invalid frame flags " + flags);
            long size;
            if ((flags & FlagLong) != 0)
            {
                ReadExact(head, 0, 8);
                size = 0;
                for (int i = 0; i < 8; i++) size = (size << 8) | head[i];
            }
            else
            {
                ReadExact(head, 0, 1);
                size = head[0];
            }
            if (size < 0 || size > MaxFrameBytes) throw new ZmtpException("frame of " + size + " bytes is too large");
            var data = new byte[size];
            ReadExact(data, 0, (int)size);
            return new Frame { More = (flags & FlagMore) != 0, IsCommand = (flags & FlagCommand) != 0, Data = data };
        }

        void WriteFrame(byte[] data, byte flags)
        {
            var ms = new MemoryStream();
            AppendFrame(ms, data, flags);
            WriteRaw(ms.GetBuffer(), 0, (int)ms.Length);
        }

        static void AppendFrame(MemoryStream ms, byte[] data, byte flags)
        {
            if (data.Length > 255)
            {
                ms.WriteByte((byte)(flags | FlagLong));
                for (int i = 7; i >= 0; i--) ms.WriteByte((byte)((long)data.Length >> (8 * i)));
            }
            else
            {
                ms.WriteByte(flags);
                ms.WriteByte((byte)data.Length);
            }
            ms.Write(data, 0, data.Length);
        }

        void WriteRaw(byte[] buf, int off, int count)
        {
            lock (writeLock)
            {
                if (closed) throw new ZmtpException("connection closed");
                stream.Write(buf, off, count);
            }
        }

        void ReadExact(byte[] dst, int off, int count)
        {
            while (count > 0)
            {
                if (rpos == rlen)
                {
                    if (count >= rbuf.Length)   // large frame: read straight into it
                    {
                        int n = stream.Read(dst, off, count);
                        if (n <= 0) throw new ZmtpException("connection closed by peer");
                        off += n;
                        count -= n;
                        continue;
                    }
                    rpos = 0;
                    rlen = stream.Read(rbuf, 0, rbuf.Length);
                    if (rlen <= 0) { rlen = 0; throw new ZmtpException("connection closed by peer"); }
                }
                int take = Math.Min(count, rlen - rpos);
                Buffer.BlockCopy(rbuf, rpos, dst, off, take);
                rpos += take;
                off += take;
                count -= take;
            }
        }

        // ------------------------------------------------------------------ commands
        static void WriteCommandName(MemoryStream ms, string name)
        {
            ms.WriteByte((byte)name.Length);
            var b = Encoding.ASCII.GetBytes(name);
            ms.Write(b, 0, b.Length);
        }

        static void WriteProperty(MemoryStream ms, string name, byte[] value)
        {
            WriteCommandName(ms, name);
            for (int i = 3; i >= 0; i--) ms.WriteByte((byte)(value.Length >> (8 * i)));
            ms.Write(value, 0, value.Length);
        }

        static int CommandBody(byte[] data, out string name)
        {
            if (data.Length < 1 || data.Length < 1 + data[0]) throw new ZmtpException("malformed command");
            name = Encoding.ASCII.GetString(data, 1, data[0]);
            return 1 + data[0];
        }

        static Dictionary<string, byte[]> ParseCommand(byte[] data, out string name)
        {
            int pos = CommandBody(data, out name);
            var props = new Dictionary<string, byte[]>();
            if (name != "READY") return props;
            while (pos < data.Length)
            {
                int nlen = data[pos++];
                if (pos + nlen + 4 > data.Length) throw new ZmtpException("malformed READY property");
                var key = Encoding.ASCII.GetString(data, pos, nlen);
                pos += nlen;
                long vlen = ((long)data[pos] << 24) | ((long)data[pos + 1] << 16) | ((long)data[pos + 2] << 8) | data[pos + 3];
                pos += 4;
                if (pos + vlen > data.Length) throw new ZmtpException("malformed READY property");
                var value = new byte[vlen];
                Buffer.BlockCopy(data, pos, value, 0, (int)vlen);
                pos += (int)vlen;
                props[key] = value;
            }
            return props;
        }
    }
}

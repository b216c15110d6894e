// The client's I/O thread: connection state, request table, heartbeats, reconnects (PROTOCOL.md section 9).
// Everything below runs on the I/O thread only (API calls reach it through Post), so none of it needs locks.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.Threading;

namespace Troubadour
{
    sealed class Pending
    {
        public TroubadourRequest Handle;
        public string Type;
        public Dictionary<string, object> Fields;
        public ReplyHandler Handler;
        public bool Resendable, Internal, ShortTimeout, CancelRequested, Done;
        public long WireId, NextSeq;
        public double SentAt, QueuedAt;
        public int Resends;
    }

    sealed class Subscription
    {
        public List<object> Events;
        public Action<TroubadourEvent> OnEvent;
        public Action<List<string>> OnSubscribed;
        public Action<TroubadourError> OnError;
        public long NextSeq;
    }

    public sealed partial class TroubadourClient
    {
        enum State { Offline, Handshaking, Ready, Stopped }

        static readonly HashSet<string> ShortTypes = new HashSet<string> {
            "info", "health", "list_profiles", "ping", "cancel", "subscribe", "unsubscribe", "reload_profiles" };

        string host;
        int port;
        Thread ioThread;
        volatile bool stopping;
        volatile State state = State.Offline;
        volatile bool subscribedNow;
        volatile ServerInfo serverInfo;
        volatile int connections;
        long lastId;

        readonly AutoResetEvent wake = new AutoResetEvent(false);
        readonly Queue<Action> work = new Queue<Action>();
        readonly Stopwatch clock = Stopwatch.StartNew();

        // I/O thread state.
        readonly Dictionary<long, Pending> open = new Dictionary<long, Pending>();
        readonly List<Pending> unsent = new List<Pending>();
        ZmtpDealer conn;
        int generation;
        double lastRecv, lastPing, nextConnectAt, backoff;
        int heartbeatMs = 2000;
        Subscription subscription;
        bool incompatible;
        string lastConnectError;

        double Now { get { return clock.Elapsed.TotalSeconds; } }

        long NextId() { return Interlocked.Increment(ref lastId); }

        void Post(Action a)
        {
            lock (work) work.Enqueue(a);
            wake.Set();
        }

        TroubadourRequest Start(string type, Dictionary<string, object> fields, ReplyHandler handler, bool resendable)
        {
            var p = new Pending
            {
                Type = type, Fields = fields ?? new Dictionary<string, object>(), Handler = handler,
                Resendable = resendable, ShortTimeout = ShortTypes.Contains(type)
            };
            // Encoded here once, on the caller's thread, so a value the wire cannot carry (a ulong past 2^63, an
            // enum, a non-string key...) throws at the call instead of failing later on the I/O thread.
            try { MsgPack.Encode(p.Fields); }
            catch (ProtocolException e) { throw new ArgumentException("cannot send " + type + ": " + e.Message, "fields"); }
            p.Handle = new TroubadourRequest(this, type, NextId());
            handler.Pending = p;
            Post(() => Submit(p));
            return p.Handle;
        }

        void StartInternal(string type, Dictionary<string, object> fields, ReplyHandler handler)
        {
            var p = new Pending
            {
                Type = type, Fields = fields ?? new Dictionary<string, object>(), Handler = handler, Internal = true,
                ShortTimeout = true
            };
            p.Handle = new TroubadourRequest(this, type, NextId());
            handler.Pending = p;
            SendNow(p);
        }

        // ------------------------------------------------------------------ the loop
        void IoLoop()
        {
            backoff = options.ReconnectMinSeconds;
            while (!stopping)
            {
                wake.WaitOne(state == State.Offline ? 20 : 100);
                while (true)
                {
                    Action a;
                    lock (work)
                    {
                        if (work.Count == 0) break;
                        a = work.Dequeue();
                    }
                    try { a(); }
                    catch (Exception e) { Log("I/O thread: " + e); }
                }
                if (stopping) break;
                if (state == State.Offline && !incompatible && Now >= nextConnectAt) TryConnect();
                try { Timers(); }
                catch (Exception e) { Log("I/O thread timers: " + e); }
            }
            Shutdown();
        }

        void TryConnect()
        {
            try
            {
                var z = ZmtpDealer.Connect(host, port, options.ConnectTimeoutMs);
                conn = z;
                int gen = ++generation;
                var reader = new Thread(() => ReadLoop(z, gen)) { IsBackground = true, Name = "Troubadour reader" };
                reader.Start();
                state = State.Handshaking;
                lastRecv = lastPing = Now;
                StartInternal("info", null, new InfoHandler(this));
            }
            catch (Exception e)
            {
                lastConnectError = e.Message;
                Log("connect to " + host + ":" + port + " failed: " + e.Message);
                nextConnectAt = Now + backoff;
                backoff = Math.Min(backoff * 2, options.ReconnectMaxSeconds);
            }
        }

        void ReadLoop(ZmtpDealer z, int gen)
        {
            try
            {
                while (true)
                {
                    var frames = z.Receive();
                    Post(() => OnFrames(gen, frames));
                }
            }
            catch (Exception e)
            {
                if (!z.IsClosed) Post(() => { if (gen == generation) Drop("connection lost: " + e.Message); });
            }
        }

        void Shutdown()
        {
            state = State.Stopped;
            if (conn != null) conn.Dispose();
            conn = null;
            var all = new List<Pending>(unsent);
            all.AddRange(open.Values);
            foreach (var p in all) Complete(p, new TroubadourError(ErrorCodes.Closed, "the client was disposed"));
        }

        // ------------------------------------------------------------------ sending
        void Submit(Pending p)
        {
            if (state == State.Stopped || incompatible)
            {
                Complete(p, new TroubadourError(incompatible ? ErrorCodes.UnsupportedVersion : ErrorCodes.Closed, "client not usable"));
                return;
            }
            if (state == State.Ready) SendNow(p);
            else { p.QueuedAt = Now; unsent.Add(p); }
        }

        void SendNow(Pending p)
        {
            if (conn == null) { p.QueuedAt = Now; unsent.Add(p); return; }
            if (p.WireId != 0) p.Handle.Id = NextId();   // resent: a fresh id
            var body = new Dictionary<string, object>(p.Fields);
            body["id"] = p.Handle.Id;
            List<byte[]> frames;
            // (checked in Start; the caller may have changed the fields' contents since)
            try { frames = Wire.Encode(p.Type, body); }
            catch (ProtocolException e)
            {
                Complete(p, new TroubadourError(ErrorCodes.BadRequest, "cannot send " + p.Type + ": " + e.Message));
                return;
            }
            p.WireId = p.Handle.Id;
            p.NextSeq = 0;
            p.SentAt = Now;
            open[p.WireId] = p;
            frames.Insert(0, new byte[0]);
            try { conn.Send(frames); }
            catch (Exception e) { Drop("send failed: " + e.Message); }
        }

        void SendSubscribe()
        {
            var s = subscription;
            var fields = new Dictionary<string, object> { { "events", s.Events } };
            StartInternal("subscribe", fields, new SimpleHandler(this, m =>
            {
                if (subscription != s) return;
                s.NextSeq = 0;
                subscribedNow = true;
                var names = Fields.Strings(m.Body, "events");
                if (s.OnSubscribed != null) Dispatch(() => s.OnSubscribed(names));
            }, e => { if (s.OnError != null) Dispatch(() => s.OnError(e)); }, true));
        }

        void CancelOnIo(Pending p)
        {
            if (p == null || p.Done) return;
            if (unsent.Contains(p) || conn == null || state != State.Ready)
            {
                Complete(p, new TroubadourError(ErrorCodes.Cancelled, "cancelled before it was sent"));
                return;
            }
            p.CancelRequested = true;
            var fields = new Dictionary<string, object> { { "target", p.WireId } };
            StartInternal("cancel", fields, new SimpleHandler(this, m =>
            {
                // found false: the target had already finished; nothing to do.
            }, null, true));
        }

        Pending FindPending(TroubadourRequest r)
        {
            foreach (var p in open.Values) if (p.Handle == r) return p;
            foreach (var p in unsent) if (p.Handle == r) return p;
            return null;
        }

        // ------------------------------------------------------------------ receiving
        void OnFrames(int gen, List<byte[]> frames)
        {
            if (gen != generation || conn == null) return;
            lastRecv = Now;
            if (frames.Count < 1 || frames[0].Length != 0)
            {
                Log("message without the empty delimiter frame: ignored");
                return;
            }
            frames.RemoveAt(0);
            Message m;
            try { m = Wire.Decode(frames, true); }
            catch (ProtocolException e)
            {
                Log("invalid message from the server: " + e.Code + ": " + e.Message);
                bool readable;
                var bid = Wire.PeekId(frames, out readable);
                Pending bad;
                if (!readable) FailAllOpen("unreadable message from the server, which may have been this request's: " + e.Message);
                else if (bid is long && open.TryGetValue((long)bid, out bad))
                    Fail(bad, new TroubadourError(ErrorCodes.InvalidReply, e.Message, e.Field));
                return;
            }
            var id = m.Id;
            if (m.Type == "event" && id == null)
            {
                OnEvent(m);
                return;
            }
            Pending p;
            if (!(id is long) || !open.TryGetValue((long)id, out p)) return;   // e.g. after a timeout or cancel
            if (m.Seq != p.NextSeq)
            {
                Fail(p, new TroubadourError(ErrorCodes.MessageLost, "expected seq " + p.NextSeq + ", got " + m.Seq));
                return;
            }
            p.NextSeq++;
            if (m.Type == "error")
            {
                var b = m.Body;
                Complete(p, new TroubadourError(Fields.Str(b, "code", ErrorCodes.Internal), Fields.Str(b, "message", ""),
                                                Fields.Str(b, "field")));
                return;
            }
            TroubadourError err = null;
            try { err = p.Handler.OnMessage(m); }
            catch (Exception e) { err = new TroubadourError(ErrorCodes.InvalidReply, e.Message); }
            if (m.Final) Complete(p, err);
            else if (err != null) Fail(p, err);   // still open on the server: cancel it there too
        }

        void OnEvent(Message m)
        {
            var s = subscription;
            if (s == null || !subscribedNow) return;
            if (m.Seq != s.NextSeq) Log("events lost: expected seq " + s.NextSeq + ", got " + m.Seq);
            s.NextSeq = m.Seq + 1;
            var ev = new TroubadourEvent(m.Body);
            if (s.OnEvent != null) Dispatch(() => s.OnEvent(ev));
        }

        internal void OnInfo(ServerInfo si)
        {
            serverInfo = si;
            if (si.ProtocolVersion != Wire.Version)
            {
                Incompatible("server speaks protocol " + si.ProtocolVersion);
                return;
            }
            heartbeatMs = Math.Max(100, si.HeartbeatMs);
            backoff = options.ReconnectMinSeconds;
            state = State.Ready;
            connections++;
            RaiseConnected(si);
            if (subscription != null) SendSubscribe();
            var queued = new List<Pending>(unsent);
            unsent.Clear();
            foreach (var p in queued) if (!p.Done) SendNow(p);
        }

        /// <summary>The server speaks another major version: stop reconnecting, fail everything.</summary>
        internal void Incompatible(string why)
        {
            incompatible = true;
            var err = new TroubadourError(ErrorCodes.UnsupportedVersion, why);
            Drop("incompatible server: " + why);
            foreach (var p in new List<Pending>(unsent)) Complete(p, err);
        }

        // ------------------------------------------------------------------ failures, timers
        /// <summary>The connection is dead: close it, resend what may be resent, fail the rest.</summary>
        internal void Drop(string reason)
        {
            if (conn == null) return;
            Log(reason);
            conn.Dispose();
            conn = null;
            state = State.Offline;
            subscribedNow = false;
            nextConnectAt = Now + backoff;
            backoff = Math.Min(backoff * 2, options.ReconnectMaxSeconds);
            var ids = new List<long>(open.Keys);
            ids.Sort();
            var resend = new List<Pending>();
            foreach (var id in ids)
            {
                var p = open[id];
                if (p.Internal) { p.Done = true; continue; }
                if (p.CancelRequested) Complete(p, new TroubadourError(ErrorCodes.Cancelled, "cancelled"));
                else if (p.Resendable && p.Resends < options.MaxResends)
                {
                    p.Resends++;
                    p.QueuedAt = Now;
                    p.Handler.OnResend();
                    resend.Add(p);
                }
                else Complete(p, new TroubadourError(ErrorCodes.ConnectionLost, reason));
            }
            open.Clear();
            unsent.InsertRange(0, resend);
            RaiseDisconnected(reason);
        }

        void Timers()
        {
            double now = Now;
            foreach (var p in new List<Pending>(unsent))
                if (now - p.QueuedAt > options.OfflineTimeoutSeconds)
                    Complete(p, new TroubadourError(ErrorCodes.ConnectionLost, "no connection to " + host + ":" + port +
                                                    (lastConnectError != null ? " (" + lastConnectError + ")" : "")));
            foreach (var p in new List<Pending>(open.Values))
                if (p.ShortTimeout && now - p.SentAt > options.RequestTimeoutSeconds)
                {
                    if (p.Internal && p.Type == "info") { Drop("no answer to info"); return; }
                    Complete(p, new TroubadourError(ErrorCodes.Timeout, "no reply to " + p.Type + " in " + options.RequestTimeoutSeconds + " s"));
                }
            if (conn == null) return;
            double hb = heartbeatMs / 1000.0;
            if (now - lastRecv > 3 * hb) Drop("server silent for " + (now - lastRecv).ToString("0.0") + " s");
            else if (state == State.Ready && now - lastRecv > hb && now - lastPing > hb)
            {
                lastPing = now;
                StartInternal("ping", null, new SimpleHandler(this, null, null, true));
            }
        }

        /// <summary>Ends a request that is still open on the server: cancel it there, then complete it here.</summary>
        void Fail(Pending p, TroubadourError err)
        {
            if (open.ContainsKey(p.WireId) && conn != null && state == State.Ready)
            {
                var fields = new Dictionary<string, object> { { "target", p.WireId } };
                StartInternal("cancel", fields, new SimpleHandler(this, null, null, true));
            }
            Complete(p, err);
        }

        // An undecodable message with no readable id may have been any open request's final one: fail them all
        // rather than leave one waiting forever (PROTOCOL.md section 4).
        void FailAllOpen(string why)
        {
            foreach (var p in new List<Pending>(open.Values))
                if (!p.Internal && !p.Done) Fail(p, new TroubadourError(ErrorCodes.InvalidReply, why));
        }

        void Complete(Pending p, TroubadourError err)
        {
            if (p.Done) return;
            p.Done = true;
            open.Remove(p.WireId);
            unsent.Remove(p);
            p.Handle.MarkDone(err);
            if (err == null) return;
            var handler = p.Handler;
            if (p.Internal) handler.OnFail(err);
            else Dispatch(() => handler.OnFail(err));
        }
    }
}

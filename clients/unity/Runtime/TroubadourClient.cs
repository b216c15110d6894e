// Public API of the Troubadour client. Networking runs on the client's own threads; see README.md.
using System;
using System.Collections.Generic;
using System.Threading;

namespace Troubadour
{
    public sealed class ClientOptions
    {
        /// <summary>false (default): callbacks and events wait in a queue until you call Poll() (in Unity: from
        /// Update, so they run on the main thread). true: they run at once on the client's I/O thread.</summary>
        public bool DispatchOnIoThread;
        /// <summary>Timeout for requests the server answers at once (info, health, list_profiles, ping, cancel,
        /// subscribe, unsubscribe, reload_profiles). get_track and prefetch have none (PROTOCOL.md section 9).</summary>
        public double RequestTimeoutSeconds = 10;
        /// <summary>A request waiting this long for a connection fails with connection_lost (a restarting server
        /// may need a while to load its model).</summary>
        public double OfflineTimeoutSeconds = 60;
        /// <summary>How often one request is resent after reconnects before it fails with connection_lost.</summary>
        public int MaxResends = 5;
        public int ConnectTimeoutMs = 3000;
        public double ReconnectMinSeconds = 0.25, ReconnectMaxSeconds = 8;
        /// <summary>Diagnostics (called on the I/O thread); null: silent.</summary>
        public Action<string> Log;
    }

    /// <summary>Handle of one request. Id is its current wire id (a reconnect resends it under a new id).</summary>
    public sealed class TroubadourRequest
    {
        readonly TroubadourClient client;
        long id;
        volatile bool done;
        volatile TroubadourError error;
        public readonly string Type;

        internal TroubadourRequest(TroubadourClient client, string type, long id)
        {
            this.client = client;
            Type = type;
            this.id = id;
        }

        public long Id { get { return Interlocked.Read(ref id); } internal set { Interlocked.Exchange(ref id, value); } }
        /// <summary>True once the request is finished on the wire (its final callback may still wait for Poll()).</summary>
        public bool IsDone { get { return done; } }
        public TroubadourError Error { get { return error; } }
        public void Cancel() { client.Cancel(this); }

        internal void MarkDone(TroubadourError e)
        {
            error = e;
            done = true;
        }
    }

    public sealed partial class TroubadourClient : IDisposable
    {
        public static readonly string[] AllEvents = { "track_ready", "profiles_changed", "profiles_error", "progress" };

        readonly ClientOptions options;
        readonly Queue<Action> callbacks = new Queue<Action>();

        public TroubadourClient(ClientOptions options = null)
        {
            this.options = options ?? new ClientOptions();
        }

        /// <summary>Raised (dispatched like callbacks) when a connection is up and its `info` checked.</summary>
        public event Action<ServerInfo> Connected;
        /// <summary>Raised when the connection drops; the client reconnects by itself.</summary>
        public event Action<string> Disconnected;

        public bool IsConnected { get { return state == State.Ready; } }
        public bool IsSubscribed { get { return subscribedNow; } }
        /// <summary>`info` of the current (or last) connection; null before the first.</summary>
        public ServerInfo ServerInfo { get { return serverInfo; } }
        /// <summary>Connections made after the first one.</summary>
        public int ReconnectCount { get { return Math.Max(0, connections - 1); } }

        /// <summary>Starts the client's threads; returns at once. Requests made before the connection is up wait.</summary>
        public void Connect(string host, int port)
        {
            if (ioThread != null) throw new InvalidOperationException("Connect was already called");
            this.host = host;
            this.port = port;
            ioThread = new Thread(IoLoop) { IsBackground = true, Name = "Troubadour I/O" };
            ioThread.Start();
        }

        /// <summary>Runs queued callbacks on the calling thread; returns how many ran. Call it every frame
        /// (unless DispatchOnIoThread).</summary>
        public int Poll()
        {
            int n;
            lock (callbacks) n = callbacks.Count;
            for (int i = 0; i < n; i++)
            {
                Action a;
                lock (callbacks) a = callbacks.Dequeue();
                Invoke(a);
            }
            return n;
        }

        // ------------------------------------------------------------------ requests
        public TroubadourRequest Info(Action<ServerInfo> onReply, Action<TroubadourError> onError = null)
        {
            return Simple("info", null, m => { if (onReply != null) onReply(new ServerInfo(m.Body)); }, onError);
        }

        public TroubadourRequest Health(Action<HealthInfo> onReply, Action<TroubadourError> onError = null)
        {
            return Simple("health", null, m => { if (onReply != null) onReply(new HealthInfo(m.Body)); }, onError);
        }

        public TroubadourRequest ListProfiles(Action<List<ContextProfile>> onReply, Action<TroubadourError> onError = null)
        {
            return Simple("list_profiles", null, m =>
            {
                var list = new List<ContextProfile>();
                foreach (var c in Fields.List(m.Body, "contexts"))
                    if (c is Dictionary<string, object>) list.Add(new ContextProfile((Dictionary<string, object>)c));
                if (onReply != null) onReply(list);
            }, onError);
        }

        /// <summary>Server wall clock (Unix seconds).</summary>
        public TroubadourRequest Ping(Action<double> onPong, Action<TroubadourError> onError = null)
        {
            return Simple("ping", null, m => { if (onPong != null) onPong(Fields.Num(m.Body, "time")); }, onError);
        }

        public TroubadourRequest ReloadProfiles(Action<ReloadResult> onReply, Action<TroubadourError> onError = null)
        {
            return Simple("reload_profiles", null, m =>
            {
                if (onReply != null)
                    onReply(new ReloadResult { Contexts = Fields.Strings(m.Body, "contexts"), Changed = Fields.Strings(m.Body, "changed") });
            }, onError);
        }

        /// <summary>get_track. Streamed: OnHeader, OnChunk..., OnEnd (after the SHA-256 check). Not streamed: the
        /// same callbacks with one chunk. Resent after a reconnect; a resumed stream skips what was delivered.</summary>
        public TroubadourRequest GetTrack(TrackOptions options, TrackCallbacks callbacks)
        {
            if ((options.Context == null) == (options.Prompt == null))
                throw new ArgumentException("give exactly one of Context and Prompt");
            return Start("get_track", options.ToBody(), new TrackHandler(this, callbacks ?? new TrackCallbacks(), options.Stream), true);
        }

        public TroubadourRequest GetTrack(string context, int? variant, string format, int? sampleRate, bool stream,
                                          TrackCallbacks callbacks)
        {
            var o = new TrackOptions { Context = context, Variant = variant, Format = format, SampleRate = sampleRate, Stream = stream };
            return GetTrack(o, callbacks);
        }

        /// <summary>prefetch, streamed: onProgress for each step report, onDone at the end. variants: null ("all"),
        /// or a count. Not resent after a reconnect (PROTOCOL.md section 9): it fails with connection_lost.</summary>
        public TroubadourRequest Prefetch(IList<string> contexts, Action<PrefetchProgress> onProgress,
                                          Action<PrefetchResult> onDone, Action<TroubadourError> onError = null,
                                          int? variants = null, int? priority = null)
        {
            var body = new Dictionary<string, object> { { "contexts", new List<object>(contexts) }, { "stream", true } };
            if (variants.HasValue) body["variants"] = (long)variants.Value;
            if (priority.HasValue) body["priority"] = (long)priority.Value;
            return Start("prefetch", body, new PrefetchHandler(this, onProgress, onDone, onError), false);
        }

        /// <summary>Subscribes to events (null: all); replaces an earlier subscription. Kept across reconnects:
        /// the client subscribes again on each new connection and onSubscribed runs again.</summary>
        public void Subscribe(IList<string> events, Action<TroubadourEvent> onEvent,
                              Action<List<string>> onSubscribed = null, Action<TroubadourError> onError = null)
        {
            var s = new Subscription
            {
                Events = new List<object>(events ?? AllEvents), OnEvent = onEvent, OnSubscribed = onSubscribed, OnError = onError
            };
            Post(() => { subscription = s; if (state == State.Ready) SendSubscribe(); });
        }

        public void Unsubscribe()
        {
            Post(() =>
            {
                subscription = null;
                subscribedNow = false;
                if (state == State.Ready) StartInternal("unsubscribe", null, new SimpleHandler(this, null, null));
            });
        }

        /// <summary>Cancels a request: its OnError gets code "cancelled" (unless it finished first).</summary>
        public void Cancel(TroubadourRequest request)
        {
            Post(() => CancelOnIo(FindPending(request)));
        }

        public void Cancel(long id)
        {
            Post(() => { Pending p; if (open.TryGetValue(id, out p)) CancelOnIo(p); });
        }

        /// <summary>Any request type (for newer protocol minors): onReply gets the final message.</summary>
        public TroubadourRequest Send(string type, Dictionary<string, object> fields, Action<Message> onReply,
                                      Action<TroubadourError> onError, bool resendable)
        {
            return Start(type, fields, new SimpleHandler(this, onReply, onError), resendable);
        }

        public void Dispose()
        {
            stopping = true;
            wake.Set();
        }

        // ------------------------------------------------------------------ helpers
        TroubadourRequest Simple(string type, Dictionary<string, object> fields, Action<Message> onReply,
                                 Action<TroubadourError> onError)
        {
            return Start(type, fields, new SimpleHandler(this, onReply, onError), true);
        }

        internal void Dispatch(Action a)
        {
            if (a == null) return;
            if (options.DispatchOnIoThread) Invoke(a);
            else lock (callbacks) callbacks.Enqueue(a);
        }

        void Invoke(Action a)
        {
            try { a(); }
            catch (Exception e) { Log("exception in a callback: " + e); }
        }

        // At dev time a context missing from the profiles is usually a typo in the game: say so once per name.
        readonly HashSet<string> fallbacksNoted = new HashSet<string>();   // I/O thread only

        internal void NoteFallback(string context)
        {
            if (context != null && fallbacksNoted.Count < 100 && fallbacksNoted.Add(context))
                Log("context '" + context + "' is not in the server's profiles: playing fallback music " +
                    "(a typo? the server's log names the closest context)");
        }

        internal void Log(string message)
        {
            var log = options.Log;
            if (log != null) { try { log(message); } catch (Exception) { } }
        }

        void RaiseConnected(ServerInfo si)
        {
            var h = Connected;
            if (h != null) Dispatch(() => h(si));
        }

        void RaiseDisconnected(string reason)
        {
            var h = Disconnected;
            if (h != null) Dispatch(() => h(reason));
        }
    }
}

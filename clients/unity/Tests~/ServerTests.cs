// Against a real `troubadour serve` (started by tests/test_engine_clients_unity.py). Talks to the driver over
// stdout/stdin: "CMD <what>" asks it to act (profiles_v2, profiles_v1, restart) and waits for a line "ACK".
// Results are lines "OK name" / "FAIL name: why"; "CHECKSUM ..." lines let the driver compare with Python.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Security.Cryptography;
using System.Threading;

namespace Troubadour.Tests
{
    sealed class Fetch
    {
        public TrackHeader Header;
        public int Headers, Chunks;
        public MemoryStream Audio = new MemoryStream();
        public TrackEnd End;
        public TroubadourError Error;
        public TroubadourRequest Request;
        public bool Done { get { return End != null || Error != null; } }

        public TrackCallbacks Callbacks()
        {
            return new TrackCallbacks
            {
                OnHeader = h =>
                {
                    Header = h;
                    Headers++;
                    if (h.Restarted) Audio.SetLength(0);
                },
                OnChunk = c => { Chunks++; Audio.Write(c.Data, c.Offset, c.Count); },
                OnEnd = e => End = e,
                OnError = e => Error = e,
            };
        }

        public string Sha256()
        {
            using (var sha = SHA256.Create()) return VectorTests.ToHex(sha.ComputeHash(Audio.ToArray()));
        }
    }

    public sealed class ServerTests
    {
        TroubadourClient c;
        int failures;
        readonly List<TroubadourEvent> events = new List<TroubadourEvent>();
        int subscribedCount;
        readonly List<string> logLines = new List<string>();   // the client's log (written on its I/O thread)

        void Check(string name, bool ok, string why)
        {
            if (ok) Console.WriteLine("OK " + name);
            else
            {
                failures++;
                Console.WriteLine("FAIL " + name + ": " + why);
            }
        }

        bool WaitFor(Func<bool> cond, double seconds)
        {
            var sw = Stopwatch.StartNew();
            while (true)
            {
                c.Poll();
                if (cond()) return true;
                if (sw.Elapsed.TotalSeconds > seconds) return false;
                Thread.Sleep(2);
            }
        }

        static void Driver(string command)
        {
            Console.WriteLine("CMD " + command);
            var line = Console.ReadLine();
            if (line != "ACK") throw new Exception("driver answered " + (line ?? "nothing") + " to " + command);
        }

        Fetch Get(TrackOptions o, double seconds = 60)
        {
            var f = new Fetch();
            f.Request = c.GetTrack(o, f.Callbacks());
            WaitFor(() => f.Done, seconds);
            return f;
        }

        static string Why(Fetch f)
        {
            return f.Error != null ? f.Error.ToString() : f.End == null ? "no end" : "header " + (f.Header == null ? "none" : f.Header.TrackId);
        }

        TroubadourError ErrorOf(TrackOptions o)
        {
            var f = Get(o, 30);
            return f.Error;
        }

        bool SawEvent(string name, string context, string reason)
        {
            foreach (var e in events)
                if (e.Name == name && (context == null || e.Context == context || e.Contexts.Contains(context)) &&
                    (reason == null || e.Reason == reason)) return true;
            return false;
        }

        public int Run(string host, int port)
        {
            // A generous offline timeout: restarting the server (model load) is slow on a busy machine.
            c = new TroubadourClient(new ClientOptions { OfflineTimeoutSeconds = 180, Log = m =>
            {
                lock (logLines) logLines.Add(m);
                Console.Error.WriteLine("client: " + m);
            } });
            ServerInfo connected = null;
            c.Connected += si => connected = si;
            c.Subscribe(null, e => events.Add(e), names => subscribedCount++);
            c.Connect(host, port);

            Check("zmtp_handshake", WaitFor(() => connected != null, 20), "no connection");
            ServerInfo info = null;
            c.Info(si => info = si, e => Console.Error.WriteLine(e));
            WaitFor(() => info != null, 10);
            Check("info", info != null && info.ProtocolVersion == 1 && info.SampleRate > 0 && info.Profiles.Contains("battle"),
                  info == null ? "no reply" : "protocol " + info.ProtocolVersion);
            var health = AskHealth();
            Check("health", health != null && health.Status == "ok", health == null ? "no reply" : health.Status);
            List<ContextProfile> profiles = null;
            c.ListProfiles(p => profiles = p);
            WaitFor(() => profiles != null, 10);
            var explore = profiles == null ? null : profiles.Find(p => p.Name == "explore");
            Check("list_profiles", explore != null && explore.Variants == 2, "explore missing");
            Check("subscribe", WaitFor(() => subscribedCount >= 1 && c.IsSubscribed, 10), "no subscribed reply");

            Tracks();
            PrefetchAndErrors();
            HotSwap();
            Reconnect();
            c.Dispose();
            Console.WriteLine("DONE " + failures);
            return failures;
        }

        /// <summary>A fresh client on host:port, its log on stderr; the server's info once connected (null after 20 s).</summary>
        ServerInfo Connect(string host, int port)
        {
            c = new TroubadourClient(new ClientOptions { Log = m => Console.Error.WriteLine("client: " + m) });
            ServerInfo connected = null;
            c.Connected += si => connected = si;
            c.Connect(host, port);
            WaitFor(() => connected != null, 20);
            return connected;
        }

        HealthInfo AskHealth()
        {
            HealthInfo health = null;
            c.Health(h => health = h);
            WaitFor(() => health != null, 10);
            return health;
        }

        // Against a server still loading its model: the driver lets it finish 7 s after "CMD release" (no ACK;
        // this thread goes on polling, which is what sends the heartbeats). info and health are answered at once
        // and a track request waits through the load, longer than 3 heartbeats, without a reconnect.
        public int RunLoading(string host, int port)
        {
            var connected = Connect(host, port);
            Check("loading_connected", connected != null && connected.ModelIdentity != null,
                  connected == null ? "no connection (info not answered)" : "no model identity");
            var health = AskHealth();
            Check("loading_health", health != null && health.Status == "loading", health == null ? "no reply" : health.Status);
            var waited = Stopwatch.StartNew();
            var f = new Fetch();
            f.Request = c.GetTrack(new TrackOptions { Context = "menu" }, f.Callbacks());
            Console.WriteLine("CMD release");
            WaitFor(() => f.Done, 120);
            double seconds = waited.Elapsed.TotalSeconds;
            Check("loading_track_waited", f.End != null && f.Chunks > 0 && seconds >= 6.5 && f.Sha256() == f.End.Sha256,
                  Why(f) + " after " + seconds.ToString("0.0") + " s");
            Check("loading_no_reconnect", c.ReconnectCount == 0, c.ReconnectCount + " reconnects");
            health = AskHealth();
            Check("loaded_health", health != null && health.Status == "ok", health == null ? "no reply" : health.Status);
            c.Dispose();
            return failures;
        }

        // Against tests/fakeserver.py, which sends undecodable messages (PROTOCOL.md section 4): one with a
        // request's id fails that request, one with id nil fails nothing, one with no readable id fails every
        // open request (a get_track has no timeout: it would otherwise wait forever).
        public int RunBadReplies(string host, int port)
        {
            Check("bad_connected", Connect(host, port) != null, "no connection");
            var own = Get(new TrackOptions { Context = "broken_own" }, 20);
            Check("bad_own_id_fails_its_request", own.Error != null && own.Error.Code == ErrorCodes.InvalidReply, Why(own));
            var noise = Get(new TrackOptions { Context = "nil_noise" }, 20);
            Check("bad_nil_id_fails_nothing", noise.Error != null && noise.Error.Code == ErrorCodes.UnknownContext, Why(noise));
            var a = new Fetch();
            var b = new Fetch();
            a.Request = c.GetTrack(new TrackOptions { Context = "unreadable_a" }, a.Callbacks());
            b.Request = c.GetTrack(new TrackOptions { Context = "unreadable_b" }, b.Callbacks());
            WaitFor(() => a.Done && b.Done, 20);
            Check("bad_unreadable_fails_all_open", a.Error != null && a.Error.Code == ErrorCodes.InvalidReply &&
                  b.Error != null && b.Error.Code == ErrorCodes.InvalidReply, Why(a) + " / " + Why(b));
            var health = AskHealth();
            Check("bad_connection_goes_on", health != null && health.Status == "ok" && c.ReconnectCount == 0,
                  (health == null ? "no health reply" : health.Status) + ", " + c.ReconnectCount + " reconnects");
            c.Dispose();
            return failures;
        }

        void Tracks()
        {
            var opts = new TrackOptions { Context = "battle", SampleRate = 44100 };
            var cold = Get(opts);
            bool ok = cold.End != null && cold.Header != null && !cold.Header.Cached && cold.Chunks >= 1 &&
                      cold.Audio.Length == cold.Header.Frames * cold.Header.BytesPerFrame && cold.Sha256() == cold.End.Sha256;
            Check("get_track_cold", ok, Why(cold));
            if (cold.End != null)
                Console.WriteLine("CHECKSUM battle 44100 " + cold.Header.TrackId + " " + cold.End.Sha256 + " " + cold.Sha256());
            var hot = Get(opts);
            Check("get_track_cached", hot.End != null && hot.Header.Cached && hot.End.Sha256 == (cold.End != null ? cold.End.Sha256 : "") &&
                  hot.Sha256() == hot.End.Sha256, Why(hot));
            var whole = Get(new TrackOptions { Context = "battle", SampleRate = 44100, Stream = false });
            Check("get_track_not_streamed", whole.End != null && whole.Chunks == 1 && whole.Sha256() == hot.Sha256(), Why(whole));
        }

        void PrefetchAndErrors()
        {
            var progress = new List<PrefetchProgress>();
            PrefetchResult result = null;
            TroubadourError err = null;
            c.Prefetch(new[] { "menu", "explore" }, p => progress.Add(p), r => result = r, e => err = e);
            WaitFor(() => result != null || err != null, 60);
            Check("prefetch_with_progress", result != null && result.Jobs.Count == 3 && result.Generated + result.Cached == 3 &&
                  result.Failed.Count == 0 && (result.Generated == 0 || progress.Count > 0),
                  err != null ? err.ToString() : result == null ? "no done" : "jobs " + result.Jobs.Count + " progress " + progress.Count);
            Check("events_during_prefetch", WaitFor(() => SawEvent("track_ready", "menu", "prefetch") && SawEvent("progress", null, null), 10),
                  "events: " + events.Count);

            var unknown = ErrorOf(new TrackOptions { Context = "nowhere", Fallback = false });
            Check("error_unknown_context", unknown != null && unknown.Code == ErrorCodes.UnknownContext && !unknown.IsRetryable,
                  unknown == null ? "no error" : unknown.ToString());
            var fb = Get(new TrackOptions { Context = "menuu", Params = new Dictionary<string, object> { { "duration", 0.5 } } });
            var fb2 = Get(new TrackOptions { Context = "menuu", Params = new Dictionary<string, object> { { "duration", 0.5 } } });
            int noted;
            lock (logLines) noted = logLines.FindAll(l => l.Contains("'menuu' is not in the server's profiles")).Count;
            Check("fallback_logged_once", fb.End != null && fb.Header.Fallback && fb2.End != null && noted == 1,
                  Why(fb) + ", logged " + noted + " times");
            var bad = ErrorOf(new TrackOptions { Context = "menu", Variant = 5 });
            Check("error_invalid_param_field", bad != null && bad.Code == ErrorCodes.InvalidParam && bad.Field == "variant",
                  bad == null ? "no error" : bad.ToString());

            var slow = new Fetch();
            slow.Request = c.GetTrack(new TrackOptions
            {
                Context = "boss", Params = new Dictionary<string, object> { { "duration", 30.0 }, { "seed", 4242L } }
            }, slow.Callbacks());
            WaitFor(() => slow.Header != null || slow.Done, 30);
            slow.Request.Cancel();
            WaitFor(() => slow.Done, 10);
            Check("cancel", slow.Error != null && slow.Error.Code == ErrorCodes.Cancelled && slow.Request.IsDone, Why(slow));
        }

        void HotSwap()
        {
            events.Clear();
            Driver("profiles_v2");   // the driver changed the mood of `menu`
            ReloadResult reloaded = null;
            c.ReloadProfiles(r => reloaded = r);
            bool ok = WaitFor(() => SawEvent("profiles_changed", "menu", null) && SawEvent("track_ready", "menu", "hot_swap"), 60);
            Check("hot_swap_event", ok && reloaded != null, "events: " + events.Count + (reloaded == null ? ", no reloaded" : ""));
        }

        void Reconnect()
        {
            int before = c.ReconnectCount;
            var f = new Fetch();
            f.Request = c.GetTrack(new TrackOptions
            {
                Context = "victory", Params = new Dictionary<string, object> { { "duration", 40.0 }, { "seed", 7L } }
            }, f.Callbacks());
            WaitFor(() => f.Chunks > 0 || f.Done, 60);
            bool inFlight = !f.Done;
            Driver("restart");   // the server was stopped and started again on the same port
            WaitFor(() => f.Done, 180);
            Console.WriteLine("INFO reconnect in_flight=" + inFlight + " resumes=" + (f.End != null ? f.End.Resumes : -1) +
                              " headers=" + f.Headers + " reconnects=" + c.ReconnectCount);
            Check("reconnect_resends_stream", inFlight && f.End != null && c.ReconnectCount > before &&
                  (f.End.Resumes >= 1 || f.Header.Restarted) && f.Audio.Length == f.Header.Frames * f.Header.BytesPerFrame,
                  Why(f) + " in_flight " + inFlight);
            Check("reconnect_resumed_audio_intact", f.End != null && f.Sha256() == f.End.Sha256, "delivered audio differs from the server's");
            ServerInfo info = null;
            c.Info(si => info = si);
            Check("reconnect_next_request", WaitFor(() => info != null, 20), "info after restart");
            Check("resubscribed", WaitFor(() => c.IsSubscribed && subscribedCount >= 2, 20), "subscriptions " + subscribedCount);
            events.Clear();
            Driver("profiles_v1");   // back to the first profiles: the old audio is still cached
            c.ReloadProfiles(r => { });
            Check("events_after_reconnect", WaitFor(() => SawEvent("track_ready", "menu", "hot_swap"), 60), "events: " + events.Count);
        }
    }
}

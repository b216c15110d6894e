#if UNITY_5_3_OR_NEWER
// Unity component: plays game contexts from a Troubadour server with crossfades and hot-swap.
// Streams each track into an AudioClip through PCMReaderCallback from a PcmTrackBuffer (silence on underrun,
// the main thread never waits), crossfades on two AudioSources starting at the next bar when the bpm is known,
// and swaps in a new version of the playing context when the server announces a hot-swap.
using System;
using UnityEngine;

namespace Troubadour
{
    [AddComponentMenu("Audio/Troubadour Music Director"), DisallowMultipleComponent]
    public sealed class MusicDirector : MonoBehaviour
    {
        public string host = "127.0.0.1";
        public int port = 5555;
        [Tooltip("Crossfade length in seconds")] public float crossfadeSeconds = 2f;
        [Range(0f, 1f)] public float volume = 0.8f;
        [Tooltip("Contexts prefetched when the component starts (level load)")] public string[] prefetchOnStart = new string[0];
        [Tooltip("Seconds of audio buffered before a new track fades in")] public float startBufferSeconds = 0.25f;

        sealed class Deck
        {
            public AudioSource Source;
            public PcmTrackBuffer Buffer;
            public TrackHeader Header;
            public TroubadourRequest Request;
            public string Context;
            public object Token;   // tells callbacks of an older request on this deck to keep out

            public void Clear()
            {
                if (Source != null)   // Unity null once destroyed with its GameObject
                {
                    Source.Stop();
                    ReleaseClip();
                }
                if (Request != null && !Request.IsDone) Request.Cancel();
                Request = null;
                Buffer = null;
                Header = null;
                Context = null;
                Token = null;
            }

            /// <summary>A streamed clip reading this deck's buffer (which keeps its play position).</summary>
            public void MakeClip()
            {
                var buffer = Buffer;
                ReleaseClip();
                Source.clip = AudioClip.Create("troubadour " + Context, (int)Math.Min(Header.Frames, int.MaxValue),
                                               Header.Channels, Header.SampleRate, true, data => buffer.Read(data));
            }

            /// <summary>A clip from AudioClip.Create lives until Destroy (or Resources.UnloadUnusedAssets), and its
            /// reader callback holds the whole track: free it as soon as the deck lets go of it.</summary>
            public void ReleaseClip()
            {
                var clip = Source.clip;
                Source.clip = null;
                if (clip != null) UnityEngine.Object.Destroy(clip);
            }
        }

        // Serialized (hidden) so a script reload in play mode finds the same AudioSources; the decks are not kept.
        [SerializeField, HideInInspector] AudioSource[] sources;
        readonly Deck[] decks = new Deck[2];
        Deck playing, incoming;
        TroubadourClient client;
        bool fading, reloadPlaying;   // reloadPlaying: the heard track's stream failed part-way
        float fadeAt = -1f, fadeT, retryAt = -1f, retryDelay = 0.5f;
        string wantedContext;
        int? wantedVariant;

        /// <summary>The client (created on first use with host/port). Its callbacks run in this component's Update.</summary>
        public TroubadourClient Client { get { EnsureClient(); return client; } }
        /// <summary>Context now audible (the one fading in counts once its fade started).</summary>
        public string CurrentContext { get { return playing != null ? playing.Context : null; } }
        /// <summary>Connected to the server (false before the client exists; reading it creates none).</summary>
        public bool IsConnected { get { return client != null && client.IsConnected; } }
        /// <summary>True when the playing audio came from the server's cache, false when it was generated live.</summary>
        public bool CurrentFromCache { get { return playing != null && playing.Header != null && playing.Header.Cached; } }
        public TrackHeader CurrentTrack { get { return playing != null ? playing.Header : null; } }
        /// <summary>One line for humans: what is loading, playing, or failing.</summary>
        public string Status { get; private set; }
        /// <summary>Raised when a track starts fading in (context, header).</summary>
        public event Action<string, TrackHeader> TrackStarted;

        void Awake()
        {
            if (FindObjectOfType<AudioListener>() == null) gameObject.AddComponent<AudioListener>();
            Status = "idle";
        }

        void OnEnable()
        {
            // Also runs after a script reload in play mode (no Awake then): rebuild the decks, resume the music.
            if (decks[0] == null) CreateDecks();
            AudioSettings.OnAudioConfigurationChanged += OnAudioConfigurationChanged;
            // (a reload may hand private strings back as "" rather than null)
            if (!string.IsNullOrEmpty(wantedContext)) Load(wantedContext, wantedVariant);
        }

        void CreateDecks()
        {
            if (sources == null || sources.Length != decks.Length) sources = new AudioSource[decks.Length];
            for (int i = 0; i < decks.Length; i++)
            {
                var s = sources[i];
                if (s == null)
                {
                    s = sources[i] = gameObject.AddComponent<AudioSource>();
                    s.playOnAwake = false;
                    s.loop = true;          // the buffer decides what plays; the clip just keeps asking for data
                    s.spatialBlend = 0f;
                }
                s.priority = 0;   // music must not be the voice Unity mutes when too many sources play
                s.volume = 0f;
                decks[i] = new Deck { Source = s };
            }
        }

        void Start()
        {
            if (prefetchOnStart != null && prefetchOnStart.Length > 0) Prefetch(prefetchOnStart);
        }

        void OnDisable()
        {
            // Close the socket threads here, not only in OnDestroy: a script reload in play mode calls OnDisable
            // (never OnDestroy) before it unloads the domain, and open sockets on live threads can hang that.
            // The streams die with the client, so the decks stop too; OnEnable loads wantedContext again.
            AudioSettings.OnAudioConfigurationChanged -= OnAudioConfigurationChanged;
            foreach (var d in decks) if (d != null) d.Clear();
            playing = incoming = null;
            fading = reloadPlaying = false;
            fadeAt = retryAt = -1f;
            CloseClient();
        }

        void OnDestroy()
        {
            CloseClient();   // one made while disabled (Client, Prefetch)
        }

        void CloseClient()
        {
            if (client != null) client.Dispose();
            client = null;
        }

        void EnsureClient()
        {
            if (client != null) return;
            client = new TroubadourClient(new ClientOptions { Log = m => Debug.Log("[Troubadour] " + m) });
            client.Subscribe(new[] { "track_ready" }, OnServerEvent);
            client.Connect(host, port);
        }

        /// <summary>Plays a context: fetches (or streams while generating) its track and crossfades to it.</summary>
        public void Play(string context, int? variant = null)
        {
            wantedContext = context;
            wantedVariant = variant;
            if (!isActiveAndEnabled) return;   // OnEnable loads it (no decks, no Update to poll before that)
            if (incoming != null && incoming.Context == context) return;   // already on its way
            bool samePlaying = playing != null && playing.Context == context &&
                               (!variant.HasValue || playing.Header == null || playing.Header.Variant == variant.Value);
            if (samePlaying && !reloadPlaying && (incoming == null || !fading))
            {
                if (incoming != null) { incoming.Clear(); incoming = null; }   // changed our mind before the switch
                return;
            }
            Load(context, variant);
        }

        /// <summary>Asks the server to generate these contexts now so later Play calls come from the cache.</summary>
        public void Prefetch(params string[] contexts)
        {
            EnsureClient();
            client.Prefetch(contexts, null,
                r => Debug.Log("[Troubadour] prefetch done: " + r.Generated + " generated, " + r.Cached + " cached, " + r.Failed.Count + " failed"),
                e => Debug.LogWarning("[Troubadour] prefetch failed: " + e));
        }

        public void StopMusic()
        {
            wantedContext = null;
            if (incoming != null) incoming.Clear();
            if (playing != null) playing.Clear();
            incoming = playing = null;
            fading = reloadPlaying = false;
            Status = "stopped";
        }

        void Load(string context, int? variant)
        {
            EnsureClient();
            if (fading) FinishFade();
            if (incoming != null) incoming.Clear();   // a newer choice replaces one still loading
            var deck = decks[0] == playing ? decks[1] : decks[0];
            deck.Clear();
            incoming = deck;
            fadeAt = -1f;
            var token = new object();
            deck.Token = token;
            deck.Context = context;
            Status = "loading " + context;
            var cb = new TrackCallbacks
            {
                OnHeader = h =>
                {
                    if (deck.Token != token) return;
                    deck.Header = h;
                    deck.Buffer = PcmTrackBuffer.For(h);
                    bool wasPlaying = deck.Source.isPlaying;   // a Restarted header after a reconnect
                    deck.MakeClip();
                    if (wasPlaying) deck.Source.Play();
                },
                OnChunk = c =>
                {
                    if (deck.Token == token && deck.Buffer != null) deck.Buffer.Write(c.Data, c.Offset, c.Count, deck.Header.Format);
                },
                OnEnd = e => { if (deck.Token == token && deck.Buffer != null) deck.Buffer.Complete(); },
                OnError = e =>
                {
                    if (deck.Token != token) return;
                    Status = context + ": " + e;
                    Debug.LogWarning("[Troubadour] " + context + ": " + e);
                    if (e.Code == ErrorCodes.Cancelled) return;
                    if (deck.Buffer != null) deck.Buffer.Complete();   // no more audio comes: it plays what arrived
                    if (incoming == deck)
                    {
                        if (fading && playing != null) playing.Source.volume = volume;   // the old track goes on
                        fading = false;
                        deck.Clear();
                        incoming = null;
                    }
                    else if (playing == deck) reloadPlaying = true;   // heard but cut short: fetch it again
                    if (e.IsRetryable) { retryAt = Time.unscaledTime + retryDelay; retryDelay = Math.Min(retryDelay * 2f, 8f); }
                }
            };
            var options = new TrackOptions { Context = context, Variant = variant, Format = AudioFormats.PcmS16, SampleRate = OutputRate() };
            deck.Request = client.GetTrack(options, cb);
        }

        static int? OutputRate()
        {
            int r = AudioSettings.outputSampleRate;
            if (r == 32000 || r == 44100 || r == 48000) return r;
            return null;   // native rate; Unity resamples the clip
        }

        void Update()
        {
            if (client != null) client.Poll();
            float now = Time.unscaledTime;
            if (retryAt >= 0f && now >= retryAt)
            {
                retryAt = -1f;
                if (wantedContext != null && incoming == null &&
                    (playing == null || playing.Context != wantedContext || reloadPlaying))
                    Load(wantedContext, wantedVariant);
            }
            if (incoming != null && incoming.Buffer != null && !fading)
            {
                if (fadeAt < 0f && incoming.Buffer.Buffered >= (long)(startBufferSeconds * incoming.Header.SampleRate))
                    fadeAt = now + SecondsToNextBar();
                if (fadeAt >= 0f && now >= fadeAt) BeginFade();
            }
            if (fading)
            {
                fadeT += Time.unscaledDeltaTime / Mathf.Max(0.01f, crossfadeSeconds);
                float t = Mathf.Clamp01(fadeT);
                incoming.Source.volume = volume * Mathf.Sin(t * Mathf.PI * 0.5f);   // equal power
                if (playing != null) playing.Source.volume = volume * Mathf.Cos(t * Mathf.PI * 0.5f);
                if (t >= 1f) FinishFade();
            }
            else if (playing != null)
            {
                playing.Source.volume = volume;
                if (playing.Buffer != null && playing.Buffer.Finished)   // a track made not to loop has ended
                {
                    playing.Clear();
                    playing = null;
                }
            }
        }

        /// <summary>0 when nothing plays or the playing track has no bpm; else the time to its next bar line.</summary>
        float SecondsToNextBar()
        {
            if (playing == null || playing.Header == null || playing.Buffer == null || playing.Header.Bpm <= 0) return 0f;
            double bar = playing.Header.BeatsPerBar * 60.0 / playing.Header.Bpm;
            double pos = playing.Buffer.Position / (double)playing.Header.SampleRate;
            double next = Math.Ceiling(pos / bar) * bar;
            return (float)(next - pos);
        }

        void BeginFade()
        {
            fading = true;
            fadeT = playing == null ? 1f : 0f;   // nothing to fade from: start at full volume
            incoming.Source.volume = playing == null ? volume : 0f;
            incoming.Source.Play();
            retryDelay = 0.5f;
            var h = incoming.Header;
            Status = incoming.Context + (h.Cached ? " (from cache)" : " (live generation)");
            var started = TrackStarted;
            if (started != null) started(incoming.Context, h);
        }

        void FinishFade()
        {
            if (playing != null) playing.Clear();
            playing = incoming;
            incoming = null;
            fading = reloadPlaying = false;
            fadeAt = -1f;
            if (playing != null) playing.Source.volume = volume;
        }

        // Unity drops script-made clips and play states when the output device changes (headphones plugged in):
        // new clips over the same buffers resume where they were.
        void OnAudioConfigurationChanged(bool deviceWasChanged)
        {
            foreach (var d in decks)
            {
                if (d == null || d.Buffer == null || d.Header == null) continue;
                d.MakeClip();
                if (d == playing || (d == incoming && fading)) d.Source.Play();
            }
        }

        void OnServerEvent(TroubadourEvent e)
        {
            if (e.Name != "track_ready" || e.Reason != "hot_swap") return;
            // The playing context got a new version (profile edited or regenerated): fetch it, crossfade at a bar.
            var current = incoming != null ? incoming : playing;
            if (current == null || current.Context != e.Context) return;
            if (current.Header != null && current.Header.Variant >= 0 && current.Header.Variant != e.Variant) return;
            // (the same track id too: `regenerate` makes new audio under the same id)
            Load(e.Context, e.Variant);
        }
    }
}
#endif

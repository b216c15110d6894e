#if UNITY_5_3_OR_NEWER
// MusicDirector driven the way Unity drives it (Awake, OnEnable, Update called by name; a clock that advances
// 20 ms a frame; an "audio thread" pulling each playing clip), on the stand-ins of UnityStubs, against
// tests/fakeserver.py's DirectorServer (4 s tones at 120 bpm, streamed in 1 s chunks):
//   mono DirectorTests.exe HOST PORT
// "CMD hold X" / "CMD fail X CODE" ask the driver to cut context X's next stream short, "CMD swap X" to push a
// hot-swap event for X; each waits for "ACK".
// Results are "OK name" / "FAIL name: why" lines.
using System;
using System.Reflection;
using System.Threading;
using UnityEngine;

namespace Troubadour.Tests
{
    public static class DirectorTests
    {
        const BindingFlags Any = BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic;
        const float FrameSeconds = 0.02f;
        static MusicDirector md;
        static int failures;
        static string updateError;

        public static int Main(string[] args)
        {
            var stdout = new System.IO.StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true };
            Console.SetOut(stdout);
            md = new GameObject("music").AddComponent<MusicDirector>();
            md.host = args[0];
            md.port = int.Parse(args[1]);
            md.crossfadeSeconds = 1f;
            Magic("Awake");
            Magic("OnEnable");
            Magic("Start");
            try
            {
                Plays();
                ErrorDuringCrossfade();
                CutShortWhilePlaying();
                DeviceChange();
                HotSwapSameTrackId();
            }
            finally
            {
                Magic("OnDisable");
            }
            int live = 0;
            foreach (var o in StubWorld.Objects) if (o is AudioClip && !o.Destroyed) live++;
            Check("released_clips_destroyed", live == 0, live + " clips left after OnDisable");
            Console.WriteLine("DONE " + failures);
            return failures == 0 ? 0 : 1;
        }

        static void Plays()
        {
            md.Play("steady");
            bool on = Until(() => md.CurrentContext == "steady" && !Fading, 20);
            var s = Heard();
            Check("plays", on && s != null && s.isPlaying && s.volume == md.volume && s.priority == 0 && Silence(0.5) < 0.1,
                  md.Status);
        }

        // A track that fails while it fades in: the old one stays, at full volume, and Update keeps working.
        static void ErrorDuringCrossfade()
        {
            Driver("hold dies");
            md.Play("dies");
            bool began = Until(() => Fading, 20);
            Driver("fail dies engine_error");
            bool dropped = Until(() => Field(md, "incoming") == null, 10);
            for (int i = 0; i < 20; i++) Frame();
            var s = Heard();
            Check("error_during_crossfade_keeps_the_old_track",
                  began && dropped && updateError == null && md.CurrentContext == "steady" && !Fading && s.volume == md.volume &&
                  Silence(0.5) < 0.1,
                  "began " + began + ", dropped " + dropped + ", Update: " + (updateError ?? "fine") + ", playing " + md.CurrentContext);
            updateError = null;
        }

        // The heard track's stream fails part-way (a retryable error): it goes on looping what arrived instead of
        // falling silent, and is fetched again.
        static void CutShortWhilePlaying()
        {
            Driver("hold flaky");
            md.Play("flaky");
            bool heard = Until(() => md.CurrentContext == "flaky" && !Fading, 20);
            var first = md.CurrentTrack;
            Driver("fail flaky busy");
            Until(() => ((PcmTrackBuffer)Field(Field(md, "playing"), "Buffer")).IsComplete, 10);
            double silence = Silence(0.4);   // before the retry (0.5 s after the error)
            bool reloaded = Until(() => md.CurrentContext == "flaky" && md.CurrentTrack != first && !Fading, 20);
            Check("cut_short_track_keeps_sounding_then_reloads", heard && silence < 0.1 && reloaded && updateError == null,
                  "heard " + heard + ", silence " + silence.ToString("0.00") + ", reloaded " + reloaded + ", " + md.Status);
        }

        // Unity drops script-made clips and play states when the output device changes: the music resumes.
        static void DeviceChange()
        {
            var s = Heard();
            var buffer = (PcmTrackBuffer)Field(Field(md, "playing"), "Buffer");
            long before = buffer.Played;
            StubWorld.ChangeAudioDevice();
            bool resumed = s.isPlaying && s.clip != null && !s.clip.Lost;
            double silence = Silence(0.5);
            Check("device_change_resumes_the_music", resumed && silence < 0.1 && buffer.Played > before,
                  "playing " + s.isPlaying + ", silence " + silence.ToString("0.00"));
        }

        // `regenerate` makes new audio under the same track id: the hot-swap event still brings it in.
        static void HotSwapSameTrackId()
        {
            var before = md.CurrentTrack;
            Driver("swap flaky");
            bool swapped = Until(() => md.CurrentContext == "flaky" && md.CurrentTrack != before && !Fading, 20);
            Check("hot_swap_with_the_same_track_id_reloads", swapped && md.CurrentTrack.TrackId == before.TrackId,
                  "swapped " + swapped + ", " + md.Status);
        }

        // ------------------------------------------------------------------ harness
        static void Check(string name, bool ok, string why)
        {
            if (ok) Console.WriteLine("OK " + name);
            else
            {
                failures++;
                Console.WriteLine("FAIL " + name + ": " + why);
            }
        }

        static void Driver(string command)
        {
            Console.WriteLine("CMD " + command);
            var line = Console.ReadLine();
            if (line != "ACK") throw new Exception("driver answered " + (line ?? "nothing") + " to " + command);
        }

        static void Magic(string name)
        {
            var m = typeof(MusicDirector).GetMethod(name, Any);
            try { m.Invoke(md, null); }
            catch (TargetInvocationException e)
            {
                if (updateError == null) updateError = name + " threw " + e.InnerException.GetType().Name + ": " + e.InnerException.Message;
            }
        }

        static object Field(object o, string name)
        {
            return o == null ? null : o.GetType().GetField(name, Any).GetValue(o);
        }

        static bool Fading { get { return (bool)Field(md, "fading"); } }

        static AudioSource Heard()
        {
            var deck = Field(md, "playing");
            return deck == null ? null : (AudioSource)Field(deck, "Source");
        }

        // One frame: the audio thread takes 20 ms from every playing source, then Unity calls Update.
        // Returns what the heard deck played (null when none plays).
        static float[] Frame()
        {
            float[] heard = null;
            var loudest = Heard();
            foreach (var o in StubWorld.Objects.ToArray())
            {
                var s = o as AudioSource;
                if (s == null || !s.isPlaying || s.clip == null) continue;
                var data = s.clip.Pull((int)(FrameSeconds * s.clip.frequency));
                if (s == loudest) heard = data;
            }
            StubWorld.Advance(FrameSeconds);
            Magic("Update");
            return heard;
        }

        static bool Until(Func<bool> cond, double realSeconds)
        {
            var end = DateTime.UtcNow.AddSeconds(realSeconds);
            while (!cond())
            {
                if (DateTime.UtcNow > end) return false;
                Frame();
                Thread.Sleep(2);
            }
            return true;
        }

        /// <summary>Fraction of exact-zero samples the heard deck played over `seconds` (a tone has ~2 %).</summary>
        static double Silence(double seconds)
        {
            long zero = 0, all = 0;
            for (int i = 0; i < (int)(seconds / FrameSeconds); i++)
            {
                var data = Frame();
                if (data == null) { zero += 960; all += 960; continue; }   // nothing heard: a frame of silence
                foreach (var v in data) if (v == 0f) zero++;
                all += data.Length;
            }
            return all == 0 ? 1.0 : zero / (double)all;
        }
    }
}
#endif

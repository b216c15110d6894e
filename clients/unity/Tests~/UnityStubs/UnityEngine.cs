// Stand-ins for the few UnityEngine/UnityEditor members the package and the sample use, so plain mcs can
// type-check the Unity-only code (with -define:UNITY_5_3_OR_NEWER). Signatures follow Unity 2019.4. The audio,
// object and time members also behave (Tests~/DirectorTests.cs drives MusicDirector with them): StubWorld holds
// the clock, the objects made so far and the log, and plays Unity's part where a test needs it.
// Not part of the package (Unity ignores folders ending in ~).
using System;
using System.Collections.Generic;

namespace UnityEngine
{
    public static class StubWorld
    {
        public static readonly List<Object> Objects = new List<Object>();
        public static readonly List<string> Log = new List<string>();
        public static float Now, DeltaTime = 0.02f;

        public static void Advance(float seconds)
        {
            DeltaTime = seconds;
            Now += seconds;
        }

        /// <summary>What Unity does when the output device changes: script-made clips and play states are lost,
        /// then AudioSettings.OnAudioConfigurationChanged is raised.</summary>
        public static void ChangeAudioDevice()
        {
            foreach (var o in Objects)
            {
                var source = o as AudioSource;
                if (source != null) source.Stop();
                var clip = o as AudioClip;
                if (clip != null) clip.Lost = true;
            }
            AudioSettings.RaiseConfigurationChanged(true);
        }
    }

    public class Object
    {
        public string name { get; set; }
        public bool Destroyed;
        public Object() { StubWorld.Objects.Add(this); }
        public static T FindObjectOfType<T>() where T : Object
        {
            foreach (var o in StubWorld.Objects) if (o is T && !o.Destroyed) return (T)o;
            return null;
        }
        public static void Destroy(Object obj) { if (obj != null) obj.Destroyed = true; }
        public static void Destroy(Object obj, float t) { Destroy(obj); }
        public static void DontDestroyOnLoad(Object target) { }
    }

    public class Component : Object
    {
        internal GameObject owner;
        public GameObject gameObject { get { return owner; } }
        public T GetComponent<T>() { return owner == null ? default(T) : owner.GetComponent<T>(); }
    }

    public class Behaviour : Component
    {
        public bool enabled { get; set; } = true;
        public bool isActiveAndEnabled { get { return enabled && !Destroyed; } }
    }
    public class MonoBehaviour : Behaviour { }

    public sealed class GameObject : Object
    {
        readonly List<Component> components = new List<Component>();
        public GameObject(string name) { this.name = name; }
        public T AddComponent<T>() where T : Component
        {
            var c = (T)Activator.CreateInstance(typeof(T));
            c.owner = this;
            components.Add(c);
            return c;
        }
        public T GetComponent<T>()
        {
            foreach (var c in components) if (c is T) return (T)(object)c;
            return default(T);
        }
    }

    public class AudioBehaviour : Behaviour { }

    public sealed class AudioListener : AudioBehaviour { }

    public sealed class AudioClip : Object
    {
        public delegate void PCMReaderCallback(float[] data);
        public delegate void PCMSetPositionCallback(int position);
        public int samples, channels, frequency;
        public bool Lost;   // dropped by an audio device change (StubWorld.ChangeAudioDevice)
        PCMReaderCallback reader;

        public static AudioClip Create(string name, int lengthSamples, int channels, int frequency, bool stream,
                                       PCMReaderCallback pcmreadercallback)
        {
            return new AudioClip { name = name, samples = lengthSamples, channels = channels, frequency = frequency,
                                   reader = pcmreadercallback };
        }
        public static AudioClip Create(string name, int lengthSamples, int channels, int frequency, bool stream,
                                       PCMReaderCallback pcmreadercallback, PCMSetPositionCallback pcmsetpositioncallback)
        {
            return Create(name, lengthSamples, channels, frequency, stream, pcmreadercallback);
        }

        /// <summary>The audio thread's request for `frames` frames (interleaved samples back).</summary>
        public float[] Pull(int frames)
        {
            var data = new float[frames * channels];
            if (!Lost && !Destroyed && reader != null) reader(data);
            return data;
        }
    }

    public sealed class AudioSource : AudioBehaviour
    {
        public AudioClip clip { get; set; }
        public float volume { get; set; }
        public float spatialBlend { get; set; }
        public int priority { get; set; } = 128;
        public bool loop { get; set; }
        public bool playOnAwake { get; set; }
        public bool isPlaying { get; private set; }
        public void Play() { isPlaying = clip != null; }
        public void Stop() { isPlaying = false; }
    }

    public sealed class AudioSettings
    {
        public delegate void AudioConfigurationChangeHandler(bool deviceWasChanged);
        public static event AudioConfigurationChangeHandler OnAudioConfigurationChanged;
        public static int outputSampleRate { get { return 48000; } }

        internal static void RaiseConfigurationChanged(bool deviceWasChanged)
        {
            var handler = OnAudioConfigurationChanged;
            if (handler != null) handler(deviceWasChanged);
        }
    }

    public static class Time
    {
        public static float unscaledTime { get { return StubWorld.Now; } }
        public static float unscaledDeltaTime { get { return StubWorld.DeltaTime; } }
        public static float deltaTime { get { return StubWorld.DeltaTime; } }
    }

    public struct Mathf
    {
        public const float PI = 3.14159274f;
        public static float Sin(float f) { return (float)Math.Sin(f); }
        public static float Cos(float f) { return (float)Math.Cos(f); }
        public static float Clamp01(float v) { return v < 0f ? 0f : v > 1f ? 1f : v; }
        public static float Max(float a, float b) { return Math.Max(a, b); }
        public static float Min(float a, float b) { return Math.Min(a, b); }
    }

    public static class Debug
    {
        public static void Log(object message) { lock (StubWorld.Log) StubWorld.Log.Add("LOG " + message); }
        public static void LogWarning(object message) { lock (StubWorld.Log) StubWorld.Log.Add("WARN " + message); }
        public static void LogError(object message) { lock (StubWorld.Log) StubWorld.Log.Add("ERROR " + message); }
        public static void LogException(Exception e) { lock (StubWorld.Log) StubWorld.Log.Add("EXCEPTION " + e); }
    }

    public struct Rect { public Rect(float x, float y, float width, float height) { } }

    public static class Screen
    {
        public static int width { get { return 0; } }
        public static int height { get { return 0; } }
    }

    public class GUILayoutOption { }

    public static class GUI { public static void Label(Rect r, string text) { } }

    public static class GUILayout
    {
        public static void BeginArea(Rect r) { }
        public static void EndArea() { }
        public static void BeginHorizontal(params GUILayoutOption[] options) { }
        public static void EndHorizontal() { }
        public static void Label(string text, params GUILayoutOption[] options) { }
        public static bool Button(string text, params GUILayoutOption[] options) { return false; }
        public static GUILayoutOption Width(float w) { return null; }
    }

    public enum KeyCode { None, Return, Space, Escape, Alpha1, Alpha2, Alpha3, Alpha4, R }

    public static class Input { public static bool GetKeyDown(KeyCode key) { return false; } }

    public enum RuntimeInitializeLoadType { AfterSceneLoad, BeforeSceneLoad }

    [AttributeUsage(AttributeTargets.Method)]
    public sealed class RuntimeInitializeOnLoadMethodAttribute : Attribute
    {
        public RuntimeInitializeOnLoadMethodAttribute() { }
        public RuntimeInitializeOnLoadMethodAttribute(RuntimeInitializeLoadType t) { }
    }

    public sealed class SerializeField : Attribute { }

    public sealed class HideInInspector : Attribute { }

    [AttributeUsage(AttributeTargets.Class)]
    public sealed class DisallowMultipleComponent : Attribute { }

    [AttributeUsage(AttributeTargets.Class)]
    public sealed class AddComponentMenu : Attribute { public AddComponentMenu(string menuName) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class TooltipAttribute : Attribute { public TooltipAttribute(string tooltip) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class RangeAttribute : Attribute { public RangeAttribute(float min, float max) { } }

    [AttributeUsage(AttributeTargets.Field)]
    public sealed class HeaderAttribute : Attribute { public HeaderAttribute(string header) { } }
}

namespace UnityEngine.SceneManagement
{
    public struct Scene { public string path { get { return null; } } }
}

namespace UnityEditor
{
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class MenuItem : Attribute { public MenuItem(string itemName) { } }

    public sealed class EditorBuildSettingsScene
    {
        public EditorBuildSettingsScene(string path, bool enabled) { }
    }

    public static class EditorBuildSettings
    {
        public static EditorBuildSettingsScene[] scenes { get; set; }
    }

    public static class AssetDatabase
    {
        public static bool IsValidFolder(string path) { return false; }
        public static string CreateFolder(string parent, string newFolderName) { return null; }
    }

    public static class EditorUtility
    {
        public static bool DisplayDialog(string title, string message, string ok) { return true; }
    }
}

namespace UnityEditor.SceneManagement
{
    public enum NewSceneSetup { EmptyScene, DefaultGameObjects }
    public enum NewSceneMode { Single, Additive }

    public static class EditorSceneManager
    {
        public static UnityEngine.SceneManagement.Scene NewScene(NewSceneSetup setup, NewSceneMode mode) { return default(UnityEngine.SceneManagement.Scene); }
        public static bool SaveScene(UnityEngine.SceneManagement.Scene scene, string path) { return true; }
    }
}

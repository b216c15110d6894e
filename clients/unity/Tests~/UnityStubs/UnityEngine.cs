// Compile-only stand-ins for the few UnityEngine/UnityEditor members the package and the sample use, so plain
// mcs can type-check the Unity-only code (with -define:UNITY_5_3_OR_NEWER). Signatures follow Unity 2019.4.
// Nothing here runs; it is not part of the package (Unity ignores folders ending in ~).
using System;

namespace UnityEngine
{
    public class Object
    {
        public string name { get; set; }
        public static T FindObjectOfType<T>() where T : Object { return null; }
        public static void Destroy(Object obj) { }
        public static void Destroy(Object obj, float t) { }
        public static void DontDestroyOnLoad(Object target) { }
    }

    public class Component : Object
    {
        public GameObject gameObject { get { return null; } }
        public T GetComponent<T>() { return default(T); }
    }

    public class Behaviour : Component
    {
        public bool enabled { get; set; }
        public bool isActiveAndEnabled { get { return false; } }
    }
    public class MonoBehaviour : Behaviour { }

    public sealed class GameObject : Object
    {
        public GameObject(string name) { }
        public T AddComponent<T>() where T : Component { return null; }
        public T GetComponent<T>() { return default(T); }
    }

    public class AudioBehaviour : Behaviour { }

    public sealed class AudioListener : AudioBehaviour { }

    public sealed class AudioClip : Object
    {
        public delegate void PCMReaderCallback(float[] data);
        public delegate void PCMSetPositionCallback(int position);
        public static AudioClip Create(string name, int lengthSamples, int channels, int frequency, bool stream,
                                       PCMReaderCallback pcmreadercallback) { return null; }
        public static AudioClip Create(string name, int lengthSamples, int channels, int frequency, bool stream,
                                       PCMReaderCallback pcmreadercallback, PCMSetPositionCallback pcmsetpositioncallback) { return null; }
    }

    public sealed class AudioSource : AudioBehaviour
    {
        public AudioClip clip { get; set; }
        public float volume { get; set; }
        public float spatialBlend { get; set; }
        public bool loop { get; set; }
        public bool playOnAwake { get; set; }
        public bool isPlaying { get { return false; } }
        public void Play() { }
        public void Stop() { }
    }

    public sealed class AudioSettings { public static int outputSampleRate { get { return 48000; } } }

    public static class Time
    {
        public static float unscaledTime { get { return 0f; } }
        public static float unscaledDeltaTime { get { return 0f; } }
        public static float deltaTime { get { return 0f; } }
    }

    public struct Mathf
    {
        public const float PI = 3.14159274f;
        public static float Sin(float f) { return 0f; }
        public static float Cos(float f) { return 0f; }
        public static float Clamp01(float v) { return v; }
        public static float Max(float a, float b) { return a; }
        public static float Min(float a, float b) { return a; }
    }

    public static class Debug
    {
        public static void Log(object message) { }
        public static void LogWarning(object message) { }
        public static void LogError(object message) { }
        public static void LogException(Exception e) { }
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

// Troubadour sample: main menu -> exploration -> battle -> victory, with music from a Troubadour server.
// Keys: Enter/Space next level, 1-4 jump to a level, Esc back to the menu; the buttons do the same. The lines at
// the top say which context plays and whether its audio came from the cache or was generated live.
// Needs no scene setup: a SampleGame object is created in whatever scene is open (Troubadour > Build Sample Scene
// saves one for builds).
using Troubadour;
using UnityEngine;

public class SampleGame : MonoBehaviour
{
    enum Level { MainMenu, Exploration, Battle, Victory }

    // Context names of the bundled profiles (troubadour/data/profiles.toml).
    static readonly string[] Contexts = { "main_menu", "exploration", "battle", "victory" };
    static readonly string[] Titles = { "Main menu", "Exploration", "Battle", "Victory" };

    public string host = "127.0.0.1";
    public int port = 5555;

    MusicDirector music;
    Level level;

    [RuntimeInitializeOnLoadMethod(RuntimeInitializeLoadType.AfterSceneLoad)]
    static void Bootstrap()
    {
        if (FindObjectOfType<SampleGame>() == null) new GameObject("SampleGame").AddComponent<SampleGame>();
    }

    void Start()
    {
        music = gameObject.AddComponent<MusicDirector>();
        music.host = host;
        music.port = port;
        music.crossfadeSeconds = 2f;
        music.Prefetch(Contexts);   // game start: have every level's music generated before it is needed
        Enter(Level.MainMenu);
    }

    void Enter(Level next)
    {
        level = next;
        music.Play(Contexts[(int)next]);
        // Level load: make sure the music of the levels reachable from here is ready.
        if (next == Level.Exploration) music.Prefetch(Contexts[(int)Level.Battle], Contexts[(int)Level.Victory]);
    }

    void Advance()
    {
        Enter(level == Level.Victory ? Level.MainMenu : level + 1);
    }

    void Update()
    {
        if (Input.GetKeyDown(KeyCode.Return) || Input.GetKeyDown(KeyCode.Space)) Advance();
        if (Input.GetKeyDown(KeyCode.Escape)) Enter(Level.MainMenu);
        if (Input.GetKeyDown(KeyCode.Alpha1)) Enter(Level.MainMenu);
        if (Input.GetKeyDown(KeyCode.Alpha2)) Enter(Level.Exploration);
        if (Input.GetKeyDown(KeyCode.Alpha3)) Enter(Level.Battle);
        if (Input.GetKeyDown(KeyCode.Alpha4)) Enter(Level.Victory);
    }

    void OnGUI()
    {
        GUILayout.BeginArea(new Rect(20, 20, 640, 400));
        GUILayout.Label(Titles[(int)level] + "   (Enter/Space: next, 1-4: jump, Esc: menu)");
        GUILayout.Label(MusicLine());
        GUILayout.Label("Server " + host + ":" + port + (music != null && music.IsConnected ? " connected" : " not connected") +
                        "   status: " + (music != null ? music.Status : ""));
        GUILayout.BeginHorizontal();
        for (int i = 0; i < Titles.Length; i++)
            if (GUILayout.Button(Titles[i])) Enter((Level)i);
        GUILayout.EndHorizontal();
        if (GUILayout.Button(level == Level.Victory ? "Back to the menu" : "Next level")) Advance();
        GUILayout.EndArea();
    }

    string MusicLine()
    {
        if (music == null || music.CurrentContext == null) return "Music: (waiting for " + Contexts[(int)level] + ")";
        var t = music.CurrentTrack;
        return "Music: " + music.CurrentContext + " — " + (music.CurrentFromCache ? "from the cache" : "live generation") +
               (t != null && t.Bpm > 0 ? ", " + t.Bpm + " bpm" : "") + (t != null && t.Variant >= 0 ? ", variant " + t.Variant : "");
    }
}

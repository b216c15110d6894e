#if UNITY_EDITOR
// Menu "Troubadour > Build Sample Scene": saves Assets/Scenes/Sample.unity (camera, light, a SampleGame object)
// and puts it in the build settings, so the sample also works as a player build.
using UnityEditor;
using UnityEditor.SceneManagement;
using UnityEngine;

public static class SampleSceneBuilder
{
    const string ScenePath = "Assets/Scenes/Sample.unity";

    [MenuItem("Troubadour/Build Sample Scene")]
    public static void Build()
    {
        if (!AssetDatabase.IsValidFolder("Assets/Scenes")) AssetDatabase.CreateFolder("Assets", "Scenes");
        var scene = EditorSceneManager.NewScene(NewSceneSetup.DefaultGameObjects, NewSceneMode.Single);
        new GameObject("SampleGame").AddComponent<SampleGame>();
        EditorSceneManager.SaveScene(scene, ScenePath);
        EditorBuildSettings.scenes = new[] { new EditorBuildSettingsScene(ScenePath, true) };
        EditorUtility.DisplayDialog("Troubadour", "Saved " + ScenePath + " and added it to the build settings.", "OK");
    }
}
#endif

# Troubadour sample game: main menu -> exploration -> battle -> victory -> exploration ...
#
# Music comes from a `troubadour serve` server (address: project settings troubadour/server/host and
# troubadour/server/port). Entering the exploration level prefetches the level's contexts, so the battle
# and victory music are ready (generated and cached) before they are needed. The labels show the scene,
# the context playing and whether its audio came from the server's cache or from live generation.
extends Control

# preload rather than the class_name TroubadourPlayer, so the game also runs before the editor has
# scanned the project (e.g. `godot --path godot_sample` on a fresh checkout)
const MusicPlayer = preload("res://addons/troubadour/player.gd")

const FLOW = {
	"main_menu": "exploration",
	"exploration": "battle",
	"battle": "victory",
	"victory": "exploration",
}
const TITLES = {
	"main_menu": "Main menu",
	"exploration": "Exploration",
	"battle": "Battle!",
	"victory": "Victory",
}
# Contexts the exploration level may need, prefetched when it loads (names from the bundled profiles).
const LEVEL_CONTEXTS = ["exploration", "battle", "victory"]

@onready var scene_label: Label = $Layout/Scene
@onready var music_label: Label = $Layout/Music
@onready var prefetch_label: Label = $Layout/Prefetch
@onready var server_label: Label = $Layout/Server
@onready var next_button: Button = $Layout/Buttons/Next
@onready var menu_button: Button = $Layout/Buttons/Menu

var music: MusicPlayer
var scene := ""
var level_loaded := false
var prefetch_jobs := {}          # "context/variant" -> [done_steps, total_steps]


func _ready() -> void:
	music = MusicPlayer.new()
	music.crossfade_sec = 2.0
	add_child(music)
	music.context_started.connect(_on_context_started)
	music.track_error.connect(_on_track_error)
	music.underrun.connect(_on_underrun)
	music.prefetch_progress.connect(_on_prefetch_progress)
	music.prefetch_finished.connect(_on_prefetch_finished)
	music.client.connected.connect(_on_connected)
	music.client.disconnected.connect(_on_disconnected)
	music.client.error.connect(_on_client_error)
	next_button.pressed.connect(func(): go(FLOW[scene]))
	menu_button.pressed.connect(func(): go("main_menu"))
	server_label.text = "Server: connecting to %s:%d ..." % [music.host, music.port]
	go("main_menu")


func go(next_scene: String) -> void:
	scene = next_scene
	scene_label.text = TITLES[scene]
	next_button.text = "%s  [Enter]" % ("Start game" if scene == "main_menu" else "Go to " + TITLES[FLOW[scene]])
	if scene == "exploration" and not level_loaded:
		# level load: have the server generate everything this level can play
		level_loaded = true
		prefetch_jobs.clear()
		music.prefetch(LEVEL_CONTEXTS)
		prefetch_label.text = "Prefetching %s ..." % ", ".join(LEVEL_CONTEXTS)
	if scene == "main_menu":
		level_loaded = false
	music.play(scene)
	_show_music()


func _unhandled_input(event: InputEvent) -> void:
	var key := event as InputEventKey
	if key == null or not key.pressed or key.echo:
		return
	match key.keycode:
		KEY_ENTER, KEY_KP_ENTER, KEY_SPACE:
			go(FLOW[scene])
		KEY_ESCAPE, KEY_1:
			go("main_menu")
		KEY_2:
			go("exploration")
		KEY_3:
			go("battle")
		KEY_4:
			go("victory")


func _process(_delta: float) -> void:
	_show_music()


func _show_music() -> void:
	if music.current_context == "":
		music_label.text = "Music: waiting for %s ..." % scene if scene != "" else "Music: -"
		return
	var header: Dictionary = music.current_header
	var source := "from the cache" if header.get("cached", false) else "live generation (streaming)"
	var bpm := " at %d bpm" % int(header["bpm"]) if header.has("bpm") else ""
	music_label.text = "Music: %s, variant %d%s - %s" % [music.current_context, header.get("variant", 0), bpm,
		source]


func _on_context_started(context: String, header: Dictionary, reason: String) -> void:
	var source := "cache" if header.get("cached", false) else "live generation"
	print("music: %s (%s, %s, track %s)" % [context, reason, source, header.get("track_id", "?")])


func _on_track_error(context: String, code: String, message: String) -> void:
	music_label.text = "Music: %s failed: %s (%s)" % [context, code, message]


func _on_underrun(context: String) -> void:
	print("music: %s is generating slower than it plays; silence until it catches up" % context)


func _on_prefetch_progress(context: String, variant: int, done_steps: int, total_steps: int) -> void:
	prefetch_jobs["%s/%d" % [context, variant]] = [done_steps, total_steps]
	var parts := []
	for job in prefetch_jobs:
		parts.append("%s %d%%" % [job, 100 * prefetch_jobs[job][0] / max(1, prefetch_jobs[job][1])])
	prefetch_label.text = "Prefetching: " + ", ".join(parts)


func _on_prefetch_finished(summary: Dictionary) -> void:
	prefetch_label.text = "Level music ready: %d generated, %d already cached, %d failed" % [
		summary.get("generated", 0), summary.get("cached", 0), summary.get("failed", []).size()]


func _on_connected(info: Dictionary) -> void:
	server_label.text = "Server: troubadour %s, model %s on %s" % [info["server_version"], info["model"]["id"],
		info["model"]["device"]]


func _on_disconnected(reason: String) -> void:
	server_label.text = "Server: connection lost (%s), reconnecting ..." % reason


func _on_client_error(handle: int, code: String, message: String, _body: Dictionary) -> void:
	if handle < 0:
		server_label.text = "Server: %s: %s" % [code, message]

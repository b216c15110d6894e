# TroubadourClient: a node that talks to a `troubadour serve` music server.
#
#   var client = TroubadourClient.new()
#   add_child(client)
#   client.track_header.connect(_on_header)          # Godot 4 (Godot 3: client.connect("track_header", self, "_on_header"))
#   client.connect_to_server("127.0.0.1", 5555)
#   var handle = client.get_track("battle")          # streamed: track_header, chunk..., track_finished
#
# Requests made before the connection is up are queued. A lost connection is retried with backoff
# (250 ms doubling to 8 s); the subscription and the idempotent requests (get_track restarts from its
# first chunk: a new track_header arrives) are sent again; others fail with error "disconnected".
# See core/connection.gd for the meaning of every signal and error code.
#
# Written in GDScript that Godot 3.2+ and Godot 4 both run (no annotations), so the same node is tested
# headless on Godot 3 by clients/godot/tests/run_tests.gd.
extends Node
class_name TroubadourClient

const Connection = preload("core/connection.gd")

signal connected(info)
signal disconnected(reason)
signal track_header(handle, header)
signal chunk(handle, body, payload)
signal track_finished(handle, body)
signal progress(handle, body)
signal track_ready(body)
signal event(body)
signal reply(handle, type, body)
signal error(handle, code, message, body)

# Settings (set them before the node enters the tree, or call connect_to_server() yourself).
var host = "127.0.0.1"         # default: project setting troubadour/server/host
var port = 5555                # default: project setting troubadour/server/port
var auto_connect = false       # connect in _ready() to host:port
var log_enabled = false

var core = null                # the Godot 3/4 neutral protocol client (core/connection.gd)
var _listeners = []            # objects whose _on_troubadour_event(ev) sees every event (TroubadourPlayer)


func _init():
	core = Connection.new()
	if ProjectSettings.has_setting("troubadour/server/host"):
		host = str(ProjectSettings.get_setting("troubadour/server/host"))
	if ProjectSettings.has_setting("troubadour/server/port"):
		port = int(ProjectSettings.get_setting("troubadour/server/port"))


func _ready():
	core.log_enabled = log_enabled
	if auto_connect:
		connect_to_server(host, port)


func _process(_delta):
	poll()


# Advance the connection and emit the signals; _process calls it (call it yourself when not in a tree).
func poll():
	for ev in core.poll():
		for listener in _listeners:
			if is_instance_valid(listener):
				listener.call("_on_troubadour_event", ev)
		callv("emit_signal", ev)


# `listener._on_troubadour_event(ev)` is called with every event as [signal name, args...] before the
# signal is emitted (a way to follow the client that reads the same in Godot 3 and 4).
func add_listener(listener):
	if not (listener in _listeners):
		_listeners.append(listener)


func remove_listener(listener):
	_listeners.erase(listener)


func connect_to_server(server_host = "127.0.0.1", server_port = 5555):
	host = server_host
	port = server_port
	core.connect_to_server(server_host, server_port)


func close():
	core.close()


func is_server_connected():
	return core.is_server_connected()


func server_info():
	return core.server_info


# get_track for a game context; variant -1 lets the server choose (a cached one first).
# options: format ("pcm_s16le", "pcm_f32le", "wav", "ogg"), sample_rate, params, fallback, priority,
# regenerate, cached_only. Returns the request handle.
func get_track(context, variant = -1, stream = true, options = {}):
	return core.get_track(context, variant, stream, options)


func get_track_prompt(prompt, stream = true, options = {}):
	return core.get_track_prompt(prompt, stream, options)


func prefetch(contexts, options = {}):
	return core.prefetch(contexts, options)


func subscribe(events = null):
	return core.subscribe(events)


func unsubscribe():
	return core.unsubscribe()


func cancel(handle):
	return core.cancel(handle)


func info():
	return core.info()


func health():
	return core.health()


func list_profiles():
	return core.list_profiles()


func ping():
	return core.ping()


func reload_profiles():
	return core.reload_profiles()


# Any request type with its body (no id); see PROTOCOL.md section 5.
func request(type, body = {}, timeout_ms = -1):
	return core.request(type, body, timeout_ms)

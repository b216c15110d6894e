# Editor plugin of the Troubadour addon (Godot 4). The nodes TroubadourClient and TroubadourPlayer
# register themselves with class_name; enabling the plugin adds the project settings
# troubadour/server/host and troubadour/server/port, the defaults of those nodes' host and port.
@tool
extends EditorPlugin

const SETTINGS = [
	["troubadour/server/host", "127.0.0.1", TYPE_STRING],
	["troubadour/server/port", 5555, TYPE_INT],
]


func _enter_tree() -> void:
	for s in SETTINGS:
		if not ProjectSettings.has_setting(s[0]):
			ProjectSettings.set_setting(s[0], s[1])
		ProjectSettings.set_initial_value(s[0], s[1])
		ProjectSettings.add_property_info({"name": s[0], "type": s[2]})
		# Custom settings are "advanced" (hidden until Advanced Settings is toggled) unless marked
		# basic; set_as_basic() exists from Godot 4.1 (call() keeps 4.0 compiling).
		if ProjectSettings.has_method("set_as_basic"):
			ProjectSettings.call("set_as_basic", s[0], true)


func _exit_tree() -> void:
	pass

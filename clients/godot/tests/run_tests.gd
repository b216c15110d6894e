# Headless tests of the Troubadour Godot addon, run on Godot 3 (the addon's core is Godot 3/4 neutral):
#
#   godot3-server --no-window --path PROJECT -s res://tests/run_tests.gd
#
# PROJECT is assembled by tests/test_engine_clients_godot.py: project.godot, addons/troubadour (a copy),
# tests/run_tests.gd (this file) and work/ with
#   vectors.txt   protocol/vectors/vectors.json pre-converted to tab-separated lines (see the driver)
#   config.txt    key=value lines: port=N (a running `troubadour serve`; absent: vectors only);
#                 mode=loading (a server still loading its model: only t_loading runs);
#                 mode=badreply (tests/fakeserver.py, undecodable server messages: only t_bad_replies runs);
#                 mode=director (tests/fakeserver.py's DirectorServer, streams cut short: only t_cut_short runs)
# Coordination with the driver: this script prints "@@ACTION name" and waits for work/ack_name.
# Output: "OK name[: detail]" / "FAIL name: reason" lines, "SHA name hex" lines, then "DONE".
#
# Runs everything from the first idle frame, in blocking loops that poll the client (the addon never
# blocks; the loops here stand in for a game's frames).
extends SceneTree

const Compat = preload("res://addons/troubadour/core/compat.gd")
const Protocol = preload("res://addons/troubadour/core/protocol.gd")
const Connection = preload("res://addons/troubadour/core/connection.gd")
const ClientNode = preload("res://addons/troubadour/client.gd")
const PlayerNode = preload("res://addons/troubadour/player.gd")
const Pcm = preload("res://addons/troubadour/core/pcm.gd")

var compat = null
var proto = null
var work = ""
var config = {}
var conn = null
var evlog = []
var detail = ""
var started = false
var polled = []          # extra nodes to poll along with conn: [node, method]
var node_events = []     # signals received from the TroubadourClient node
var cold_sha = ""


func _idle(_delta):      # Godot 3 MainLoop callback
	return _step()


func _process(_delta):   # Godot 4 name of the same callback
	return _step()


func _step():
	if started:
		return false
	started = true
	_run_all()
	quit()
	return false


func _run_all():
	compat = Compat.new()
	proto = Protocol.new(compat)
	work = ProjectSettings.globalize_path("res://work")
	config = _read_config(work + "/config.txt")
	print("godot ", compat.major, ".", compat.minor)
	_test("vectors", "t_vectors")
	_test("msgpack_roundtrip", "t_msgpack_roundtrip")
	_test("pcm_decode", "t_pcm_decode")
	_test("error_codes", "t_error_codes")
	var single = {"loading": "loading", "badreply": "bad_replies", "closing": "last_words"}   # modes that run one test on a connection
	var mode = config.get("mode", "")
	if config.has("port") and single.has(mode):
		conn = Connection.new(compat)
		conn.log_enabled = true
		conn.connect_to_server("127.0.0.1", int(config["port"]))
		_test(single[mode], "t_" + single[mode])
		conn.close()
	elif config.has("port") and mode == "director":
		_test("cut_short", "t_cut_short")
		_test("change_of_mind", "t_change_of_mind")
	elif config.has("port"):
		conn = Connection.new(compat)
		conn.log_enabled = true
		conn.backoff_max_ms = 1000     # the test restarts the server: keep the retries frequent
		conn.connect_to_server("127.0.0.1", int(config["port"]))
		var names = ["handshake", "info_health", "cold_track", "cached_track", "prefetch_progress",
			"fallback_warning", "unknown_context_error", "cancel", "hot_swap", "heartbeat", "reconnect", "client_node", "player"]
		for n in names:
			if n != "handshake" and not conn.is_server_connected() and n != "reconnect":
				print("FAIL ", n, ": skipped, not connected")
				continue
			_test(n, "t_" + n)
		conn.close()
	print("DONE")


func _test(name, method):
	detail = ""
	var t0 = compat.ticks_msec()
	var reason = call(method)
	var ms = compat.ticks_msec() - t0
	if reason == "":
		print("OK ", name, " (", ms, " ms)", ": " + detail if detail != "" else "")
	else:
		print("FAIL ", name, ": ", reason)


# ---------------------------------------------------------------- helpers
func _read_text(path):
	var f = File.new()
	if f.open(path, File.READ) != OK:
		return ""
	var text = f.get_as_text()
	f.close()
	return text


func _read_config(path):
	var out = {}
	for line in _read_text(path).split("\n"):
		var eq = line.find("=")
		if eq > 0:
			out[line.substr(0, eq).strip_edges()] = line.substr(eq + 1, line.length() - eq - 1).strip_edges()
	return out


func _action(name, timeout_ms):
	print("@@ACTION ", name)
	var ack = work + "/ack_" + name
	var end = compat.ticks_msec() + timeout_ms
	var f = File.new()
	while compat.ticks_msec() < end:
		if f.file_exists(ack):
			return true
		_poll_once()
		OS.delay_msec(5)
	return false


func _poll_once():
	if conn != null:
		for ev in conn.poll():
			evlog.append(ev)
	for p in polled:
		p[0].call(p[1])


func pump(ms):
	var end = compat.ticks_msec() + ms
	while compat.ticks_msec() < end:
		_poll_once()
		OS.delay_msec(2)


# The first logged event named `name` (for `handle` unless it is null), removed from the log; null on timeout.
func wait_event(name, handle, timeout_ms):
	var end = compat.ticks_msec() + timeout_ms
	while true:
		for i in range(evlog.size()):
			var ev = evlog[i]
			if ev[0] == name and (handle == null or ev[1] == handle):
				evlog.remove(i)
				return ev
		if compat.ticks_msec() > end:
			return null
		_poll_once()
		OS.delay_msec(2)
	return null


# Every event for `handle` up to its last one: error, track_finished, or a reply of type final_type.
func collect(handle, final_type, timeout_ms):
	var out = []
	var end = compat.ticks_msec() + timeout_ms
	while compat.ticks_msec() < end:
		var i = 0
		while i < evlog.size():
			var ev = evlog[i]
			if ev.size() > 1 and typeof(ev[1]) == compat.T_INT and ev[1] == handle and ev[0] != "event":
				evlog.remove(i)
				out.append(ev)
				if ev[0] == "error" or ev[0] == "track_finished" or (ev[0] == "reply" and ev[2] == final_type):
					return out
			else:
				i += 1
		_poll_once()
		OS.delay_msec(2)
	out.append(["timeout"])
	return out


func _last(events):
	return events[events.size() - 1]


func _describe(events):
	var names = []
	for ev in events:
		if ev[0] == "error":
			names.append("error %s: %s" % [ev[2], ev[3]])
		elif ev[0] == "reply":
			names.append("reply " + ev[2])
		else:
			names.append(ev[0])
	return str(names)


# Canonical text of a decoded value; the driver writes the vectors' expected values the same way.
func canon(v):
	var t = typeof(v)
	if t == compat.T_NIL:
		return "n"
	if t == compat.T_BOOL:
		return "T" if v else "F"
	if t == compat.T_INT:
		return "i" + str(v)
	if t == compat.T_FLOAT:
		if is_nan(v):
			return "fnan"
		var b = StreamPeerBuffer.new()
		b.big_endian = true
		b.put_double(v)
		return "f" + b.data_array.hex_encode()
	if t == compat.T_STRING:
		return "s" + compat.utf8(v).hex_encode()
	if t == compat.T_BYTES:
		return "b" + v.hex_encode()
	if t == compat.T_ARRAY:
		var s = "["
		for i in range(v.size()):
			if i > 0:
				s += ","
			s += canon(v[i])
		return s + "]"
	if t == compat.T_DICT:
		var by_hex = {}
		var keys = []
		for k in v.keys():
			var hex = compat.utf8(k).hex_encode()
			by_hex[hex] = k
			keys.append(hex)
		keys.sort()
		var s = "{"
		for i in range(keys.size()):
			if i > 0:
				s += ","
			s += keys[i] + ":" + canon(v[by_hex[keys[i]]])
		return s + "}"
	return "?%d" % t


func _frames_hex(frames):
	var s = ""
	for i in range(frames.size()):
		if i > 0:
			s += ","
		s += frames[i].hex_encode()
	return s


# ---------------------------------------------------------------- protocol without a server
# vectors.txt: name \t direction \t valid \t stage \t frames (hex, comma separated) \t expected
# expected: valid: type|canon(body)|payload hex or -; invalid: code|field or -|canon(id)
func t_vectors():
	var lines = _read_text(work + "/vectors.txt").split("\n")
	var valid = 0
	var rejected = 0
	var skipped = 0
	var failures = []
	for line in lines:
		if line.strip_edges() == "":
			continue
		var cols = line.split("\t")
		var name = cols[0]
		var reply = cols[1] == "reply"
		var frames = []
		for hex in cols[4].split(","):
			frames.append(compat.hex_to_bytes(hex))
		var r = proto.decode(frames, reply)
		if cols[2] == "1":
			if not r["ok"]:
				failures.append("%s: rejected (%s: %s)" % [name, r["code"], r["message"]])
				continue
			var payload = "-"
			if r["payload"] != null:
				payload = r["payload"].hex_encode()
			var got = r["type"] + "|" + canon(r["body"]) + "|" + payload
			if got != cols[5]:
				failures.append("%s: decoded %s, expected %s" % [name, got, cols[5]])
				continue
			var enc = proto.encode(r["type"], r["body"], r["payload"])
			if not enc["ok"]:
				failures.append("%s: re-encoding failed: %s" % [name, enc["message"]])
				continue
			if _frames_hex(enc["frames"]) != cols[4]:
				failures.append("%s: re-encoded %s, expected %s" % [name, _frames_hex(enc["frames"]), cols[4]])
				continue
			valid += 1
		elif cols[3] != "decode":
			skipped += 1     # stage "request": semantic checks that only the server makes
		else:
			if r["ok"]:
				failures.append("%s: accepted, expected %s" % [name, cols[5]])
				continue
			var field = "-"
			if r["field"] != null:
				field = r["field"]
			var got_err = "%s|%s|%s" % [r["code"], field, canon(r["id"])]
			if got_err != cols[5]:
				failures.append("%s: rejected as %s (%s), expected %s" % [name, got_err, r["message"], cols[5]])
				continue
			rejected += 1
	if valid + rejected == 0:
		failures.append("no vectors read from " + work + "/vectors.txt")
	detail = "%d valid decoded and re-encoded byte for byte, %d invalid rejected with the right code, %d request-stage (server-only) skipped" % [valid, rejected, skipped]
	if failures.size() > 0:
		return str(failures.size()) + " failures: " + str(failures)
	return ""


func t_msgpack_roundtrip():
	var codec = proto.codec
	var value = {"z": [1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, -129, -32768, -32769,
		4294967295, 4294967296, -2147483648, -2147483649], "a": {"é": 1.5, "": null, "t": true},
		"s": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
		"b": compat.hex_to_bytes("00ff10"), "l": []}
	var long_list = []
	for i in range(300):
		long_list.append(i)
	value["l"] = long_list
	var bytes = codec.encode(value)
	if bytes == null:
		return "encode failed: " + codec.error_message
	var r = codec.decode(bytes)
	if not r["ok"]:
		return "decode failed: " + r["message"]
	if canon(r["value"]) != canon(value):
		return "round trip changed the value: %s" % canon(r["value"])
	var again = codec.encode(r["value"])
	if again.hex_encode() != bytes.hex_encode():
		return "re-encoding differs"
	# limits when encoding
	var deep = [1]
	for i in range(16):
		deep = [deep]
	if codec.encode({"d": deep}) != null or codec.error_code != "too_large":
		return "nesting over 16 levels was encoded"
	if codec.encode({1: 2}) != null or codec.error_code != "bad_request":
		return "an int map key was encoded"
	# packed arrays (split(), exported string lists) go as arrays
	var packed = codec.encode({"c": "menu,battle".split(","), "f": "1.5,2".split_floats(","), "i": PoolIntArray([1, -2])})
	var plain = codec.encode({"c": ["menu", "battle"], "f": [1.5, 2.0], "i": [1, -2]})
	if packed == null or packed.hex_encode() != plain.hex_encode():
		return "packed arrays: %s" % codec.error_message
	detail = "%d bytes" % bytes.size()
	return ""


# The player's PCM decoding, on the payload of vector `chunk` (PROTOCOL.md section 8): 4 stereo
# pcm_s16le frames (0, 0), (32767, -32767), (16384, 16384), (-16384, -16384); and on pcm_f32le.
func t_pcm_decode():
	var b16 = Pcm.reader(compat.hex_to_bytes("00000000ff7f01800040004000c000c0"))
	var s16 = Pcm.frames(compat, b16, 0, 4, 2, false)
	var want = [Vector2(0, 0), Vector2(32767 / 32768.0, -32767 / 32768.0), Vector2(0.5, 0.5), Vector2(-0.5, -0.5)]
	for i in range(4):
		if s16[i] != want[i]:
			return "s16 frame %d: %s, expected %s" % [i, str(s16[i]), str(want[i])]
	var tail = Pcm.frames(compat, b16, 2, 2, 2, false)     # the player reads the frames it is about to play
	if tail.size() != 2 or tail[0] != want[2] or tail[1] != want[3]:
		return "s16 frames 2..3: %s" % str(tail)
	var b = StreamPeerBuffer.new()
	for x in [0.25, -1.0, 0.75]:
		b.put_float(x)
	var mono = Pcm.frames(compat, Pcm.reader(b.data_array), 0, 3, 1, true)
	if mono[0] != Vector2(0.25, 0.25) or mono[1] != Vector2(-1, -1) or mono[2] != Vector2(0.75, 0.75):
		return "f32 mono frames: %s" % str(mono)
	if Pcm.frame_count(17, 2, false) != 4 or Pcm.frame_count(24, 2, true) != 3:
		return "frame_count"
	return ""


# Error replies fed to a connection: known codes pass, an unknown one counts as internal.
func t_error_codes():
	var c = Connection.new(compat)
	var got = []
	for code in ["busy", "engine_dead", "some_future_code"]:
		var h = c.request("ping", {})   # not connected: its record waits, which is all this needs
		var enc = proto.encode("error", {"id": h, "seq": 0, "final": true, "code": code, "message": "m"})
		c._on_frames([compat.empty_bytes()] + enc["frames"])
		for ev in c.poll():
			if ev[0] == "error" and ev[1] == h:
				got.append([ev[2], str(ev[4].get("code"))])
	var want = [["busy", "busy"], ["engine_dead", "engine_dead"], ["internal", "some_future_code"]]
	if str(got) != str(want):
		return "codes %s, expected %s" % [str(got), str(want)]
	return ""


# ---------------------------------------------------------------- against the server
func t_handshake():
	var ev = wait_event("connected", null, 20000)
	if ev == null:
		return "no connected event; log: " + _describe(evlog)
	var info = ev[1]
	if int(info["protocol_version"]) != 1:
		return "protocol_version %s" % str(info["protocol_version"])
	detail = "server %s, model sample_rate %d, heartbeat %d ms" % [info["server_version"],
		info["model"]["sample_rate"], info["heartbeat_ms"]]
	return ""


func t_info_health():
	var h = conn.info()
	var ev = collect(h, "info", 10000)
	if _last(ev)[0] != "reply" or _last(ev)[2] != "info":
		return "info: " + _describe(ev)
	var body = _last(ev)[3]
	if not ("battle" in body["profiles"]) or not ("pcm_s16le" in body["formats"]):
		return "info lacks battle or pcm_s16le: " + str(body)
	ev = collect(conn.health(), "health", 10000)
	if _last(ev)[0] != "reply" or _last(ev)[3]["status"] != "ok":
		return "health: " + _describe(ev)
	ev = collect(conn.list_profiles(), "profiles", 10000)
	if _last(ev)[0] != "reply" or _last(ev)[3]["contexts"].size() != body["profiles"].size():
		return "list_profiles: " + _describe(ev)
	detail = "profiles " + str(body["profiles"])
	return ""


# Fetch a streamed track; -> {"error": str, "header", "sha", "bytes", "chunks", "end"}
func fetch(context, variant, options):
	var h = conn.get_track(context, variant, true, options)
	return _track_of(collect(h, "", 120000))


# A streamed track's events checked: offsets, bytes against the header, SHA-256 against the end message.
func _track_of(ev):
	var out = {"error": "", "header": null, "sha": "", "bytes": 0, "chunks": 0, "end": null}
	var ctx = compat.sha256_context()
	var offset = 0
	for e in ev:
		if e[0] == "track_header":
			out["header"] = e[2]
		elif e[0] == "chunk":
			if int(e[2]["offset"]) != offset:
				out["error"] = "chunk offset %d, expected %d" % [e[2]["offset"], offset]
			offset += int(e[2]["frames"])
			ctx.update(e[3])
			out["bytes"] += e[3].size()
			out["chunks"] += 1
		elif e[0] == "track_finished":
			out["end"] = e[2]
	out["sha"] = ctx.finish().hex_encode()
	if out["error"] == "" and (out["header"] == null or out["end"] == null):
		out["error"] = "events " + _describe(ev)
	elif out["error"] == "" and out["sha"] != out["end"]["sha256"]:
		out["error"] = "sha256 %s, end says %s" % [out["sha"], out["end"]["sha256"]]
	elif out["error"] == "":
		var hd = out["header"]
		var expect = int(hd["frames"]) * int(hd["channels"]) * 2
		if out["bytes"] != expect or offset != int(hd["frames"]):
			out["error"] = "%d bytes / %d frames, expected %d / %d" % [out["bytes"], offset, expect, hd["frames"]]
	return out


func t_cold_track():
	var r = fetch("battle", 0, {"format": "pcm_s16le"})
	if r["error"] != "":
		return r["error"]
	if r["header"]["cached"]:
		return "the first battle track says cached"
	cold_sha = r["sha"]
	print("SHA cold_battle ", r["sha"])
	detail = "%d bytes in %d chunks, sha256 %s" % [r["bytes"], r["chunks"], r["sha"]]
	return ""


func t_cached_track():
	var r = fetch("battle", 0, {"format": "pcm_s16le"})
	if r["error"] != "":
		return r["error"]
	if not r["header"]["cached"]:
		return "the second battle track is not cached"
	if r["sha"] != cold_sha:
		return "cached audio differs from the cold one"
	detail = "%d bytes in %d chunks" % [r["bytes"], r["chunks"]]
	return ""


func t_prefetch_progress():
	var h = conn.prefetch(["explore"], {"variants": "all"})
	var ev = collect(h, "done", 120000)
	var accepted = null
	var progress = 0
	for e in ev:
		if e[0] == "reply" and e[2] == "accepted":
			accepted = e[3]
		elif e[0] == "progress":
			progress += 1
	var done = _last(ev)
	if accepted == null or done[0] != "reply" or done[2] != "done":
		return "events " + _describe(ev)
	if accepted["jobs"].size() != 2 or int(done[3]["generated"]) + int(done[3]["cached"]) != 2:
		return "accepted %s done %s" % [str(accepted), str(done[3])]
	if int(done[3]["generated"]) > 0 and progress == 0:
		return "generated without progress messages"
	var r = conn.get_track("explore", 1, false, {"cached_only": true})
	var got = collect(r, "", 20000)
	if _last(got)[0] != "track_finished":
		return "explore variant 1 not cached after prefetch: " + _describe(got)
	detail = "%d progress messages, done %s" % [progress, str(done[3])]
	return ""


# A context not in the profiles gets fallback music, and the client warns once per name (push_warning; the
# driver counts the WARNING lines).
func t_fallback_warning():
	for i in range(2):
		var r = fetch("menuu", -1, {"format": "pcm_s16le", "params": {"duration": 0.5}})
		if r["error"] != "":
			return r["error"]
		if not r["header"].get("fallback", false):
			return "the header does not say fallback: " + str(r["header"])
	if conn.fallback_contexts != ["menuu"]:
		return "fallback_contexts " + str(conn.fallback_contexts)
	return ""


func t_unknown_context_error():
	var h = conn.get_track("no_such_place", -1, true, {"fallback": false})
	var ev = collect(h, "", 20000)
	var e = _last(ev)
	if e[0] != "error" or e[2] != "unknown_context":
		return "events " + _describe(ev)
	detail = e[3]
	return ""


func t_cancel():
	var h = conn.get_track("boss", 0, true, {"params": {"duration": 4.0, "seed": 31337}})
	var c = conn.cancel(h)
	var ev = collect(h, "", 60000)
	var e = _last(ev)
	if e[0] != "error" or e[2] != "cancelled":
		return "target ended with " + _describe(ev)
	var cev = collect(c, "cancelled", 10000)
	if _last(cev)[0] != "reply" or not _last(cev)[3]["found"]:
		return "cancel reply " + _describe(cev)
	return ""


func t_hot_swap():
	var h = conn.subscribe(["track_ready", "profiles_changed"])
	var sub = collect(h, "subscribed", 10000)
	if _last(sub)[0] != "reply":
		return "subscribe: " + _describe(sub)
	if not _action("edit_profiles", 20000):
		return "the driver did not edit the profiles"
	var changed = null
	var ready = null
	var end = compat.ticks_msec() + 90000
	while ready == null and compat.ticks_msec() < end:
		var ev = wait_event("event", null, 1000)
		if ev == null:
			continue
		var body = ev[1]
		if body["event"] == "profiles_changed":
			changed = body
		elif body["event"] == "track_ready" and body["context"] == "battle" and body["reason"] == "hot_swap":
			ready = body
	if changed == null or not ("battle" in changed["contexts"]):
		return "no profiles_changed event naming battle (got %s)" % str(changed)
	if ready == null:
		return "no track_ready hot_swap event for battle"
	var r = fetch("battle", int(ready["variant"]), {"format": "pcm_s16le"})
	if r["error"] != "":
		return r["error"]
	if not r["header"]["cached"] or r["header"]["track_id"] != ready["track_id"]:
		return "after hot swap: cached %s, track_id %s vs %s" % [str(r["header"]["cached"]),
			r["header"]["track_id"], ready["track_id"]]
	if r["sha"] == cold_sha:
		return "hot-swapped audio equals the old audio"
	detail = "track_ready %s, prompt now: %s" % [ready["track_id"], r["header"]["prompt"]]
	return ""


func t_heartbeat():
	# a short heartbeat so the test is quick (the server's is 2000 ms; it comes back with the next info)
	conn.heartbeat_ms = 400
	conn.connect_timeout_ms = 1500
	evlog.clear()
	var pings = conn.pings_sent
	pump(2000)                   # idle: pings answered by pongs keep the connection
	for ev in evlog:
		if ev[0] == "disconnected":
			return "dropped while idle: " + str(ev)
	if conn.pings_sent - pings < 2:
		return "%d pings in 2 s of silence" % (conn.pings_sent - pings)
	if not _action("freeze", 10000):     # the driver stops the server process (SIGSTOP): TCP stays up
		return "the driver did not freeze the server"
	var lost = wait_event("disconnected", null, 5000)
	if not _action("thaw", 10000):
		return "the driver did not thaw the server"
	if lost == null:
		return "a silent server was not noticed"
	if lost[1].find("no message from the server") < 0:
		return "lost for another reason: " + lost[1]
	var back = wait_event("connected", null, 30000)
	conn.connect_timeout_ms = 5000
	if back == null:
		return "no reconnection after the server woke up"
	if conn.heartbeat_ms != 2000:
		return "heartbeat_ms %d after reconnecting" % conn.heartbeat_ms
	var h = collect(conn.ping(), "pong", 10000)
	if _last(h)[0] != "reply":
		return "ping after reconnect: " + _describe(h)
	detail = "lost: " + lost[1]
	return ""


# A server still loading its model; the driver lets it finish 7 s after acking "release". info is answered at
# once (connected), health says loading, and a track request waits through the load on heartbeats alone.
func t_loading():
	var ev = wait_event("connected", null, 20000)
	if ev == null:
		return "no connected event (info not answered?); log: " + _describe(evlog)
	var hev = collect(conn.health(), "health", 10000)
	if _last(hev)[0] != "reply" or _last(hev)[3]["status"] != "loading":
		return "health while loading: " + _describe(hev)
	var t0 = compat.ticks_msec()
	if not _action("release", 10000):
		return "the driver did not take the release action"
	var r = fetch("menu", -1, {"format": "pcm_s16le"})
	var waited = compat.ticks_msec() - t0
	if r["error"] != "":
		return r["error"]
	if waited < 6500:
		return "the track came after %d ms, before the model was released" % waited
	for e in evlog:
		if e[0] == "disconnected":
			return "dropped while the model loaded: " + str(e)
	hev = collect(conn.health(), "health", 10000)
	if _last(hev)[0] != "reply" or _last(hev)[3]["status"] != "ok":
		return "health after loading: " + _describe(hev)
	detail = "track after %d ms, %d pings" % [waited, conn.pings_sent]
	return ""


# tests/fakeserver.py sends undecodable messages (PROTOCOL.md section 4): one with a request's id fails that
# request, one with id nil fails nothing (reported with handle -1), one with no readable id fails every open
# request (a get_track has no timeout: it would otherwise wait forever). The connection goes on.
func t_bad_replies():
	if wait_event("connected", null, 20000) == null:
		return "no connected event; log: " + _describe(evlog)
	var ev = collect(conn.get_track("broken_own", -1, true, {}), "", 20000)
	if _last(ev)[0] != "error" or _last(ev)[2] != "protocol_error":
		return "broken_own ended with " + _describe(ev)
	ev = collect(conn.get_track("nil_noise", -1, true, {}), "", 20000)
	if _last(ev)[0] != "error" or _last(ev)[2] != "unknown_context":
		return "nil_noise ended with " + _describe(ev)
	if wait_event("error", -1, 2000) == null:
		return "the message with id nil was not reported"
	var handles = [conn.get_track("unreadable_a", -1, true, {}), conn.get_track("unreadable_b", -1, true, {})]
	for h in handles:
		ev = collect(h, "", 20000)
		if _last(ev)[0] != "error" or _last(ev)[2] != "protocol_error":
			return "unreadable request %d ended with %s" % [h, _describe(ev)]
	var hev = collect(conn.health(), "health", 10000)
	if _last(hev)[0] != "reply" or _last(hev)[3]["status"] != "ok":
		return "health afterwards: " + _describe(hev)
	for e in evlog:
		if e[0] == "disconnected":
			return "the connection dropped: " + str(e)
	detail = _last(ev)[3]
	return ""


# The server sends a whole track and closes the connection at once: the track still counts (it had arrived,
# together with the close, before the client read anything).
func t_last_words():
	if wait_event("connected", null, 20000) == null:
		return "no connected event; log: " + _describe(evlog)
	var h = conn.get_track("last_words", -1, true, {"format": "pcm_s16le"})
	OS.delay_msec(1500)   # no polling meanwhile: the next read finds the track and the close together
	var r = _track_of(collect(h, "", 10000))
	if r["error"] != "":
		return r["error"]
	if wait_event("disconnected", null, 5000) == null:
		return "the close was not reported"
	detail = "%d bytes" % r["bytes"]
	return ""


func t_reconnect():
	evlog.clear()
	if not _action("restart", 120000):
		return "the driver did not restart the server"
	var lost = wait_event("disconnected", null, 30000)
	if lost == null:
		return "no disconnected event"
	# requests made while the server is away wait for the new connection (prefetch too: not sent yet)
	var h = conn.health()
	var pf = conn.prefetch(["boss"], {"stream": false})
	var back = wait_event("connected", null, 60000)
	if back == null:
		return "no connected event after the restart"
	var ev = collect(h, "health", 20000)
	if _last(ev)[0] != "reply":
		return "health queued during the outage: " + _describe(ev)
	ev = collect(pf, "accepted", 20000)
	if _last(ev)[0] != "reply":
		return "prefetch queued during the outage: " + _describe(ev)
	var sub = wait_event("reply", null, 10000)
	if sub == null or sub[2] != "subscribed":
		return "subscription not renewed: %s" % str(sub)
	var r = fetch("battle", 0, {"format": "pcm_s16le"})
	if r["error"] != "":
		return "get_track after reconnect: " + r["error"]
	if not r["header"]["cached"]:
		return "the restarted server lost its cache"
	detail = "lost: %s" % lost[1]
	return ""


# ---------------------------------------------------------------- nodes
func t_client_node():
	var node = ClientNode.new()
	node.log_enabled = false
	get_root().add_child(node)
	var names = ["connected", "track_header", "chunk", "track_finished", "error", "reply"]
	for n in names:
		node.connect(n, self, "_on_signal_" + n)
	polled.append([node, "poll"])
	node.connect_to_server("127.0.0.1", int(config["port"]))
	var end = compat.ticks_msec() + 30000
	var h = -1
	var finished = false
	while compat.ticks_msec() < end and not finished:
		_poll_once()
		OS.delay_msec(2)
		if h < 0 and _seen("connected", null):
			h = node.get_track("menu", -1, false)
		if h >= 0 and (_seen("track_finished", h) or _seen("error", h)):
			finished = true
	polled.clear()
	node.queue_free()
	if not finished:
		return "signals seen: " + str(node_events)
	if _seen("error", h):
		return "error signal: " + str(node_events)
	if not _seen("track_header", h) or not _seen("chunk", h):
		return "missing track_header/chunk signals: " + str(node_events)
	detail = "%d signals" % node_events.size()
	return ""


func _seen(name, handle):
	for ev in node_events:
		if ev[0] == name and (handle == null or ev[1] == handle):
			return true
	return false


func _on_signal_connected(info):
	node_events.append(["connected", info])


func _on_signal_track_header(handle, header):
	node_events.append(["track_header", handle])


func _on_signal_chunk(handle, body, payload):
	node_events.append(["chunk", handle, payload.size()])


func _on_signal_track_finished(handle, body):
	node_events.append(["track_finished", handle])


func _on_signal_error(handle, code, message, body):
	node_events.append(["error", handle, code, message])


func _on_signal_reply(handle, type, body):
	node_events.append(["reply", handle, type])


var player_events = []


func _on_player_context_started(context, header, reason):
	player_events.append(["context_started", context, reason, header["cached"]])


func _on_player_track_ended(context):
	player_events.append(["track_ended", context])


func _on_player_underrun(context):
	player_events.append(["underrun", context])


func _on_player_track_error(context, code, message):
	player_events.append(["track_error", context, code, message])


func _on_player_prefetch_progress(context, variant, done_steps, total_steps):
	player_events.append(["prefetch_progress", context, variant, done_steps, total_steps])


func _on_player_prefetch_finished(summary):
	player_events.append(["prefetch_finished", summary])


# Poll until player_events has an event [name, arg] (arg null: any); also returns the max number of decks
# heard at once meanwhile in `overlap`.
var overlap = 0


func _wait_player(player, name, arg, timeout_ms):
	var end = compat.ticks_msec() + timeout_ms
	while compat.ticks_msec() < end:
		for ev in player_events:
			if ev[0] == name and (arg == null or ev[1] == arg):
				player_events.erase(ev)
				return ev
		_poll_once()
		var heard = 0
		for d in player.decks:
			if d["state"] == PlayerNode.DECK_PLAYING or d["state"] == PlayerNode.DECK_STOPPING:
				heard += 1
		overlap = max(overlap, heard)
		OS.delay_msec(5)
	return null


func _track_error_text():
	for ev in player_events:
		if ev[0] == "track_error":
			return " (track_error %s)" % str(ev)
	return ""


func t_player():
	return _with_player(["context_started", "track_ended", "underrun", "track_error", "prefetch_progress",
		"prefetch_finished"], "_player_steps")


# A player on the server of config.txt, its `signals` logged, polled while `steps`(player) runs.
func _with_player(signals, steps):
	player_events = []
	var player = PlayerNode.new()
	player.host = "127.0.0.1"
	player.port = int(config["port"])
	player.crossfade_sec = 0.5
	get_root().add_child(player)
	for n in signals:
		player.connect(n, self, "_on_player_" + n)
	polled.append([player.client, "poll"])
	polled.append([player, "poll"])
	var result = call(steps, player)
	polled.clear()
	player.client.close()
	player.queue_free()
	return result


# Against DirectorServer (4 s tones at 120 bpm, 32 kHz: a bar is 64000 frames, streamed in 1 s chunks; the
# driver's actions hold_X / fail_X cut context X's next stream short after its first second).
func t_cut_short():
	return _with_player(["context_started", "track_error"], "_cut_short_steps")


func _deck_of(player, context, state):
	for d in player.decks:
		if d["context"] == context and d["state"] == state:
			return d
	return null


func _cut_short_steps(player):
	player.play("steady")
	if _wait_player(player, "context_started", "steady", 20000) == null:
		return "steady never started" + _track_error_text()
	# 1. The track set to replace the heard one fails before its crossfade starts (it waits for the next bar):
	# the heard one comes back to full volume instead of fading out to silence.
	_just_past_a_bar(player, "steady")
	if not _action("hold_dies", 10000):
		return "the driver did not hold dies"
	player.play("dies")
	if not _scheduled(player, "dies"):
		return "dies was not waiting for a bar line: %s" % str(player.last_transition)
	if not _action("fail_dies", 10000):
		return "the driver did not fail dies"
	if _wait_player(player, "track_error", "dies", 5000) == null:
		return "no track_error for dies"
	_wait_player(player, "-", null, 1000)
	var steady = _deck_of(player, "steady", PlayerNode.DECK_PLAYING)
	if player.current_context != "steady" or steady == null or steady["gain"] < 0.999:
		return "after dies failed: context %s, steady %s" % [player.current_context, str(steady)]
	# 2. The heard track's stream fails part-way: it loops what arrived (no underrun) and is fetched again.
	if not _action("hold_flaky", 10000):
		return "the driver did not hold flaky"
	player.play("flaky")
	if _wait_player(player, "context_started", "flaky", 20000) == null:
		return "flaky never started" + _track_error_text()
	var end = compat.ticks_msec() + 10000
	while _deck_of(player, "steady", PlayerNode.DECK_STOPPING) != null and compat.ticks_msec() < end:
		_poll_once()
		OS.delay_msec(2)
	var before = player.underruns
	if not _action("fail_flaky", 10000):
		return "the driver did not fail flaky"
	if _wait_player(player, "track_error", "flaky", 5000) == null:
		return "no track_error for flaky"
	var flaky = _deck_of(player, "flaky", PlayerNode.DECK_PLAYING)
	var played = 0
	if flaky != null:
		played = flaky["played"]
	_wait_player(player, "-", null, 700)    # the retry comes after 1 s
	if flaky == null or flaky["state"] != PlayerNode.DECK_PLAYING or flaky["played"] < played + 16000:
		return "the cut-short flaky stopped: %s" % str(flaky)
	if player.underruns != before:
		return "the cut-short flaky underran instead of looping what arrived"
	var resumed = _wait_player(player, "context_started", "flaky", 10000)
	if resumed == null or resumed[2] != "resume":
		return "flaky was not fetched again: %s" % str(resumed)
	detail = "dies transition %s" % str(player.last_transition)
	return ""


# Until `context`'s deck has just passed a bar line (the next one is ~1.5 s away).
func _just_past_a_bar(player, context):
	var d = _deck_of(player, context, PlayerNode.DECK_PLAYING)
	var end = compat.ticks_msec() + 10000
	while d != null and int(d["played"]) % 64000 > 12000 and compat.ticks_msec() < end:
		_poll_once()
		OS.delay_msec(2)


# play() was asked for `context`: true once it waits for a bar line of the heard track.
func _scheduled(player, context):
	var end = compat.ticks_msec() + 10000
	while player.current_context != context and compat.ticks_msec() < end:
		_poll_once()
		OS.delay_msec(2)
	return _deck_of(player, context, PlayerNode.DECK_LOADING) != null and player.last_transition["delay_ms"] >= 500


func _heard(player):
	var out = []
	for d in player.decks:
		if d["state"] != PlayerNode.DECK_IDLE:
			out.append(d["context"])
	return out


func t_change_of_mind():
	return _with_player(["context_started", "track_error"], "_change_of_mind_steps")


# The game changes its mind while the next track waits for a bar line (DirectorServer).
func _change_of_mind_steps(player):
	player.play("first")
	if _wait_player(player, "context_started", "first", 20000) == null:
		return "first never started" + _track_error_text()
	# 1. A -> B -> C: B is dropped before it starts, A stays until C crossfades from it (the deck fading out
	# was cut dead for C and B still started: B and C looped on top of each other).
	_just_past_a_bar(player, "first")
	player.play("second")
	if not _scheduled(player, "second"):
		return "second was not waiting for a bar line: %s" % str(player.last_transition)
	player.play("third")
	var first = _deck_of(player, "first", PlayerNode.DECK_PLAYING)
	if first == null or player.current_context != "first" or first["gain"] < 0.999:
		return "first did not stay while third loads: %s" % str(player.stats())
	if _wait_player(player, "context_started", "third", 20000) == null:
		return "third never started" + _track_error_text()
	_wait_player(player, "-", null, 1500)      # past the crossfade
	if _heard(player) != ["third"]:
		return "after first -> second -> third: decks %s" % str(player.stats())
	# 2. A -> B -> A: back to the heard track before B starts: B is dropped and A plays on (it was fetched
	# again and restarted from its beginning with a crossfade).
	_just_past_a_bar(player, "third")
	player.play("fourth")
	if not _scheduled(player, "fourth"):
		return "fourth was not waiting for a bar line: %s" % str(player.last_transition)
	var third = _deck_of(player, "third", PlayerNode.DECK_STOPPING)
	var played = -1
	if third != null:
		played = third["played"]
	player.play("third")
	_wait_player(player, "-", null, 2500)
	if third == null or third["state"] != PlayerNode.DECK_PLAYING or third["played"] < played + 32000 or \
			third["gain"] < 0.999 or _heard(player) != ["third"] or player.current_context != "third":
		return "after third -> fourth -> third: %s" % str(player.stats())
	for ev in player_events:
		if ev[0] == "context_started":
			return "started again or started a dropped track: %s" % str(ev)
	return ""


func _player_steps(player):
	# prefetch at level load
	player.prefetch(["menu", "victory"])
	var done = _wait_player(player, "prefetch_finished", null, 60000)
	if done == null:
		return "no prefetch_finished" + _track_error_text()
	var summary = done[1]
	if int(summary.get("generated", 0)) + int(summary.get("cached", 0)) != 2:
		return "prefetch summary " + str(summary)
	var progress = 0
	for ev in player_events:
		if ev[0] == "prefetch_progress":
			progress += 1
	if int(summary["generated"]) > 0 and progress == 0:
		return "no prefetch_progress signals"
	# play a context: served from the cache
	player.play("menu")
	var started = _wait_player(player, "context_started", "menu", 20000)
	if started == null:
		return "menu never started" + _track_error_text()
	if not started[3] or not player.current_header["cached"] or player.current_context != "menu":
		return "menu was not served from the cache after prefetch: " + str(started)
	_wait_player(player, "-", null, 1500)
	var st = player.stats()
	var a = st["decks"][player._active]
	if a["played"] < 32000 or a["peak"] < 0.01:
		return "menu deck pushed %d frames (peak %f) in 1.5 s" % [a["played"], a["peak"]]
	# crossfade to battle at the next bar of menu (120 bpm 4/4: a bar is 64000 frames at 32 kHz)
	overlap = 0
	player.play("battle")
	started = _wait_player(player, "context_started", "battle", 30000)
	if started == null:
		return "battle never started" + _track_error_text()
	var tr = player.last_transition
	if tr["frames_per_bar"] != 64000.0 or tr["fade_at"] % 64000 != 0:
		return "crossfade not on a bar line of menu: " + str(tr)
	_wait_player(player, "-", null, 1200)
	if overlap < 2:
		return "menu and battle were never heard together (no crossfade)"
	var states = []
	for d in player.decks:
		states.append(d["state"])
	if not (PlayerNode.DECK_IDLE in states) or player.current_context != "battle":
		return "after the crossfade: decks %s, context %s" % [str(states), player.current_context]
	# hot swap: someone regenerates battle; the player fetches the new version and crossfades to it
	var h = conn.get_track("battle", int(player.current_header["variant"]), false, {"regenerate": true})
	var regen = collect(h, "", 60000)
	if _last(regen)[0] != "track_finished":
		return "regenerate: " + _describe(regen)
	var swapped = _wait_player(player, "context_started", "battle", 30000)
	if swapped == null or swapped[2] != "hot_swap":
		return "no hot-swap restart of battle: %s" % str(swapped)
	# a track that does not loop (victory) plays once and ends
	player.play("victory")
	if _wait_player(player, "context_started", "victory", 20000) == null:
		return "victory never started" + _track_error_text()
	if _wait_player(player, "track_ended", "victory", 15000) == null:
		return "victory did not end: %s" % str(player.stats())
	if player.current_context != "":
		return "context after the end: " + player.current_context
	# live generation with no start buffer: silence fills the gap until the first audio arrives
	player.start_buffer_sec = 0.0
	player.format = "pcm_f32le"
	player.play("ice_cave")      # not in the profiles: the server generates fallback music, cold
	started = _wait_player(player, "context_started", "ice_cave", 20000)
	if started == null:
		return "ice_cave never started" + _track_error_text()
	if started[3]:
		return "the fallback track came from the cache"
	if _wait_player(player, "underrun", "ice_cave", 5000) == null:
		return "no underrun while waiting for live audio: %s" % str(player.stats())
	_wait_player(player, "-", null, 1500)
	var live = player.stats()["decks"][player._active]
	if live["peak"] < 0.01 or live["received"] < live["total"]:
		return "no audio after the underrun: %s" % str(live)
	detail = "bar-aligned crossfade %s, %d underruns" % [str(tr), player.underruns]
	return ""

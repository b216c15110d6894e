# Troubadour wire protocol version 1 (protocol/PROTOCOL.md): message framing and validation.
#
# A message is frames [header, type, body(, payload)] after the empty delimiter: header "TRB" + 0x01,
# type 1-32 chars [a-z][a-z0-9_]*, body a msgpack map, payload raw bytes (server `chunk` and final `track`).
# decode() checks frames the way protocol/vectors/vectors.json says a receiver must, in the same order
# as the reference implementation (troubadour/protocol.py), so the error codes match the vectors.
#
# Godot 3/4 neutral GDScript (see compat.gd).

const Compat = preload("compat.gd")
const Msgpack = preload("msgpack.gd")

const VERSION = 1
const REQUEST_TYPES = ["info", "health", "list_profiles", "get_track", "prefetch", "cancel", "subscribe",
	"unsubscribe", "reload_profiles", "ping"]
const REPLY_TYPES = ["info", "health", "profiles", "track", "chunk", "end", "accepted", "progress", "done",
	"cancelled", "subscribed", "unsubscribed", "reloaded", "pong", "event", "error"]
const ERROR_CODES = ["bad_request", "unsupported_version", "unknown_type", "too_large", "invalid_param",
	"empty_prompt", "unknown_context", "profile_error", "busy", "cancelled", "not_found", "engine_error",
	"engine_dead", "model_error", "internal"]
# Requests that may be sent again after a reconnect (PROTOCOL.md section 9).
const IDEMPOTENT = ["info", "health", "list_profiles", "ping", "subscribe", "unsubscribe", "reload_profiles",
	"get_track"]

const MAX_REQUEST_BYTES = 65536
const MAX_REPLY_BODY_BYTES = 1048576
const MAX_CHUNK_BYTES = 1048576
const MAX_TRACK_BYTES = 33554432
const MAX_TYPE_LEN = 32
const MAX_ID_CHARS = 64

var compat
var codec
var header = null          # bytes 54 52 42 01


func _init(shared_compat = null):
	compat = shared_compat
	if compat == null:
		compat = Compat.new()
	codec = Msgpack.new(compat)
	header = compat.bytes_from_array([0x54, 0x52, 0x42, VERSION])


# The request id in `body` if it is valid (int 0..2^63-1 or str of 1-64 characters), else null.
func request_id(body):
	if typeof(body) != compat.T_DICT or not body.has("id"):
		return null
	var rid = body["id"]
	var t = typeof(rid)
	if t == compat.T_INT and rid >= 0:
		return rid
	if t == compat.T_STRING and rid.length() >= 1 and rid.length() <= MAX_ID_CHARS:
		return rid
	return null


# -> {"ok": true, "frames": [header, type, body(, payload)]} or {"ok": false, "code", "message"}.
# Frames exclude the empty delimiter (the DEALER socket adds it).
func encode(msg_type, body, payload = null):
	if not (msg_type in REQUEST_TYPES) and not (msg_type in REPLY_TYPES):
		return _error("internal", "unknown message type '%s'" % msg_type, null, null)
	if typeof(body) != compat.T_DICT:
		return _error("internal", "body must be a Dictionary", null, null)
	var data = codec.encode(body)
	if data == null:
		return _error(codec.error_code, "cannot encode %s: %s" % [msg_type, codec.error_message], null, null)
	var frames = [header, compat.ascii(msg_type), data]
	if payload != null:
		frames.append(payload)
	return {"ok": true, "frames": frames}


# Decode frames (envelope and empty delimiter removed). reply=true: a server message, false: a request.
# -> {"ok": true, "type", "body", "payload" (bytes or null)}
#    or {"ok": false, "code", "message", "field" (str or null), "id" (the request id when readable)}.
func decode(frames, reply):
	if typeof(frames) != compat.T_ARRAY or frames.size() == 0:
		return _error("bad_request", "a message is a non-empty list of frames", null, null)
	var h = frames[0]
	if h.size() >= 4 and h[0] == 0x54 and h[1] == 0x52 and h[2] == 0x42 and h[3] != VERSION:
		return _error("unsupported_version", "protocol version %d is not supported; this client speaks %d"
			% [h[3], VERSION], null, null)
	if h.size() != 4 or h[0] != 0x54 or h[1] != 0x52 or h[2] != 0x42:
		return _error("bad_request", "first frame must be the header 'TRB' 0x01", null, null)
	if frames.size() < 3 or frames.size() > 4:
		return _error("bad_request", "a message has 3 or 4 frames after the envelope, got %d" % frames.size(),
			null, null)
	var tb = frames[1]
	if not _valid_type(tb):
		return _error("bad_request", "message type must be 1-32 characters a-z, 0-9, '_'", null, null)
	var msg_type = tb.get_string_from_ascii()
	var body_bytes = frames[2]
	if not reply:
		var total = 0
		for f in frames:
			total += f.size()
		if total > MAX_REQUEST_BYTES:
			return _error("too_large", "request larger than %d bytes" % MAX_REQUEST_BYTES, null, null)
	elif body_bytes.size() > MAX_REPLY_BODY_BYTES:
		return _error("too_large", "body larger than %d bytes" % MAX_REPLY_BODY_BYTES, null, null)
	var known = REPLY_TYPES if reply else REQUEST_TYPES
	if not (msg_type in known):
		var rid = null
		var probe = codec.decode(body_bytes)
		if probe["ok"]:
			rid = request_id(probe["value"])
		return _error("unknown_type", "unknown message type '%s'" % msg_type, null, rid)
	var r = codec.decode(body_bytes)
	if not r["ok"]:
		return _error(r["code"], r["message"], null, null)
	var body = r["value"]
	if typeof(body) != compat.T_DICT:
		return _error("bad_request", "body must be a msgpack map", null, null)
	var payload = null
	if frames.size() == 4:
		payload = frames[3]
	if reply:
		var err = _check_reply(msg_type, body, payload)
		if err != null:
			return err
	elif payload != null:
		return _error("bad_request", "requests carry no payload frame", null, request_id(body))
	return {"ok": true, "type": msg_type, "body": body, "payload": payload}


# The id of a message decode() refused (frames without the delimiter): {"readable": false} when no id can be
# read at all (body not a msgpack map, id missing or malformed), else {"readable": true, "id": id or null}.
func peek_id(frames):
	if typeof(frames) != compat.T_ARRAY or frames.size() < 3:
		return {"readable": false, "id": null}
	var r = codec.decode(frames[2])
	if not r["ok"] or typeof(r["value"]) != compat.T_DICT or not r["value"].has("id"):
		return {"readable": false, "id": null}
	var rid = request_id(r["value"])
	return {"readable": typeof(r["value"]["id"]) == compat.T_NIL or rid != null, "id": rid}


func _valid_type(tb):
	var n = tb.size()
	if n < 1 or n > MAX_TYPE_LEN:
		return false
	for i in range(n):
		var c = tb[i]
		var lower = c >= 0x61 and c <= 0x7a
		if i == 0 and not lower:
			return false
		if not lower and not (c >= 0x30 and c <= 0x39) and c != 0x5f:
			return false
	return true


func _check_reply(msg_type, body, payload):
	if not body.has("id") or not (body["id"] == null or request_id(body) != null):
		return _error("bad_request", "id must be nil, an int >= 0 or a string of 1-64 characters", "id", null)
	var seq = body.get("seq")
	if typeof(seq) != compat.T_INT or seq < 0:
		return _error("bad_request", "seq must be an int >= 0", "seq", null)
	var final = body.get("final")
	if typeof(final) != compat.T_BOOL:
		return _error("bad_request", "final must be a bool", "final", null)
	var size = -1
	if payload != null:
		size = payload.size()
	if msg_type == "chunk" and size < 0:
		return _error("bad_request", "chunk needs a payload", null, null)
	if msg_type == "chunk" and size > MAX_CHUNK_BYTES:
		return _error("too_large", "chunk payload over %d bytes" % MAX_CHUNK_BYTES, null, null)
	if msg_type == "track" and (size >= 0) != final:
		return _error("bad_request", "track carries a payload exactly when final is true", null, null)
	if msg_type == "track" and size > MAX_TRACK_BYTES:
		return _error("too_large", "track payload over %d bytes" % MAX_TRACK_BYTES, null, null)
	if msg_type != "chunk" and msg_type != "track" and size >= 0:
		return _error("bad_request", "%s carries no payload frame" % msg_type, null, null)
	return null


func _error(code, message, field, rid):
	return {"ok": false, "code": code, "message": message, "field": field, "id": rid}

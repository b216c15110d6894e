# A Troubadour protocol client: one DEALER connection, requests with ids, streamed tracks, events,
# heartbeats, timeouts and reconnection with backoff (protocol/PROTOCOL.md, sections 4, 5, 9).
#
# Polled and callback-free: call poll() every frame; it returns the events that happened as Arrays
# [name, args...], which the TroubadourClient node re-emits as signals of the same name:
#
#   ["connected", info]                     handshake done and `info` checked (protocol_version 1)
#   ["disconnected", reason]                the connection was lost (reconnecting goes on by itself)
#   ["track_header", handle, body]          `track`: format, frames, sample_rate, cached, bpm, loop_*...
#                                           (again, from the start, if the request had to be re-sent)
#   ["chunk", handle, body, payload]        audio bytes (body: offset, frames, bytes)
#   ["track_finished", handle, body]        the last audio arrived and its SHA-256 matched
#   ["progress", handle, body]              prefetch progress (handle -1: a `progress` event)
#   ["track_ready", body]                   event: a context variant is ready (reason hot_swap: fetch it again)
#   ["event", body]                         every event (track_ready, profiles_changed, profiles_error, ...)
#   ["reply", handle, type, body]           any other reply: info, health, profiles, accepted, done,
#                                           cancelled, subscribed, unsubscribed, reloaded, pong
#   ["error", handle, code, message, body]  the request failed (handle -1: not tied to a request).
#                                           Server codes are in PROTOCOL.md section 7 (a code this client
#                                           does not know arrives as internal; body.code keeps it); this client adds
#                                           disconnected, timeout, lost_messages, checksum_mismatch,
#                                           protocol_error, unreachable.
#
# Handles: every request method returns a handle (an int). It equals the wire id of the first send; a
# request re-sent after a reconnect or a lost message keeps its handle while its wire id changes.
#
# Godot 3/4 neutral GDScript (see compat.gd).

const Compat = preload("compat.gd")
const Protocol = preload("protocol.gd")
const Zmtp = preload("zmtp.gd")

const STATE_DISCONNECTED = 0   # not connecting (before connect_to_server or after close)
const STATE_CONNECTING = 1     # socket handshake / waiting for the `info` reply
const STATE_CONNECTED = 2
const STATE_WAITING = 3        # lost: waiting for the backoff delay before the next attempt

const BACKOFF_START_MS = 250
const MAX_RESTARTS = 3         # re-sends of one request after lost messages

var compat
var proto
var host = "127.0.0.1"
var port = 5555
var state = STATE_DISCONNECTED
var server_info = {}           # the last `info` reply body
var heartbeat_ms = 2000        # from info.heartbeat_ms
var connect_timeout_ms = 5000  # socket handshake + `info`, per attempt
var quick_timeout_ms = 0       # timeout of requests answered at once (info, health, ...); 0: 3 x heartbeat
var backoff_max_ms = 8000     # reconnect delays: 250 ms doubling up to this
var log_enabled = false
var pings_sent = 0             # heartbeat pings so far
var fallback_contexts = []     # contexts answered with fallback music (not in the profiles), each warned of once

var _zmtp = null
var _next_id = 1
var _records = {}              # wire id -> request record (open or waiting to be sent)
var _by_handle = {}            # handle -> record
var _events = []
var _attempt_started = 0
var _backoff_ms = BACKOFF_START_MS
var _retry_at = 0
var _last_rx = 0
var _last_ping = 0
var _outage_reported = false
var _sub_events = null         # the events of the active subscription (null: not subscribed)
var _sub_handle = -1
var _event_seq = 0
var _info_wire_id = -1


func _init(shared_compat = null):
	compat = shared_compat
	if compat == null:
		compat = Compat.new()
	proto = Protocol.new(compat)


# ---------------------------------------------------------------- connection
func connect_to_server(server_host = "127.0.0.1", server_port = 5555):
	host = server_host
	port = server_port
	_backoff_ms = BACKOFF_START_MS
	_outage_reported = false
	_open()


func close():
	if _zmtp != null:
		_zmtp.close()
	_zmtp = null
	var was = state
	state = STATE_DISCONNECTED
	_fail_all("disconnected", "the client closed the connection", false)
	if was == STATE_CONNECTED:
		_events.append(["disconnected", "closed"])


func is_server_connected():
	return state == STATE_CONNECTED


# Requests that are sent but not final yet, plus those waiting for a connection.
func open_requests():
	var n = 0
	for wid in _records:
		if not _records[wid]["internal"]:
			n += 1
	return n


# ---------------------------------------------------------------- requests
# Send request `type` with `body` (no id: the client adds it). Queued while not connected.
# timeout_ms: -1 = default (none for get_track and prefetch, 3 x heartbeat for the others), 0 = none.
func request(type, body = {}, timeout_ms = -1):
	var rec = _new_record(type, body, timeout_ms, false)
	if state == STATE_CONNECTED:
		_send_record(rec)
	return rec["handle"]


# get_track for a game context. variant -1: the server's choice. options: any other get_track field
# (format, sample_rate, params, fallback, priority, regenerate, cached_only).
func get_track(context, variant = -1, stream = true, options = {}):
	var body = options.duplicate()
	body["context"] = context
	body["stream"] = stream
	if variant >= 0:
		body["variant"] = variant
	return request("get_track", body)


func get_track_prompt(prompt, stream = true, options = {}):
	var body = options.duplicate()
	body["prompt"] = prompt
	body["stream"] = stream
	return request("get_track", body)


# Prefetch contexts; streamed by default so `progress` and a final `done` reply arrive.
func prefetch(contexts, options = {}):
	var body = options.duplicate()
	body["contexts"] = contexts
	if not body.has("stream"):
		body["stream"] = true
	return request("prefetch", body)


# Subscribe to events (null: all); kept across reconnects.
func subscribe(events = null):
	_sub_events = events
	if _sub_events == null:
		_sub_events = ["track_ready", "profiles_changed", "profiles_error", "progress"]
	var body = {"events": _sub_events}
	_sub_handle = request("subscribe", body)
	return _sub_handle


func unsubscribe():
	_sub_events = null
	_sub_handle = -1
	return request("unsubscribe", {})


# Cancel the request with `handle`. Returns the cancel request's handle, or -1 if the target was not
# open (or had not been sent yet: it is then dropped here with an error `cancelled`).
func cancel(handle):
	if not _by_handle.has(handle):
		return -1
	var rec = _by_handle[handle]
	if not rec["sent"]:
		_forget(rec)
		_events.append(["error", handle, "cancelled", "cancelled before it was sent", {}])
		return -1
	return request("cancel", {"target": rec["wire_id"]})


func info():
	return request("info", {})


func health():
	return request("health", {})


func list_profiles():
	return request("list_profiles", {})


func ping():
	return request("ping", {})


func reload_profiles():
	return request("reload_profiles", {})


# ---------------------------------------------------------------- polling
# Advance the connection; returns the events since the last call (see the top of this file).
func poll():
	var now = compat.ticks_msec()
	if state == STATE_WAITING and now >= _retry_at:
		_open()
	if _zmtp != null:
		_zmtp.poll()
		var closed = _zmtp.state == Zmtp.STATE_CLOSED
		if not closed and state == STATE_CONNECTING and _zmtp.is_open() and _info_wire_id < 0:
			var rec = _new_record("info", {}, 0, true)
			_info_wire_id = rec["wire_id"]
			_send_record(rec)
		var zmtp = _zmtp
		for frames in zmtp.take_messages():   # those that came before a close count too
			_last_rx = now
			_on_frames(frames)
			if _zmtp != zmtp:
				break
		if closed and _zmtp == zmtp:
			_lost(zmtp.error)
	_timers(now)
	var out = _events
	_events = []
	return out


func _timers(now):
	if state == STATE_CONNECTING and now - _attempt_started > connect_timeout_ms:
		_lost("no handshake within %d ms" % connect_timeout_ms)
		return
	if state != STATE_CONNECTED:
		return
	var silent = now - _last_rx
	if silent >= 3 * heartbeat_ms:
		_lost("no message from the server for %d ms" % silent)
		return
	if silent >= heartbeat_ms and now - _last_ping >= heartbeat_ms:
		_last_ping = now
		pings_sent += 1
		_send_record(_new_record("ping", {}, 0, true))
	for wid in _records.keys():
		var rec = _records[wid]
		if rec["sent"] and rec["timeout_ms"] > 0 and now - rec["sent_at"] > rec["timeout_ms"]:
			_forget(rec)
			if not rec["internal"]:
				_events.append(["error", rec["handle"], "timeout", "no reply within %d ms" % rec["timeout_ms"],
					{}])


func _open():
	if _zmtp != null:
		_zmtp.close()
	_zmtp = Zmtp.new(compat)
	_info_wire_id = -1
	_attempt_started = compat.ticks_msec()
	state = STATE_CONNECTING
	_log("connecting to %s:%d" % [host, port])
	_zmtp.open(host, port)


# The connection failed or died: forget the server's state, schedule the next attempt.
func _lost(reason):
	if _zmtp != null:
		_zmtp.close()
	_zmtp = null
	var was = state
	state = STATE_WAITING
	_retry_at = compat.ticks_msec() + _backoff_ms
	_log("connection lost (%s); next attempt in %d ms" % [reason, _backoff_ms])
	_backoff_ms = min(_backoff_ms * 2, backoff_max_ms)
	_fail_all("disconnected", "connection lost: %s" % reason, true)
	if was == STATE_CONNECTED:
		_events.append(["disconnected", reason])
	elif not _outage_reported:
		_events.append(["error", -1, "unreachable", "cannot reach the server at %s:%d: %s" % [host, port, reason],
			{}])
	_outage_reported = true


# After a lost connection (keep_idempotent) or close(): requests not sent yet and idempotent ones wait
# for the next connection, the others fail.
func _fail_all(code, message, keep_idempotent):
	for wid in _records.keys():
		var rec = _records[wid]
		if rec["internal"] or rec["type"] == "subscribe":
			_forget(rec)      # the subscription is renewed from _sub_events on connect
		elif keep_idempotent and not rec["sent"]:
			pass
		elif keep_idempotent and rec["type"] in Protocol.IDEMPOTENT:
			rec["sent"] = false
			rec["seq"] = 0
		else:
			_forget(rec)
			_events.append(["error", rec["handle"], code, message, {}])


func _on_connected(info_body):
	if int(info_body.get("protocol_version", 0)) != Protocol.VERSION:
		_events.append(["error", -1, "protocol_error", "the server speaks protocol %s, this client %d"
			% [str(info_body.get("protocol_version")), Protocol.VERSION], info_body])
		close()
		return
	server_info = info_body
	heartbeat_ms = int(info_body.get("heartbeat_ms", 2000))
	if heartbeat_ms <= 0:
		heartbeat_ms = 2000
	state = STATE_CONNECTED
	_backoff_ms = BACKOFF_START_MS
	_outage_reported = false
	_last_rx = compat.ticks_msec()
	_last_ping = _last_rx
	_log("connected: server %s" % str(info_body.get("server_version")))
	_events.append(["connected", info_body])
	if _sub_events != null and not _by_handle.has(_sub_handle):
		# renew the subscription under the handle of the game's subscribe() (its reply comes again)
		var sub = _new_record("subscribe", {"events": _sub_events}, -1, false)
		_by_handle.erase(sub["handle"])
		sub["handle"] = _sub_handle
		_by_handle[_sub_handle] = sub
	var waiting = []
	for wid in _records:
		if not _records[wid]["sent"]:
			waiting.append(_records[wid])
	for rec in _sorted_by_handle(waiting):
		_send_record(rec)


func _sorted_by_handle(recs):
	var handles = []
	var by = {}
	for rec in recs:
		handles.append(rec["handle"])
		by[rec["handle"]] = rec
	handles.sort()
	var out = []
	for h in handles:
		out.append(by[h])
	return out


# ---------------------------------------------------------------- records
func _new_record(type, body, timeout_ms, internal):
	if timeout_ms < 0:
		timeout_ms = 0
		if type != "get_track" and type != "prefetch":
			timeout_ms = quick_timeout_ms if quick_timeout_ms > 0 else 3 * heartbeat_ms
	var wid = _next_id
	_next_id += 1
	var rec = {"handle": wid, "wire_id": wid, "type": type, "body": body.duplicate(true), "sent": false,
		"sent_at": 0, "seq": 0, "timeout_ms": timeout_ms, "internal": internal, "hash": null,
		"restarts": 0}
	_records[wid] = rec
	_by_handle[rec["handle"]] = rec
	return rec


func _send_record(rec):
	if _zmtp == null or not _zmtp.is_open():
		return
	if rec["sent"] or rec["seq"] != 0:
		# a re-send: the old wire id is dead (or still open on the server: then its messages are ignored)
		_records.erase(rec["wire_id"])
		rec["wire_id"] = _next_id
		_next_id += 1
		_records[rec["wire_id"]] = rec
	var body = rec["body"].duplicate(true)
	body["id"] = rec["wire_id"]
	var enc = proto.encode(rec["type"], body)
	if not enc["ok"]:
		_forget(rec)
		_events.append(["error", rec["handle"], enc["code"], enc["message"], {}])
		return
	var frames = [compat.empty_bytes()]     # the empty delimiter frame, then the message
	for f in enc["frames"]:
		frames.append(f)
	rec["sent"] = true
	rec["sent_at"] = compat.ticks_msec()
	rec["seq"] = 0
	rec["hash"] = null
	if not _zmtp.send(frames):
		rec["sent"] = false
		_lost(_zmtp.error if _zmtp != null else "send failed")


func _forget(rec):
	_records.erase(rec["wire_id"])
	if _by_handle.has(rec["handle"]) and _by_handle[rec["handle"]]["wire_id"] == rec["wire_id"]:
		_by_handle.erase(rec["handle"])


# ---------------------------------------------------------------- incoming
func _on_frames(frames):
	if frames.size() < 1 or frames[0].size() != 0:
		_events.append(["error", -1, "protocol_error", "message without the empty delimiter frame", {}])
		return
	var parts = []
	for i in range(1, frames.size()):
		parts.append(frames[i])
	var m = proto.decode(parts, true)
	if not m["ok"]:
		_on_undecodable(parts, "undecodable message from the server: %s (%s)" % [m["message"], m["code"]])
		return
	var body = m["body"]
	var type = m["type"]
	var rid = body["id"]
	if rid == null:
		if type == "event":
			_on_event(body)
		elif type == "error":
			_events.append(["error", -1, _server_code(body), str(body.get("message", "")), body])
		return
	if not _records.has(rid):
		return    # a request we gave up on (timeout, cancel, re-sent under a new id)
	var rec = _records[rid]
	if body["seq"] != rec["seq"]:
		_on_gap(rec, body["seq"])
		return
	rec["seq"] += 1
	if body["final"]:
		_forget(rec)
	if rec["internal"]:
		if rid == _info_wire_id and type == "info":
			_on_connected(body)
		elif rid == _info_wire_id:
			_lost("the server answered info with %s" % type)
		return
	var h = rec["handle"]
	if type == "error":
		_events.append(["error", h, _server_code(body), str(body.get("message", "")), body])
	elif type == "track":
		_on_track(rec, body, m["payload"])
	elif type == "chunk":
		if rec["hash"] != null and m["payload"].size() > 0:   # HashingContext refuses empty updates
			rec["hash"].update(m["payload"])
		_events.append(["chunk", h, body, m["payload"]])
	elif type == "end":
		var sha = ""
		if rec["hash"] != null:
			sha = rec["hash"].finish().hex_encode()
		if sha != str(body.get("sha256", "")):
			_events.append(["error", h, "checksum_mismatch", "received audio has SHA-256 %s, the server sent %s"
				% [sha, str(body.get("sha256", ""))], body])
		else:
			_events.append(["track_finished", h, body])
	elif type == "progress":
		_events.append(["progress", h, body])
	else:
		if type == "subscribed":
			_event_seq = 0
		_events.append(["reply", h, type, body])


# Unknown codes count as internal (PROTOCOL.md section 7: newer servers may add codes).
func _server_code(body):
	var code = str(body.get("code", "internal"))
	if not (code in Protocol.ERROR_CODES):
		code = "internal"
	return code


func _on_track(rec, body, payload):
	var h = rec["handle"]
	var fb = body.get("fallback")
	var ctx = str(body.get("context", ""))
	if typeof(fb) == compat.T_BOOL and fb and not (ctx in fallback_contexts) and fallback_contexts.size() < 100:
		fallback_contexts.append(ctx)   # at dev time usually a typo in the game: say so where the developer looks
		push_warning("troubadour: context '%s' is not in the server's profiles: playing fallback music " % ctx
			+ "(a typo? the server's log names the closest context)")
	_events.append(["track_header", h, body])
	if payload == null:
		rec["hash"] = compat.sha256_context()
		return
	var sha = compat.sha256_hex(payload)
	if body.has("sha256") and sha != str(body["sha256"]):
		_events.append(["error", h, "checksum_mismatch", "received audio has SHA-256 %s, the server sent %s"
			% [sha, str(body["sha256"])], body])
		return
	var frames = int(body.get("frames", 0))
	_events.append(["chunk", h, {"offset": 0, "frames": frames, "bytes": payload.size()}, payload])
	_events.append(["track_finished", h, {"frames": frames, "bytes": payload.size(), "sha256": sha}])


# A gap in seq: messages were lost. get_track starts over under a new id; other requests fail.
func _on_gap(rec, got):
	var message = "expected seq %d, got %d" % [rec["seq"], got]
	if rec["type"] == "get_track" and rec["restarts"] < MAX_RESTARTS:
		rec["restarts"] += 1
		_zmtp_cancel(rec["wire_id"])
		_send_record(rec)
		return
	_forget(rec)
	if not rec["internal"]:
		_events.append(["error", rec["handle"], "lost_messages", message, {}])


# A message decode() refused: it fails the request its id names; with id nil, nothing. With no readable id it
# may have been any open request's final message: all of them fail rather than wait forever (PROTOCOL.md 4).
func _on_undecodable(parts, why):
	var peek = proto.peek_id(parts)
	var failed = []
	if not peek["readable"]:
		why = "unreadable message from the server, which may have been this request's: " + why
		failed = _sorted_by_handle(_records.values())
	elif peek["id"] != null and _records.has(peek["id"]):
		failed = [_records[peek["id"]]]
	if failed.size() == 0:
		_events.append(["error", -1, "protocol_error", why, {}])
	for rec in failed:
		if rec["internal"] or rec["type"] == "subscribe" or not rec["sent"]:
			continue
		_forget(rec)
		_zmtp_cancel(rec["wire_id"])
		_events.append(["error", rec["handle"], "protocol_error", why, {}])


func _zmtp_cancel(wire_id):
	_send_record(_new_record("cancel", {"target": wire_id}, 0, true))


func _on_event(body):
	var seq = int(body.get("seq", 0))
	if seq != _event_seq:
		_log("events lost: expected seq %d, got %d" % [_event_seq, seq])
	_event_seq = seq + 1
	var name = str(body.get("event", ""))
	if name == "track_ready":
		_events.append(["track_ready", body])
	elif name == "progress":
		_events.append(["progress", -1, body])
	_events.append(["event", body])


func _log(text):
	if log_enabled:
		print("[troubadour] ", text)

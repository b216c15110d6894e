# TroubadourPlayer: plays the music of game contexts from a `troubadour serve` server.
#
#   var music = TroubadourPlayer.new()
#   music.host = "127.0.0.1"; music.port = 5555      # or set `client` to a TroubadourClient you already have
#   add_child(music)
#   music.prefetch(["exploration", "battle", "victory"])   # at level load: generated before they are needed
#   music.play("exploration")
#   ...
#   music.play("battle")        # crossfades at the next bar of the current track (when its bpm is known)
#
# Two decks, each an AudioStreamPlayer with its own AudioStreamGenerator (so each runs at its track's
# sample rate): the next context loads into the idle deck while the current one plays, then the current
# one fades out from a bar line while the new one fades in. Audio is requested as streamed PCM
# (pcm_s16le by default, or pcm_f32le) and starts as soon as start_buffer_sec of it has arrived, even
# while the server is still generating it; if the stream falls behind, silence fills the gap (an
# underrun) until audio arrives. Tracks loop (over [loop_start, loop_end) when the header has them,
# else whole); a track whose header says loop: false plays once (signal track_ended). With
# follow_hot_swaps, a `track_ready` event with reason hot_swap for the context being played (its
# profile changed, or someone regenerated it) loads the new version and crossfades to it.
#
# Written in GDScript that Godot 3.2+ and Godot 4 both run (no annotations), so it is tested headless on
# Godot 3 by clients/godot/tests/run_tests.gd.
extends Node
class_name TroubadourPlayer

const Compat = preload("core/compat.gd")
const ClientScript = preload("client.gd")
const Deck = preload("core/deck.gd")

# context: the game context; header: the `track` message (cached, bpm, sample_rate, frames, track_id...);
# reason: "play", "hot_swap", or "resume" (the heard track's stream was cut short and is fetched again).
signal context_started(context, header, reason)
signal track_ended(context)                           # a track that does not loop played to its end
signal underrun(context)                              # audio ran out while streaming: silence was played
signal track_error(context, code, message)            # the track could not be fetched
signal prefetch_progress(context, variant, done_steps, total_steps)
signal prefetch_finished(summary)                     # the `done` reply: generated, cached, failed

const DECK_IDLE = 0          # (core/deck.gd makes decks idle: 0)
const DECK_LOADING = 1     # requested; receiving audio, not heard yet
const DECK_PLAYING = 2
const DECK_STOPPING = 3    # fading out, then idle
const RESUME_FIRST_MS = 1000   # first retry of a cut-short track; doubles up to 8 s

# Settings.
var client = null            # a TroubadourClient node (set it before play/prefetch); null: the player
                             # makes its own and connects it to host:port
var host = "127.0.0.1"       # default: project setting troubadour/server/host
var port = 5555              # default: project setting troubadour/server/port
var format = "pcm_s16le"     # or "pcm_f32le"
var sample_rate = 0          # 0: the server's native rate; else 32000, 44100 or 48000
var crossfade_sec = 1.5
var sync_to_bar = true       # start crossfades on a bar line of the current track when its bpm is known
var max_bar_wait_sec = 4.0   # ... unless the next bar is further away than this
var buffer_sec = 0.5         # AudioStreamGenerator buffer length
var start_buffer_sec = 0.25  # audio that must have arrived before a track starts
var underrun_pad_sec = 0.05  # silence queued while waiting for audio
var volume_db = 0.0
var bus = "Master"
var follow_hot_swaps = true

# State, read-only for games.
var current_context = ""     # the context heard (or about to be heard) now
var current_header = {}      # its track header: header["cached"] tells cache (true) or live generation
var last_transition = {}     # {"context", "reason", "fade_at", "frames_per_bar", "delay_ms"}
var underruns = 0

var compat = null
var decks = []
var _active = -1             # deck heard now (or fading in)
var _pending = -1            # deck loading the next track
var _resume_at = -1          # ms: fetch the heard context again (its stream was cut short)
var _resume_delay_ms = RESUME_FIRST_MS
var _prefetch_handle = -1
var _own_client = false
var _listening = false


func _init():
	compat = Compat.new()
	for i in range(2):
		var p = AudioStreamPlayer.new()
		add_child(p)
		decks.append(Deck.create(p, i))
	if ProjectSettings.has_setting("troubadour/server/host"):
		host = str(ProjectSettings.get_setting("troubadour/server/host"))
	if ProjectSettings.has_setting("troubadour/server/port"):
		port = int(ProjectSettings.get_setting("troubadour/server/port"))


func _ready():
	_ensure_client()


# The client, made (and connected to host:port) on first use unless the game set `client` before.
func _ensure_client():
	if _listening:
		return
	if client == null:
		client = ClientScript.new()
		client.host = host
		client.port = port
		_own_client = true
		add_child(client)
		client.connect_to_server(host, port)
	_listening = true
	client.add_listener(self)
	if follow_hot_swaps:
		# subscribing replaces the client's event set: keep what the game subscribed to
		var events = client.core._sub_events
		if events == null:
			client.subscribe(["track_ready"])
		elif not ("track_ready" in events):
			var more = events.duplicate()
			more.append("track_ready")
			client.subscribe(more)


func _exit_tree():
	if client != null and is_instance_valid(client):
		client.remove_listener(self)
	_listening = false


func _process(_delta):
	poll()


# ---------------------------------------------------------------- API
# Play `context` (variant -1: the server's choice). Nothing happens if it is already playing.
func play(context, variant = -1):
	_ensure_client()
	if context == current_context and _pending < 0 and _resume_at < 0:
		return                 # heard now, or set to start at the next bar
	if _pending >= 0 and decks[_pending]["context"] == context and decks[_pending]["reason"] == "play":
		return                 # on its way
	_unschedule()
	if context == current_context and _resume_at < 0 and _active >= 0 and decks[_active]["state"] == DECK_PLAYING:
		# back to the track heard now (A -> B -> A before B started): drop B, A plays on
		if _pending >= 0 and decks[_pending]["context"] != context:
			_cancel_pending()
		return
	_load(context, variant, "play")


# Fade out and stop.
func stop(fade_sec = -1.0):
	if fade_sec < 0:
		fade_sec = crossfade_sec
	_cancel_pending()
	_resume_at = -1
	for d in decks:
		if d["state"] == DECK_PLAYING:
			Deck.fade(d, 0.0, fade_sec, d["played"])
			d["state"] = DECK_STOPPING
		elif d["state"] == DECK_LOADING:
			_reset_deck(d)             # scheduled to start: not any more
	_active = -1
	current_context = ""
	current_header = {}


# Ask the server to generate these contexts now (all variants), so playing them later is instant.
func prefetch(contexts):
	_ensure_client()
	_prefetch_handle = client.prefetch(contexts, {"variants": "all"})
	return _prefetch_handle


# A summary for HUDs and tests.
func stats():
	var out = {"context": current_context, "cached": current_header.get("cached", false), "decks": [],
		"underruns": underruns}
	for d in decks:
		out["decks"].append({"state": d["state"], "context": d["context"], "gain": d["gain"],
			"played": d["played"], "received": d["received"], "total": d["total"], "peak": d["peak"]})
	return out


# ---------------------------------------------------------------- client events
func _on_troubadour_event(ev):
	var kind = ev[0]
	var mine = _prefetch_handle >= 0 and ev.size() > 1 and typeof(ev[1]) == compat.T_INT and ev[1] == _prefetch_handle
	if kind == "track_header" or kind == "chunk" or kind == "track_finished" or kind == "error":
		var d = _deck_for(ev[1])
		if d == null:
			if kind == "error" and mine:
				_prefetch_handle = -1
				emit_signal("prefetch_finished", {"generated": 0, "cached": 0,
					"failed": [{"error": {"code": ev[2], "message": ev[3]}}]})
			return
		if kind == "track_header":
			Deck.set_header(compat, d, ev[2])
		elif kind == "chunk":
			Deck.add_chunk(d, ev[2], ev[3])
		elif kind == "track_finished":
			d["complete"] = true
		else:
			_on_error(d, ev[2], ev[3])
	elif kind == "progress" and mine:
		var b = ev[2]
		emit_signal("prefetch_progress", str(b.get("context", "")), int(b.get("variant", 0)),
			int(b.get("done_steps", 0)), int(b.get("total_steps", 0)))
	elif kind == "reply" and mine and ev[2] == "done":
		_prefetch_handle = -1
		emit_signal("prefetch_finished", ev[3])
	elif kind == "track_ready" and follow_hot_swaps:
		var b = ev[1]
		var same = str(b.get("context", "")) == current_context and current_context != ""
		var v = int(b.get("variant", -1))
		if str(b.get("reason", "")) == "hot_swap" and same and v == int(current_header.get("variant", -2)):
			_load(current_context, v, "hot_swap")


func _deck_for(handle):
	if handle < 0:
		return null
	for d in decks:
		if d["handle"] == handle and d["state"] != DECK_IDLE:
			return d
	return null


func _on_error(d, code, message):
	var ctx = d["context"]
	if d["state"] == DECK_LOADING:
		var scheduled = _active == d["index"]   # its crossfade was set up: the heard deck is fading out
		if d["reason"] == "resume":
			_schedule_resume()         # the cut-short track still plays: try again later
		_reset_deck(d)
		if _pending == d["index"]:
			_pending = -1
		if scheduled:
			_restore_outgoing()
	elif d["state"] == DECK_PLAYING and not d["complete"]:
		# Cut short: play what arrived, looping it when the track loops (its loop points were for the whole
		# track) rather than falling silent, and fetch the context again.
		d["complete"] = true
		d["total"] = d["received"]
		if d["loop_end"] > d["received"]:
			d["loop_start"] = 0
			d["loop_end"] = d["received"]
		if _active == d["index"] and code != "cancelled":
			_schedule_resume()
	emit_signal("track_error", ctx, code, message)


# The track set to replace the heard one failed before it started: the deck fading out comes back.
func _restore_outgoing():
	_active = -1
	current_context = ""
	current_header = {}
	for d in decks:
		if d["state"] == DECK_STOPPING and not d["done"]:
			d["state"] = DECK_PLAYING
			Deck.fade(d, 1.0, min(0.25, crossfade_sec), d["played"])
			_active = d["index"]
			current_context = d["context"]
			current_header = d["header"]
			return


func _schedule_resume():
	_resume_at = compat.ticks_msec() + _resume_delay_ms
	_resume_delay_ms = int(min(_resume_delay_ms * 2, 8000))


# ---------------------------------------------------------------- decks
func _reset_deck(d):
	if d["state"] != DECK_IDLE and d["handle"] >= 0 and not d["complete"]:
		client.cancel(d["handle"])       # still streaming: stop the delivery
	if d["player"].playing:
		d["player"].stop()
	var p = d["player"]
	var fresh = Deck.create(p, d["index"])
	for k in fresh.keys():
		d[k] = fresh[k]


func _cancel_pending():
	if _pending >= 0:
		var d = decks[_pending]
		if d["state"] == DECK_LOADING:
			_reset_deck(d)
		_pending = -1


func _load(context, variant, reason):
	_cancel_pending()
	_unschedule()
	_resume_at = -1
	var idx = 0
	if _active == 0:
		idx = 1
	var d = decks[idx]
	_reset_deck(d)          # cuts a deck that was still fading out
	var options = {"format": format}
	if sample_rate > 0:
		options["sample_rate"] = sample_rate
	d["state"] = DECK_LOADING
	d["context"] = context
	d["variant"] = variant
	d["reason"] = reason
	d["format"] = format
	d["handle"] = client.get_track(context, variant, true, options)
	_pending = idx


# A track set to start at the next bar of the heard one but not started yet is dropped, and the heard one stays
# (loading another into the deck fading out cut that one dead, and the scheduled one still started: two
# tracks looped on top of each other).
func _unschedule():
	if _active >= 0 and decks[_active]["state"] == DECK_LOADING and decks[_active]["start_at"] >= 0:
		_reset_deck(decks[_active])
		_restore_outgoing()


func poll():
	var now = compat.ticks_msec()
	if _resume_at >= 0 and now >= _resume_at and _pending < 0 and current_context != "":
		_load(current_context, int(current_header.get("variant", -1)), "resume")
	if _pending >= 0:
		var d = decks[_pending]
		if d["state"] == DECK_LOADING and d["header"] != null and d["start_at"] < 0:
			var need = int(min(d["total"], start_buffer_sec * d["sr"]))
			if d["complete"] or d["received"] >= need:
				_transition(d, now)
	for d in decks:
		if d["state"] == DECK_LOADING and d["start_at"] >= 0 and now >= d["start_at"]:
			_start(d)
		if d["state"] == DECK_PLAYING or d["state"] == DECK_STOPPING:
			_fill(d)


# The pending deck `incoming` has enough audio: schedule it, and the fade-out of the deck heard now.
func _transition(incoming, now):
	var out = null
	if _active >= 0 and decks[_active]["state"] == DECK_PLAYING:
		out = decks[_active]
	var delay_ms = 0
	var info = {"context": incoming["context"], "reason": incoming["reason"], "fade_at": -1,
		"frames_per_bar": 0, "delay_ms": 0}
	var fade = crossfade_sec
	if out == null:
		fade = min(0.05, crossfade_sec)   # first track: a click-free start
	else:
		var sr = out["sr"]
		var queued = out["capacity"] - out["playback"].get_frames_available()
		var written = out["played"]
		var fade_at = written
		var fpb = Deck.frames_per_bar(out)
		if sync_to_bar and fpb > 0:
			var bar = int(ceil(float(written) / fpb))
			var at = int(round(bar * fpb))
			if at - written <= max_bar_wait_sec * sr:
				fade_at = at
				info["frames_per_bar"] = fpb
		Deck.fade(out, 0.0, crossfade_sec, fade_at)
		out["state"] = DECK_STOPPING
		delay_ms = int(1000.0 * (fade_at - (written - queued)) / sr)
		info["fade_at"] = fade_at
	info["delay_ms"] = delay_ms
	last_transition = info
	incoming["start_at"] = now + delay_ms
	incoming["gain"] = 0.0
	Deck.fade(incoming, 1.0, fade, 0)
	_active = incoming["index"]
	_pending = -1
	current_context = incoming["context"]
	current_header = incoming["header"]


func _start(d):
	var gen = AudioStreamGenerator.new()
	gen.mix_rate = d["sr"]
	gen.buffer_length = buffer_sec
	d["player"].stream = gen
	d["player"].volume_db = volume_db
	d["player"].bus = bus
	d["player"].play()
	d["playback"] = d["player"].get_stream_playback()
	d["capacity"] = d["playback"].get_frames_available()
	d["state"] = DECK_PLAYING
	_resume_delay_ms = RESUME_FIRST_MS
	emit_signal("context_started", d["context"], d["header"], d["reason"])


func _fill(d):
	var pb = d["playback"]
	if pb == null:
		return
	var avail = pb.get_frames_available()
	var queued = d["capacity"] - avail
	if d["done"]:
		# faded out, or played to its end: let the generator play what it holds, then free the deck
		if queued <= 0:
			_finish(d)
		return
	if avail <= 0:
		return
	var pad_to = int(underrun_pad_sec * d["sr"])
	var made = Deck.render(compat, d, avail, d["state"] == DECK_STOPPING)
	var out = made[0]
	var n = made[1]
	var starved = made[2]
	if starved and not d["done"]:
		# underrun: keep a little silence queued so the stream stays clocked, and wait for audio
		var pad = pad_to - (queued + n)
		if pad > 0:
			if not d["underrun"]:
				underruns += 1
				emit_signal("underrun", d["context"])
			d["underrun"] = true
			var m = int(min(pad, avail - n))
			for j in range(m):
				out[n + j] = Vector2(0, 0)
			n += m
			d["played"] += m
	else:
		d["underrun"] = false
	if n > 0:
		if n < avail:
			out.resize(n)
		pb.push_buffer(out)
	if d["done"] and queued + n <= 0:
		_finish(d)


# A deck that faded out, or whose track ended, has been heard to the end.
func _finish(d):
	var ended = d["state"] == DECK_PLAYING
	var ctx = d["context"]
	var was_active = _active == d["index"]
	_reset_deck(d)
	if ended and was_active:
		_active = -1
		current_context = ""
		current_header = {}
	if ended:
		emit_signal("track_ended", ctx)

# One deck of TroubadourPlayer (player.gd): a Dictionary holding a track's header, its PCM chunks as they
# arrive, the play cursor, loop region and gain ramp; these functions fill and read it. The player decides
# which deck plays what and when, and speaks to the game through signals.
#
# No `extends` line (see compat.gd): static functions only.

const Pcm = preload("pcm.gd")


# A deck of the player (state 0: idle, the player's DECK_IDLE); decks are compared by "index" (Godot 4
# compares Dictionaries by content).
static func create(player, index):
	return {"index": index, "player": player, "playback": null, "state": 0, "handle": -1, "context": "",
		"variant": -1, "reason": "", "format": "pcm_s16le", "header": null, "sr": 32000, "channels": 1, "total": 0, "received": 0,
		"complete": false, "chunks": [], "chunk_index": 0, "cursor": 0, "played": 0, "loop_start": -1,
		"loop_end": -1, "gain": 0.0, "gain_step": 0.0, "gain_target": 0.0, "fade_at": -1, "start_at": -1,
		"capacity": 0, "peak": 0.0, "underrun": false, "done": false}


# The `track` header arrived (again, from the start, when the client had to re-send the request).
static func set_header(compat, d, header):
	d["header"] = header
	d["sr"] = int(header.get("sample_rate", 32000))
	d["channels"] = int(header.get("channels", 1))
	d["total"] = int(header.get("frames", 0))
	d["received"] = 0
	d["chunks"] = []
	d["chunk_index"] = 0
	d["complete"] = false
	# Loop [loop_start, loop_end) when the server gives them; else the whole track, unless the header
	# says loop: false (a profile with loop = false, e.g. a victory jingle): that plays once.
	d["loop_start"] = int(header.get("loop_start", 0))
	d["loop_end"] = int(header.get("loop_end", d["total"]))
	if not header.has("loop_end") and typeof(header.get("loop")) == compat.T_BOOL and not header["loop"]:
		d["loop_end"] = -1
	if d["loop_end"] <= d["loop_start"] or d["loop_end"] > d["total"] or d["loop_start"] < 0:
		d["loop_start"] = -1
		d["loop_end"] = -1


# A `chunk` of PCM: kept as bytes, decoded as it is played (core/pcm.gd).
static func add_chunk(d, body, payload):
	if d["header"] == null:
		return
	var n = int(body.get("frames", 0))
	var offset = int(body.get("offset", 0))
	n = int(min(n, Pcm.frame_count(payload.size(), d["channels"], d["format"] == "pcm_f32le")))
	if offset != d["received"] or n <= 0:
		return
	d["chunks"].append([offset, Pcm.reader(payload), n])
	d["received"] = offset + n


# Frames of one bar of the deck's track at its rate; 0 when its bpm is not known.
static func frames_per_bar(d):
	var h = d["header"]
	var bpm = float(h.get("bpm", 0.0))
	if bpm <= 0.0:
		return 0.0
	var beats = 4.0
	var meter = str(h.get("meter", "4/4")).split("/")
	if meter.size() == 2 and int(meter[0]) > 0 and int(meter[1]) > 0:
		beats = int(meter[0]) * 4.0 / int(meter[1])
	return d["sr"] * 60.0 / bpm * beats


# Ramp the gain of `d` to `target` over `sec`, starting at its played frame `at`.
static func fade(d, target, sec, at):
	var frames = max(1.0, sec * d["sr"])
	d["gain_target"] = target
	d["gain_step"] = (target - d["gain"]) / frames
	d["fade_at"] = at


# Up to `avail` frames of the deck from its cursor, looping over [loop_start, loop_end) and ramping its gain:
# [frames, how many, starved (the audio that arrived ran out)]. `stopping`: the deck fades out, done at 0.
static func render(compat, d, avail, stopping):
	var out = compat.vector2_array(avail)
	var n = 0
	var peak = d["peak"]
	var starved = false
	while n < avail and not d["done"]:
		var cursor = d["cursor"]
		if d["loop_end"] > 0 and cursor >= d["loop_end"] and d["received"] >= d["loop_end"]:
			cursor = d["loop_start"]
			d["cursor"] = cursor
			d["chunk_index"] = 0
		if cursor >= d["total"] and d["total"] > 0 and d["complete"]:
			d["done"] = true      # a track that does not loop has ended
			break
		if cursor >= d["received"]:
			starved = true
			break
		# copy a run of frames from the chunk holding `cursor`
		var ci = d["chunk_index"]
		var chunks = d["chunks"]
		while ci < chunks.size() - 1 and chunks[ci + 1][0] <= cursor:
			ci += 1
		while ci > 0 and chunks[ci][0] > cursor:
			ci -= 1
		d["chunk_index"] = ci
		var c = chunks[ci]
		var i = cursor - c[0]
		var run = int(min(c[2] - i, avail - n))
		if d["loop_end"] > 0 and cursor < d["loop_end"]:
			run = int(min(run, d["loop_end"] - cursor))
		if run <= 0:
			break
		var data = Pcm.frames(compat, c[1], i, run, d["channels"], d["format"] == "pcm_f32le")
		var gain = d["gain"]
		var step = d["gain_step"]
		var target = d["gain_target"]
		var fade_at = d["fade_at"]
		var played = d["played"]
		var k = 0
		while k < run:
			if played >= fade_at and step != 0.0:
				gain += step
				if (step > 0.0 and gain >= target) or (step < 0.0 and gain <= target):
					gain = target
					step = 0.0
			if stopping and step == 0.0 and gain <= 0.0 and played >= fade_at:
				d["done"] = true  # the fade-out is complete
				break
			var v = data[k] * gain
			out[n] = v
			n += 1
			played += 1
			k += 1
			if abs(v.x) > peak:
				peak = abs(v.x)
		d["gain"] = gain
		d["gain_step"] = step
		d["played"] = played
		d["cursor"] = cursor + k
	d["peak"] = peak
	return [out, n, starved]

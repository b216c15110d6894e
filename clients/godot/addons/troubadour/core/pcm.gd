# PCM payloads of `chunk` messages -> Vector2 frames (left, right; mono duplicated, channels past two
# dropped), for AudioStreamGeneratorPlayback.push_buffer(). The player keeps each chunk as bytes and decodes
# only the frames it is about to play: decoding a cached track's 1 MiB chunks as they arrived held the game's
# frame for about 100 ms each (GDScript reads one sample per loop step).
#
# No `extends` line (see compat.gd): static functions only.


# A reader over one payload: little-endian, shared with the payload (no copy).
static func reader(payload):
	var buf = StreamPeerBuffer.new()
	buf.data_array = payload
	buf.big_endian = false
	return buf


# Frames first .. first + n - 1 of `buf` (a reader) as an array of `compat.vector2_array` type.
static func frames(compat, buf, first, n, channels, f32):
	var size = 2
	if f32:
		size = 4
	var extra = (channels - 2) * size
	buf.seek(first * channels * size)
	var out = compat.vector2_array(n)
	for i in range(n):
		var l = 0.0
		var r = 0.0
		if f32:
			l = buf.get_float()
			r = l
			if channels > 1:
				r = buf.get_float()
		else:
			l = buf.get_16() / 32768.0
			r = l
			if channels > 1:
				r = buf.get_16() / 32768.0
		if extra > 0:
			buf.seek(buf.get_position() + extra)
		out[i] = Vector2(l, r)
	return out


# Whole frames a payload of `size` bytes holds.
static func frame_count(size, channels, f32):
	var bpf = 2 * channels
	if f32:
		bpf = 4 * channels
	return int(size / bpf)

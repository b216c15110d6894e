# Godot 3 / Godot 4 shims for the Troubadour protocol core.
#
# Every script under core/ is written in the subset of GDScript that both Godot 3.2+ and Godot 4 parse
# and run: no annotations or `export`, no typed arrays, no `await`/`yield`, no lambdas, no names of
# built-in types whose spelling changed (PoolByteArray / PackedByteArray, ...). What differs between the
# two engines goes through this object, which checks the engine version once and calls the right method
# on untyped values (both engines resolve such calls at run time).
#
# No `extends` line: the script inherits Reference (Godot 3) / RefCounted (Godot 4), both reference counted.

var major = 3
var minor = 0

# typeof() codes, taken from live values because the TYPE_* names and numbers differ between 3 and 4.
var T_NIL = 0
var T_BOOL = 1
var T_INT = 2
var T_FLOAT = 3
var T_STRING = 4
var T_STRING_NAME = -1   # Godot 4 only (node names, &"x" literals); never matches on Godot 3
var T_DICT = -1
var T_ARRAY = -1
var T_BYTES = -1
var T_LISTS = []         # packed string / int / float arrays: sent as msgpack arrays, like Array

var _clock = null        # OS (Godot 3) or Time (Godot 4): get_ticks_msec()


func _init():
	var v = Engine.get_version_info()
	major = int(v["major"])
	minor = int(v["minor"])
	T_NIL = typeof(null)
	T_BOOL = typeof(true)
	T_INT = typeof(1)
	T_FLOAT = typeof(1.5)
	T_STRING = typeof("")
	T_DICT = typeof({})
	T_ARRAY = typeof([])
	T_BYTES = typeof(empty_bytes())
	# "a,b".split(",") is a PoolStringArray / PackedStringArray (e.g. an exported list of context names). Int
	# arrays have no live value both engines make, so the numeric codes follow the byte array's: Godot 3
	# int 21 after bytes 20 (floats: split_floats), Godot 4 int32, int64, float32, float64 = 30..33 after 29.
	T_LISTS = [typeof("a".split(","))]
	if major >= 4:
		for k in range(1, 5):
			T_LISTS.append(T_BYTES + k)
	else:
		T_LISTS.append(T_BYTES + 1)
		T_LISTS.append(typeof("1".split_floats(",")))
	if major >= 4:
		T_STRING_NAME = 21   # Variant.Type.TYPE_STRING_NAME in Godot 4
		_clock = Engine.get_singleton("Time")
	else:
		_clock = Engine.get_singleton("OS")


func is_godot4():
	return major >= 4


func ticks_msec():
	return _clock.get_ticks_msec()


# ---------------------------------------------------------------- byte arrays
# An empty PoolByteArray (3) / PackedByteArray (4), without naming either type.
func empty_bytes():
	return StreamPeerBuffer.new().data_array


func bytes_from_array(values):
	var out = empty_bytes()
	out.resize(values.size())
	for i in range(values.size()):
		out[i] = values[i]
	return out


# Bytes [from, to) of `b` (Godot 3 subarray() includes its end, Godot 4 slice() does not).
func slice(b, from, to):
	if to > b.size():
		to = b.size()
	if to <= from:
		return empty_bytes()
	if major >= 4:
		return b.slice(from, to)
	return b.subarray(from, to - 1)


func utf8(s):
	if major >= 4:
		return s.to_utf8_buffer()
	return s.to_utf8()


func ascii(s):
	if major >= 4:
		return s.to_ascii_buffer()
	return s.to_ascii()


func string_from_utf8(b):
	return b.get_string_from_utf8()


func hex_to_bytes(hex):
	var digits = "0123456789abcdef"
	var h = hex.to_lower()
	var out = empty_bytes()
	out.resize(h.length() / 2)
	for i in range(out.size()):
		var hi = digits.find(h.substr(2 * i, 1))
		var lo = digits.find(h.substr(2 * i + 1, 1))
		if hi < 0 or lo < 0:
			return null
		out[i] = hi * 16 + lo
	return out


func sha256_context():
	var ctx = HashingContext.new()
	ctx.start(HashingContext.HASH_SHA256)
	return ctx


func sha256_hex(b):
	var ctx = sha256_context()
	if b.size() > 0:
		ctx.update(b)
	return ctx.finish().hex_encode()


# An empty PoolVector2Array (3) / PackedVector2Array (4) of `size` zero frames, for
# AudioStreamGeneratorPlayback.push_buffer(); an empty Curve2D bakes to an empty array of that type.
func vector2_array(size):
	var out = Curve2D.new().get_baked_points()
	out.resize(size)
	return out


# ---------------------------------------------------------------- networking
# Godot 4's StreamPeerTCP only updates its status in poll(); Godot 3's has no poll() and updates itself.
func tcp_poll(tcp):
	if major >= 4:
		tcp.poll()


# ---------------------------------------------------------------- math
func db_to_gain(db):
	return pow(10.0, db / 20.0)

# The msgpack subset of the Troubadour protocol (protocol/PROTOCOL.md, section 3), with its limits.
#
# Decodes nil, bool, every int encoding (int64 range; a uint64 above 2^63-1 is refused), float32 and
# float64, str (strict UTF-8), bin, array and map with str keys; refuses ext types (timestamps too).
# Encodes in the shortest forms with map keys sorted by UTF-8 bytes and floats as float64, so encoding a
# decoded test vector gives its bytes back.
#
# Godot 3/4 neutral GDScript (see compat.gd). Godot values: nil = null, bool, int, float, String
# (StringName is accepted when encoding), PoolByteArray/PackedByteArray = bin, Array, Dictionary.

const Compat = preload("compat.gd")

const MAX_STR = 16384      # str and bin, bytes
const MAX_ARRAY = 4096
const MAX_MAP = 256
const MAX_DEPTH = 16       # the top-level map is depth 1

var compat
var error_code = ""        # "", "bad_request" or "too_large" after the last call
var error_message = ""

var _b = null
var _n = 0
var _pos = 0
var _num = null            # StreamPeerBuffer used to convert float bytes


func _init(shared_compat = null):
	compat = shared_compat
	if compat == null:
		compat = Compat.new()
	_num = StreamPeerBuffer.new()
	_num.big_endian = true


# ---------------------------------------------------------------- decoding
# -> {"ok": true, "value": v} or {"ok": false, "code": "bad_request"|"too_large", "message": str}
func decode(bytes):
	_b = bytes
	_n = bytes.size()
	_pos = 0
	error_code = ""
	error_message = ""
	var value = _read(1)
	if error_code == "" and _pos != _n:
		_fail("bad_request", "%d bytes after the msgpack value" % (_n - _pos))
	_b = null
	if error_code != "":
		return {"ok": false, "code": error_code, "message": error_message}
	return {"ok": true, "value": value}


func _fail(code, message):
	if error_code == "":
		error_code = code
		error_message = message
	return null


func _need(count):
	if _pos + count > _n:
		_fail("bad_request", "msgpack data is truncated")
		return false
	return true


# Big-endian unsigned int of `count` bytes (8 bytes wrap to negative above 2^63-1), or -1 if truncated.
func _uint(count):
	if not _need(count):
		return -1
	var v = 0
	for i in range(count):
		v = (v << 8) | _b[_pos + i]
	_pos += count
	return v


func _sint(count):
	if not _need(count):
		return null
	var v = _uint(count)
	if count == 1 and v >= 0x80:
		v -= 0x100
	elif count == 2 and v >= 0x8000:
		v -= 0x10000
	elif count == 4 and v >= 0x80000000:
		v -= 0x100000000
	return v


func _float(count):
	if not _need(count):
		return null
	_num.data_array = compat.slice(_b, _pos, _pos + count)
	_pos += count
	if count == 4:
		return _num.get_float()
	return _num.get_double()


func _read(depth):
	if not _need(1):
		return null
	var t = _b[_pos]
	_pos += 1
	if t <= 0x7f:
		return t
	if t >= 0xe0:
		return t - 0x100
	if t <= 0x8f:
		return _map(t & 0x0f, depth)
	if t <= 0x9f:
		return _array(t & 0x0f, depth)
	if t <= 0xbf:
		return _str(t & 0x1f)
	if t == 0xc0:
		return null
	if t == 0xc2:
		return false
	if t == 0xc3:
		return true
	if t >= 0xc4 and t <= 0xc6:
		return _bin(_uint(1 << (t - 0xc4)))
	if t == 0xca:
		return _float(4)
	if t == 0xcb:
		return _float(8)
	if t >= 0xcc and t <= 0xce:
		var u = _uint(1 << (t - 0xcc))
		if u < 0:
			return null
		return u
	if t == 0xcf:
		if not _need(8):
			return null
		var u64 = _uint(8)
		if u64 < 0:
			return _fail("bad_request", "uint64 above the int64 range")
		return u64
	if t >= 0xd0 and t <= 0xd3:
		return _sint(1 << (t - 0xd0))
	if t >= 0xd9 and t <= 0xdb:
		return _str(_uint(1 << (t - 0xd9)))
	if t == 0xdc or t == 0xdd:
		return _array(_uint(2 if t == 0xdc else 4), depth)
	if t == 0xde or t == 0xdf:
		return _map(_uint(2 if t == 0xde else 4), depth)
	if (t >= 0xc7 and t <= 0xc9) or (t >= 0xd4 and t <= 0xd8):
		return _fail("bad_request", "msgpack ext types are not allowed (type byte 0x%x)" % t)
	return _fail("bad_request", "invalid msgpack type byte 0x%x" % t)


func _str(size):
	if size < 0:
		return null
	if size > MAX_STR:
		return _fail("too_large", "string longer than %d bytes" % MAX_STR)
	if not _need(size):
		return null
	if not _valid_utf8(_pos, _pos + size):
		return _fail("bad_request", "string is not valid UTF-8")
	var s = ""
	if size > 0:
		s = compat.string_from_utf8(compat.slice(_b, _pos, _pos + size))
	_pos += size
	return s


func _bin(size):
	if size < 0:
		return null
	if size > MAX_STR:
		return _fail("too_large", "bin longer than %d bytes" % MAX_STR)
	if not _need(size):
		return null
	var out = compat.slice(_b, _pos, _pos + size)
	_pos += size
	return out


func _array(count, depth):
	if count < 0:
		return null
	if depth > MAX_DEPTH:
		return _fail("too_large", "nesting deeper than %d levels" % MAX_DEPTH)
	if count > MAX_ARRAY:
		return _fail("too_large", "array with more than %d items" % MAX_ARRAY)
	var out = []
	for i in range(count):
		var item = _read(depth + 1)
		if error_code != "":
			return null
		out.append(item)
	return out


func _map(count, depth):
	if count < 0:
		return null
	if depth > MAX_DEPTH:
		return _fail("too_large", "nesting deeper than %d levels" % MAX_DEPTH)
	if count > MAX_MAP:
		return _fail("too_large", "map with more than %d entries" % MAX_MAP)
	var out = {}
	for i in range(count):
		var key = _read(depth + 1)
		if error_code != "":
			return null
		if typeof(key) != compat.T_STRING:
			return _fail("bad_request", "map keys must be strings")
		var value = _read(depth + 1)
		if error_code != "":
			return null
		out[key] = value
	return out


# Strict UTF-8 (no overlong forms, no surrogates, nothing above U+10FFFF), like Python's decoder.
func _valid_utf8(start, end):
	var i = start
	while i < end:
		var c = _b[i]
		i += 1
		if c < 0x80:
			continue
		var more = 0
		var lo = 0x80
		var hi = 0xbf
		if c >= 0xc2 and c <= 0xdf:
			more = 1
		elif c == 0xe0:
			more = 2
			lo = 0xa0
		elif c == 0xed:
			more = 2
			hi = 0x9f
		elif c >= 0xe1 and c <= 0xef:
			more = 2
		elif c == 0xf0:
			more = 3
			lo = 0x90
		elif c == 0xf4:
			more = 3
			hi = 0x8f
		elif c >= 0xf1 and c <= 0xf3:
			more = 3
		else:
			return false
		if i + more > end:
			return false
		var first = _b[i]
		if first < lo or first > hi:
			return false
		for k in range(1, more):
			var cont = _b[i + k]
			if cont < 0x80 or cont > 0xbf:
				return false
		i += more
	return true


# ---------------------------------------------------------------- encoding
# -> the bytes, or null with error_code / error_message set.
func encode(value):
	error_code = ""
	error_message = ""
	var out = StreamPeerBuffer.new()
	out.big_endian = true
	_write(out, value, 1)
	if error_code != "":
		return null
	return out.data_array


func _write(out, v, depth):
	var t = typeof(v)
	if t == compat.T_NIL:
		out.put_u8(0xc0)
	elif t == compat.T_BOOL:
		out.put_u8(0xc3 if v else 0xc2)
	elif t == compat.T_INT:
		_write_int(out, v)
	elif t == compat.T_FLOAT:
		out.put_u8(0xcb)
		out.put_double(v)
	elif t == compat.T_STRING or t == compat.T_STRING_NAME:
		var s = compat.utf8(str(v))
		if s.size() > MAX_STR:
			_fail("too_large", "string longer than %d bytes" % MAX_STR)
			return
		_write_head(out, s.size(), 0xa0, 31, 0xd9, true)
		out.put_data(s)
	elif t == compat.T_BYTES:
		if v.size() > MAX_STR:
			_fail("too_large", "bin longer than %d bytes" % MAX_STR)
			return
		_write_head(out, v.size(), -1, -1, 0xc4, true)
		out.put_data(v)
	elif t == compat.T_ARRAY or t in compat.T_LISTS:
		if depth > MAX_DEPTH:
			_fail("too_large", "nesting deeper than %d levels" % MAX_DEPTH)
			return
		if v.size() > MAX_ARRAY:
			_fail("too_large", "array with more than %d items" % MAX_ARRAY)
			return
		_write_head(out, v.size(), 0x90, 15, 0xdc, false)
		for item in v:
			_write(out, item, depth + 1)
	elif t == compat.T_DICT:
		if depth > MAX_DEPTH:
			_fail("too_large", "nesting deeper than %d levels" % MAX_DEPTH)
			return
		if v.size() > MAX_MAP:
			_fail("too_large", "map with more than %d entries" % MAX_MAP)
			return
		# Sort keys by their UTF-8 bytes: the hex of the bytes sorts the same way as plain strings.
		var by_hex = {}
		var order = []
		for key in v.keys():
			var kt = typeof(key)
			if kt != compat.T_STRING and kt != compat.T_STRING_NAME:
				_fail("bad_request", "map keys must be strings")
				return
			var hex = compat.utf8(str(key)).hex_encode()
			by_hex[hex] = key
			order.append(hex)
		order.sort()
		_write_head(out, order.size(), 0x80, 15, 0xde, false)
		for hex in order:
			var key = by_hex[hex]
			_write(out, str(key), depth + 1)
			_write(out, v[key], depth + 1)
	else:
		_fail("bad_request", "value of Variant type %d is not in the protocol's msgpack subset" % t)


# Length prefix: the fix form (fix_base | n, up to fix_max; fix_base < 0: none), else the 8-bit form
# `first` (str d9, bin c4; has8 false for arrays and maps, which have none), then the 16- and 32-bit forms.
func _write_head(out, n, fix_base, fix_max, first, has8):
	if fix_base >= 0 and n <= fix_max:
		out.put_u8(fix_base | n)
		return
	if not has8:
		first -= 1
	if has8 and n <= 0xff:
		out.put_u8(first)
		out.put_u8(n)
	elif n <= 0xffff:
		out.put_u8(first + 1)
		out.put_u16(n)
	else:
		out.put_u8(first + 2)
		out.put_u32(n)


func _write_int(out, v):
	if v >= 0:
		if v <= 0x7f:
			out.put_u8(v)
		elif v <= 0xff:
			out.put_u8(0xcc)
			out.put_u8(v)
		elif v <= 0xffff:
			out.put_u8(0xcd)
			out.put_u16(v)
		elif v <= 0xffffffff:
			out.put_u8(0xce)
			out.put_u32(v)
		else:
			out.put_u8(0xcf)
			out.put_u64(v)
	else:
		if v >= -32:
			out.put_8(v)
		elif v >= -0x80:
			out.put_u8(0xd0)
			out.put_8(v)
		elif v >= -0x8000:
			out.put_u8(0xd1)
			out.put_16(v)
		elif v >= -0x80000000:
			out.put_u8(0xd2)
			out.put_32(v)
		else:
			out.put_u8(0xd3)
			out.put_64(v)

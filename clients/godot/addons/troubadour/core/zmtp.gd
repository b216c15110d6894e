# A ZeroMQ DEALER socket over StreamPeerTCP: ZMTP 3.0 with the NULL security mechanism (rfc.zeromq.org
# 23/ZMTP), enough to talk to the server's ROUTER. Polled: call poll() often (every frame), then
# take_messages(). No threads.
#
#   greeting (64 bytes each way): FF, 8 zero bytes, 7F | version 3, 0 | "NULL" padded to 20 bytes |
#                                 as-server 0 | 31 zero bytes
#   then each side sends a READY command with the property Socket-Type (we: DEALER; server: ROUTER)
#   frames: flags (MORE 1, LONG 2, COMMAND 4), size (1 byte, or 8 bytes big-endian with LONG), bytes
#
# A multipart message is an Array of byte arrays (PoolByteArray / PackedByteArray).
# Godot 3/4 neutral GDScript (see compat.gd).

const Compat = preload("compat.gd")

const STATE_CLOSED = 0
const STATE_CONNECTING = 1     # TCP connect under way
const STATE_GREETING = 2       # our greeting sent, waiting for the server's
const STATE_HANDSHAKE = 3      # our READY sent, waiting for the server's
const STATE_OPEN = 4           # messages flow

const FLAG_MORE = 1
const FLAG_LONG = 2
const FLAG_COMMAND = 4
const MAX_FRAME_BYTES = 36 * 1024 * 1024   # above the protocol's largest message (32 MiB track payload)
const MAX_READ_PER_POLL = 8 * 1024 * 1024  # keep one poll() short when a lot of audio is waiting

var compat
var state = STATE_CLOSED
var error = ""                 # why the socket closed ("" while it is fine)
var peer_socket_type = ""
var tcp = null

var _rx = null                 # received bytes not parsed yet, from _rx_pos on
var _rx_pos = 0
var _parts = []                # frames of the message being received
var _inbox = []                # complete messages
var _eof = false               # the peer closed; what it sent before is parsed first


func _init(shared_compat = null):
	compat = shared_compat
	if compat == null:
		compat = Compat.new()
	_rx = compat.empty_bytes()


# Start connecting (host: an IP address or a name; the server binds 127.0.0.1 by default).
func open(host, port):
	close()
	error = ""
	_eof = false
	tcp = StreamPeerTCP.new()
	var err = tcp.connect_to_host(host, port)
	if err != OK:
		_fail("cannot connect to %s:%d (error %d)" % [host, port, err])
		return false
	state = STATE_CONNECTING
	return true


func close():
	if tcp != null:
		tcp.disconnect_from_host()
	tcp = null
	state = STATE_CLOSED
	_rx = compat.empty_bytes()
	_rx_pos = 0
	_parts = []
	_inbox = []


func is_open():
	return state == STATE_OPEN


# Complete multipart messages received so far (each an Array of frames); empties the inbox.
func take_messages():
	var out = _inbox
	_inbox = []
	return out


# Send one multipart message; false if the socket is not open (or the send failed: it is closed then).
func send(frames):
	if state != STATE_OPEN:
		return false
	var out = StreamPeerBuffer.new()
	out.big_endian = true
	for i in range(frames.size()):
		var f = frames[i]
		var flags = 0
		if i < frames.size() - 1:
			flags = FLAG_MORE
		_put_frame(out, flags, f)
	return _write(out.data_array)


func poll():
	if state == STATE_CLOSED:
		return
	compat.tcp_poll(tcp)
	var status = tcp.get_status()
	if state == STATE_CONNECTING:
		if status == StreamPeerTCP.STATUS_CONNECTING:
			return
		if status != StreamPeerTCP.STATUS_CONNECTED:
			_fail("connection refused")
			return
		tcp.set_no_delay(true)
		state = STATE_GREETING
		if not _write(_greeting()):
			return
	if status != StreamPeerTCP.STATUS_CONNECTED:
		_fail("connection closed")
		return
	if not _receive():
		return
	_handshake_and_parse()
	if _eof:   # after the messages that arrived with it: a final reply sent just before closing still counts
		_fail("connection closed by the server")


func _handshake_and_parse():
	if state == STATE_GREETING:
		if _rx.size() - _rx_pos >= 1 and _rx[_rx_pos] != 0xff:
			_fail("the peer is not a ZeroMQ socket")
			return
		if _rx.size() - _rx_pos < 64:
			return
		var g = compat.slice(_rx, _rx_pos, _rx_pos + 64)
		_rx_pos += 64
		if (g[9] & 1) != 1 or g[10] < 3:
			_fail("the peer does not speak ZMTP 3 (version byte %d)" % g[10])
			return
		var mech = compat.slice(g, 12, 32)
		if mech.hex_encode() != _mechanism_null().hex_encode():
			_fail("the peer wants a security mechanism other than NULL")
			return
		state = STATE_HANDSHAKE
		if not _write(_ready_command()):
			return
	_parse()


# ---------------------------------------------------------------- internals
func _fail(reason):
	if error == "":
		error = reason
	if tcp != null:
		tcp.disconnect_from_host()
	tcp = null
	state = STATE_CLOSED


func _write(bytes):
	var err = tcp.put_data(bytes)
	if err != OK:
		_fail("send failed (error %d)" % err)
		return false
	return true


# Read what the socket has. get_partial_data() is non-blocking; it fails once the peer has closed (_eof).
func _receive():
	var got = 0
	while got < MAX_READ_PER_POLL:
		var avail = tcp.get_available_bytes()
		var want = avail
		if want <= 0:
			want = 1          # probe: returns no data while the connection is idle, an error after EOF
		if want > 1048576:
			want = 1048576
		var r = tcp.get_partial_data(want)
		var data = r[1]
		if r[0] != OK:
			_eof = true
			if data.size() > 0:
				_rx.append_array(data)
			break
		if data.size() == 0:
			break
		_rx.append_array(data)
		got += data.size()
	return true


func _parse():
	while state != STATE_CLOSED:
		var left = _rx.size() - _rx_pos
		if left < 2:
			break
		var flags = _rx[_rx_pos]
		var size = 0
		var head = 2
		if (flags & FLAG_LONG) != 0:
			if left < 9:
				break
			head = 9
			for i in range(8):
				size = (size << 8) | _rx[_rx_pos + 1 + i]
			if size < 0 or size > MAX_FRAME_BYTES:
				_fail("frame of %d bytes is too large" % size)
				return
		else:
			size = _rx[_rx_pos + 1]
		if left < head + size:
			break
		var frame = compat.slice(_rx, _rx_pos + head, _rx_pos + head + size)
		_rx_pos += head + size
		if (flags & FLAG_COMMAND) != 0:
			_command(frame)
		elif state != STATE_OPEN:
			_fail("message frame before the handshake finished")
		else:
			_parts.append(frame)
			if (flags & FLAG_MORE) == 0:
				_inbox.append(_parts)
				_parts = []
	if state == STATE_CLOSED:
		return
	# Drop what has been parsed (copies only the unparsed tail: at most one partial frame).
	if _rx_pos > 0:
		_rx = compat.slice(_rx, _rx_pos, _rx.size())
		_rx_pos = 0


func _command(frame):
	if frame.size() < 1 or frame.size() < 1 + frame[0]:
		_fail("malformed command")
		return
	var name = compat.slice(frame, 1, 1 + frame[0]).get_string_from_ascii()
	var props = _properties(compat.slice(frame, 1 + frame[0], frame.size()))
	if name == "READY":
		if state != STATE_HANDSHAKE:
			_fail("unexpected READY")
			return
		peer_socket_type = props.get("Socket-Type", "")
		if peer_socket_type != "ROUTER" and peer_socket_type != "DEALER":
			_fail("the peer is a %s socket, not ROUTER" % peer_socket_type)
			return
		state = STATE_OPEN
	elif name == "ERROR":
		var reason = ""
		if frame.size() > 1 + frame[0]:
			var n = frame[1 + frame[0]]
			reason = compat.slice(frame, 2 + frame[0], 2 + frame[0] + n).get_string_from_ascii()
		_fail("the server refused the handshake: %s" % reason)
	elif name == "PING":
		# ZMTP 3.1 heartbeat (only if the peer chose to send it): answer PONG with the ping's context.
		var ctx = compat.empty_bytes()
		if frame.size() > 7:
			ctx = compat.slice(frame, 7, frame.size())
		var body = StreamPeerBuffer.new()
		body.big_endian = true
		body.put_u8(4)
		body.put_data(compat.ascii("PONG"))
		body.put_data(ctx)
		var out = StreamPeerBuffer.new()
		out.big_endian = true
		_put_frame(out, FLAG_COMMAND, body.data_array)
		_write(out.data_array)
	# other commands (PONG, SUBSCRIBE, ...) are ignored


# READY metadata: name length (1 byte), name, value length (4 bytes big-endian), value; repeated.
func _properties(b):
	var out = {}
	var i = 0
	while i < b.size():
		var n = b[i]
		if i + 1 + n + 4 > b.size():
			break
		var key = compat.slice(b, i + 1, i + 1 + n).get_string_from_ascii()
		i += 1 + n
		var vlen = (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]
		i += 4
		if i + vlen > b.size():
			break
		out[key] = compat.slice(b, i, i + vlen).get_string_from_ascii()
		i += vlen
	return out


func _put_frame(out, flags, bytes):
	var n = bytes.size()
	if n > 255:
		out.put_u8(flags | FLAG_LONG)
		out.put_u64(n)
	else:
		out.put_u8(flags)
		out.put_u8(n)
	if n > 0:
		out.put_data(bytes)


func _mechanism_null():
	var m = compat.empty_bytes()
	m.resize(20)
	for i in range(20):
		m[i] = 0
	m[0] = 0x4e   # N
	m[1] = 0x55   # U
	m[2] = 0x4c   # L
	m[3] = 0x4c   # L
	return m


func _greeting():
	var g = compat.empty_bytes()
	g.resize(64)
	for i in range(64):
		g[i] = 0
	g[0] = 0xff
	g[9] = 0x7f
	g[10] = 3      # version major
	g[11] = 0      # version minor: 3.0 (no ZMTP 3.1 heartbeat commands needed)
	var m = _mechanism_null()
	for i in range(20):
		g[12 + i] = m[i]
	g[32] = 0      # as-server: we are the client
	return g


func _ready_command():
	var body = StreamPeerBuffer.new()
	body.big_endian = true
	body.put_u8(5)
	body.put_data(compat.ascii("READY"))
	body.put_u8(11)
	body.put_data(compat.ascii("Socket-Type"))
	body.put_u32(6)
	body.put_data(compat.ascii("DEALER"))
	var out = StreamPeerBuffer.new()
	out.big_endian = true
	_put_frame(out, FLAG_COMMAND, body.data_array)
	return out.data_array

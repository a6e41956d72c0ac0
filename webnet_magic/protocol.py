"""The wire format between broker and workers, as pure functions on bytes.

Nothing here touches a socket (the "sans-I/O" design of python-websockets): the
broker, the native worker and the tests all feed bytes in and get messages out,
and ``js/protocol.js`` implements the same layout for the browser worker.  Every
constant both sides share (version, frame kinds, close codes, size caps, dtypes,
the fields of each message) comes from one file, ``protocol.json``, which this
module reads and the broker serves to the page; ``tests/golden_frames`` holds
frames that both sides must decode, encode and refuse alike.

A *message* is a type, a small JSON object of fields, and zero or more arrays.
Array bytes never go through JSON: they travel raw, little-endian, after the
header.  A message is split into WebSocket frames of at most ``chunk_size``
payload bytes, so a 1 GB array is many few-MB frames rather than one giant
message (Python WebSocket servers slow down 5-10x on single 64 MB messages).

Frame layout (all integers little-endian)::

    HEAD  b"WN" | u8 version | u8 kind=0 | u32 message id | u32 json length | json | payload part
    DATA  b"WN" | u8 version | u8 kind=1 | u32 message id | payload part

The JSON names the message ``type``, its ``fields`` and an ``arrays`` list of
``{"dtype", "shape"}``; the payload is those arrays' bytes back to back.  The
receiver knows the payload length from the header alone, so it can refuse an
oversized message before any of its data arrives.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._assets import static_dir

#: The protocol's one definition, shared with the browser worker (``js/protocol.json``).
SPEC: Mapping[str, Any] = json.loads((static_dir() / "protocol.json").read_text("utf-8"))

VERSION: int = SPEC["version"]
MAGIC: bytes = SPEC["magic"].encode("ascii")
HEAD: int = SPEC["frameKinds"]["HEAD"]
DATA: int = SPEC["frameKinds"]["DATA"]
DEFAULT_CHUNK: int = SPEC["defaultChunk"]
#: The largest chunk either side may send; a receiver accepts frames up to MAX_FRAME bytes.
MAX_CHUNK: int = SPEC["maxChunk"]
MAX_HEAD_JSON: int = SPEC["maxHeadJson"]
MAX_FRAME: int = SPEC["maxFrame"]
#: The most payload one message (and one array) may carry; larger work is split before it is sent.
MAX_MESSAGE_BYTES: int = SPEC["maxMessageBytes"]
#: The most dimensions an array may have (numpy 1's own limit).
MAX_RANK: int = SPEC["maxRank"]
MAX_PENDING: int = SPEC["maxPending"]

#: WebSocket close codes both workers act on (their meanings are in the spec's comment).
CLOSE_GOING_AWAY: int = SPEC["close"]["GOING_AWAY"]  # the broker stopped: do not reconnect
CLOSE_PROTOCOL: int = SPEC["close"]["PROTOCOL"]  # a malformed frame or message
CLOSE_BAD_TOKEN: int = SPEC["close"]["BAD_TOKEN"]  # wrong or missing session token: tell the user
CLOSE_SILENT: int = SPEC["close"]["SILENT"]  # heartbeats stopped; the closer expects a reconnect
CLOSE_TRY_LATER: int = SPEC["close"]["TRY_LATER"]  # too many connections: reconnect later

_PREFIX = struct.Struct("<2sBBI")  # magic, version, kind, message id
_JSON_LEN = struct.Struct("<I")

#: dtypes that cross the wire: what WGSL can hold (f32, i32, u32, f16) plus raw bytes.
WIRE_DTYPES: Mapping[str, np.dtype] = {name: np.dtype(name).newbyteorder("<") for name in SPEC["dtypes"]}

_JSON_TYPES: Mapping[str, type | tuple[type, ...]] = {
    "string": str,
    "boolean": bool,
    "number": (int, float),
    "object": dict,
    "array": list,
}

#: Fields each message type must carry, with their JSON types.  Extra fields are allowed
#: (newer peers may add some); missing or mistyped ones are a protocol error.
SCHEMA: Mapping[str, Mapping[str, type | tuple[type, ...]]] = {
    type_: {name: _JSON_TYPES[kind] for name, kind in fields.items()} for type_, fields in SPEC["messages"].items()
}


class ProtocolError(ValueError):
    """A peer sent bytes that do not follow this protocol; the connection should be closed."""


@dataclass(frozen=True)
class Message:
    """One protocol message: its type, JSON-able fields, and raw arrays."""

    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    arrays: Sequence[np.ndarray] = ()

    def __post_init__(self) -> None:
        validate_fields(self.type, self.fields)


def validate_fields(type_: str, fields: Mapping[str, Any]) -> None:
    """Check a message's fields against :data:`SCHEMA`, naming the first problem."""
    try:
        schema = SCHEMA[type_]
    except KeyError:
        raise ProtocolError(f"unknown message type {json.dumps(type_)[:60]}") from None
    for name, kind in schema.items():
        if name not in fields:
            raise ProtocolError(f"{type_!r} message is missing field {name!r}")
        value = fields[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ProtocolError(f"{type_!r} message field {name!r} has the wrong type")


def array_spec(dtype: Any, shape: Any) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape of an array as a peer described it, checked before anything is allocated.

    A shape is at most :data:`MAX_RANK` integers, each in ``[0, MAX_MESSAGE_BYTES]``, and the array at
    most :data:`MAX_MESSAGE_BYTES` bytes: so ``[0, 2**62]`` or 70 dimensions are refused here, with a
    reason, rather than failing later in numpy.  JSON has one kind of number, so ``2.0`` is the
    dimension 2, as JavaScript reads it too.
    """
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise ProtocolError(f"dtype {json.dumps(dtype)[:40]} cannot cross the wire (allowed: {sorted(WIRE_DTYPES)})")
    if not isinstance(shape, list | tuple) or not all(_is_dimension(d) for d in shape):
        text = json.dumps(shape, separators=(",", ":"), default=repr)[:100]
        raise ProtocolError(f"array shape {text} is not a list of non-negative integers")
    if len(shape) > MAX_RANK:
        raise ProtocolError(f"array shape has {len(shape)} dimensions; at most {MAX_RANK} are allowed")
    if any(d > MAX_MESSAGE_BYTES for d in shape):
        raise ProtocolError(f"array shape has a dimension over {MAX_MESSAGE_BYTES}")
    dims = tuple(int(d) for d in shape)
    text = json.dumps(dims, separators=(",", ":"))
    if math.prod(dims) * WIRE_DTYPES[dtype].itemsize > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"a {dtype} array of shape {text} holds more than {MAX_MESSAGE_BYTES} bytes")
    return WIRE_DTYPES[dtype], dims


def array_nbytes(dtype: Any, shape: Any) -> int:
    """Bytes of an array of ``dtype`` and ``shape`` as described by a peer (checked by :func:`array_spec`)."""
    wire_dtype, dims = array_spec(dtype, shape)
    return math.prod(dims) * wire_dtype.itemsize


def _is_dimension(d: Any) -> bool:
    """A JSON number that is a whole number, or too large for a double (JavaScript's Infinity), >= 0."""
    if isinstance(d, bool) or not isinstance(d, int | float):
        return False
    return d >= 0 and (isinstance(d, int) or d.is_integer() or d == math.inf)


def _json_integer(text: str) -> int | float:
    """An integer Python's ``int()`` will not read (over 4300 digits) as JavaScript reads it: infinite."""
    value = float(text)
    return int(text) if math.isfinite(value) else value


def _json_constant(text: str) -> float:
    raise ValueError(f"{text} is not JSON")


def _parse_header(data: bytes) -> Any:
    """The header's JSON as the page's JSON.parse reads it: strict UTF-8 (no byte-order mark, no
    UTF-16, which Python's own json.loads would take), no NaN or Infinity, and no integer refused for
    its length (read a second time, with :func:`_json_integer`, only when the first reading fails)."""
    text = data.decode("utf-8")
    try:
        return json.loads(text, parse_constant=_json_constant)
    except ValueError:
        return json.loads(text, parse_int=_json_integer, parse_constant=_json_constant)


def _wire_array(a: np.ndarray) -> np.ndarray:
    """The array as C-contiguous little-endian bytes of a wire dtype (no copy when it already is)."""
    name = a.dtype.name
    if name not in WIRE_DTYPES:
        raise ProtocolError(f"dtype {name!r} cannot cross the wire (allowed: {sorted(WIRE_DTYPES)})")
    return np.asarray(a, dtype=WIRE_DTYPES[name], order="C")


def encode(message: Message, message_id: int, chunk_size: int = DEFAULT_CHUNK) -> Iterator[bytes]:
    """Frames that carry ``message``, made one at a time as they are sent; send them in order.

    The header is checked here, at once; each frame is then built with a single copy of
    its share of the array bytes, so a large message never exists twice in memory.
    """
    return (b"".join(parts) for parts in encode_parts(message, message_id, chunk_size))


#: One frame as the pieces it is made of: its prefix (bytes), then views of the array bytes it carries.
Parts = list[bytes | memoryview]


def encode_parts(
    message: Message, message_id: int, chunk_size: int = DEFAULT_CHUNK, head_alone: bool = False
) -> Iterator[Parts]:
    """The frames of :func:`encode`, each as its pieces, joined by nobody: a sender that can
    write pieces (a socket's buffer, a WebSocket frame it builds itself) copies no array bytes.

    ``head_alone`` sends the head frame without payload, so that the receiver knows what is
    coming, and how many bytes, before they arrive (a worker warms its GPU meanwhile).
    """
    if not 0 < chunk_size <= MAX_CHUNK:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK}")
    arrays = [_wire_array(a) for a in message.arrays]
    for a in arrays:
        array_spec(a.dtype.name, list(a.shape))
    head = {
        "type": message.type,
        "fields": dict(message.fields),
        "arrays": [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in arrays],
    }
    head_json = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()
    if len(head_json) > MAX_HEAD_JSON:
        raise ProtocolError(f"message header of {len(head_json)} bytes is over the {MAX_HEAD_JSON}-byte limit")
    head_prefix = _PREFIX.pack(MAGIC, VERSION, HEAD, message_id) + _JSON_LEN.pack(len(head_json)) + head_json
    data_prefix = _PREFIX.pack(MAGIC, VERSION, DATA, message_id)
    views = [a.data.cast("B") for a in arrays if a.nbytes]
    return _frames(head_prefix, data_prefix, views, chunk_size, head_alone)


def _frames(head: bytes, data: bytes, views: list[memoryview], chunk_size: int, head_alone: bool) -> Iterator[Parts]:
    remaining = sum(len(v) for v in views)
    pieces = iter(views)
    piece, at = next(pieces, memoryview(b"")), 0
    prefix = head
    if head_alone and remaining:
        yield [head]
        prefix = data
    while True:
        size = min(chunk_size, remaining)
        parts: Parts = [prefix]
        wanted = size
        while wanted:  # views of the next `size` payload bytes, across array boundaries
            take = min(wanted, len(piece) - at)
            parts.append(piece[at : at + take])
            wanted, at = wanted - take, at + take
            if at == len(piece):
                piece, at = next(pieces, memoryview(b"")), 0
        yield parts
        remaining -= size
        if not remaining:
            return
        prefix = data


@dataclass
class _Partial:
    type: str
    fields: dict[str, Any]
    specs: list[tuple[np.dtype, tuple[int, ...]]]
    payload: np.ndarray  # uint8, left unset until the frames fill it (a bytearray would zero it first)
    filled: int = 0


#: How many payload bytes a message of this type and these fields may carry.
Budget = Callable[[str, Mapping[str, Any]], int]


class Assembler:
    """Turns incoming frames back into messages, one connection's worth.

    Frames of different messages may interleave; each message's own frames must
    arrive in order (a WebSocket guarantees that).  Every size a peer declares is
    checked against ``budget`` before memory is set aside for it: a receiver that
    knows what it asked for (the broker knows each job's outputs) allows exactly that.
    """

    def __init__(self, budget: Budget | None = None, max_pending: int = MAX_PENDING) -> None:
        self.budget: Budget = budget or (lambda type_, fields: MAX_MESSAGE_BYTES)
        self.max_pending = max_pending
        self._pending: dict[int, _Partial] = {}

    @property
    def pending(self) -> int:
        """Messages whose head has arrived but not all of their data."""
        return len(self._pending)

    def arriving(self, type_: str) -> int:
        """Bytes still to come of the messages of ``type_`` whose head has arrived (a worker warms its
        GPU as a job's data comes in)."""
        return sum(len(p.payload) - p.filled for p in self._pending.values() if p.type == type_)

    def feed(self, frame: bytes | bytearray | memoryview) -> Message | None:
        """Take one frame; return the message it completes, if any."""
        frame = memoryview(frame).cast("B")
        if len(frame) < _PREFIX.size:
            raise ProtocolError(f"frame of {len(frame)} bytes is shorter than the {_PREFIX.size}-byte prefix")
        if len(frame) > MAX_FRAME:
            raise ProtocolError(f"frame of {len(frame)} bytes is over the {MAX_FRAME}-byte limit")
        magic, version, kind, message_id = _PREFIX.unpack_from(frame)
        if magic != MAGIC:
            raise ProtocolError(f"frame does not start with {SPEC['magic']!r}; is this a webnet peer?")
        if version != VERSION:
            raise ProtocolError(f"protocol version {version}, this side speaks {VERSION}; upgrade webnet_magic")
        body = frame[_PREFIX.size :]
        if kind == HEAD:
            partial, data = self._start(message_id, body)
        elif kind == DATA:
            try:
                partial = self._pending[message_id]
            except KeyError:
                raise ProtocolError(f"data frame for unknown message {message_id}") from None
            data = body
        else:
            raise ProtocolError(f"unknown frame kind {kind}")
        end = partial.filled + len(data)
        if end > len(partial.payload):
            raise ProtocolError(
                f"message {message_id} carries more than the {len(partial.payload)} bytes its header declared"
            )
        partial.payload[partial.filled : end] = data
        partial.filled = end
        if end < len(partial.payload):
            return None
        self._pending.pop(message_id, None)
        return Message(partial.type, partial.fields, _split(partial.payload, partial.specs))

    def _start(self, message_id: int, body: memoryview) -> tuple[_Partial, memoryview]:
        if message_id in self._pending:
            raise ProtocolError(f"message {message_id} started twice")
        if len(self._pending) >= self.max_pending:
            raise ProtocolError(f"more than {self.max_pending} messages in flight at once")
        if len(body) < _JSON_LEN.size:
            raise ProtocolError("head frame is too short to hold its header length")
        (json_len,) = _JSON_LEN.unpack_from(body)
        if json_len > MAX_HEAD_JSON:
            raise ProtocolError(f"message header of {json_len} bytes is over the {MAX_HEAD_JSON}-byte limit")
        if _JSON_LEN.size + json_len > len(body):
            raise ProtocolError(f"head frame declares a {json_len}-byte header it does not hold")
        try:
            head = _parse_header(bytes(body[_JSON_LEN.size : _JSON_LEN.size + json_len]))
        except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, NaN, deep nesting
            raise ProtocolError(f"message header is not valid JSON: {str(exc)[:200]}") from None
        if not isinstance(head, dict) or not isinstance(head.get("type"), str):
            raise ProtocolError("message header must be an object with a string 'type'")
        fields, arrays = head.get("fields", {}), head.get("arrays", [])
        if not isinstance(fields, dict) or not isinstance(arrays, list):
            raise ProtocolError("message header 'fields' must be an object and 'arrays' a list")
        validate_fields(head["type"], fields)
        specs = []
        for spec in arrays:
            if not isinstance(spec, dict):
                raise ProtocolError("each entry of 'arrays' must be an object")
            specs.append(array_spec(spec.get("dtype"), spec.get("shape")))
        total = sum(math.prod(shape) * dtype.itemsize for dtype, shape in specs)
        allowed = self.budget(head["type"], fields)
        if total > allowed:
            raise ProtocolError(f"{head['type']!r} message of {total} bytes; at most {allowed} were expected")
        partial = _Partial(head["type"], fields, specs, np.empty(total, np.uint8))
        self._pending[message_id] = partial
        return partial, body[_JSON_LEN.size + json_len :]


def _split(payload: np.ndarray, specs: list[tuple[np.dtype, tuple[int, ...]]]) -> list[np.ndarray]:
    """Views of the assembled payload as the declared arrays (no copies)."""
    arrays, offset = [], 0
    for dtype, shape in specs:
        count = math.prod(shape)
        arrays.append(np.frombuffer(payload, dtype, count, offset).reshape(shape))
        offset += count * dtype.itemsize
    return arrays

"""A hostile worker that holds the token: a WebSocket written by hand, and a seeded fuzzer of frames.

:class:`Wire` speaks WebSocket over a plain socket, so that any frame can go out: fragmented, as
text, with reserved bits, or with a header that lies about its length.  After each fuzzed frame it
sends a WebSocket ping and reads until the pong (the broker read the frame and kept the
connection) or a close (it refused it): each frame's outcome is known without a timer.

:class:`Fuzzer` makes the frames from a seed: random bytes, and the golden frames and this
protocol's own messages mutated (bits flipped, cut short, length fields that lie, shapes and
dtypes no array has, unknown types, text where binary belongs, fragments, oversize claims).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from webnet_magic.protocol import DATA, HEAD, MAGIC, MAX_FRAME, MAX_HEAD_JSON, VERSION, Assembler, Message, encode

from .golden import CASES

DEADLINE = 60.0  # seconds: a fail-safe for each read, far above what one should take

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA

#: What a frame may do to a broker that reads it: a webnet message is read and kept or refused with a
#: protocol close; a frame over the size cap is refused with 1009 before it is read; a frame that
#: breaks WebSocket itself ends the connection there (tornado drops it without a close frame).
MESSAGE, TOO_BIG, BROKEN = "message", "too big", "broken WebSocket"


@dataclass
class Shot:
    """One fuzzed frame as it goes out: the WebSocket frames that carry it (several when fragmented),
    or raw bytes for a WebSocket header that lies; ``what`` names how it was made."""

    what: str
    frames: list[tuple[int, bytes, bool]] = field(default_factory=list)  # opcode, payload, final
    raw: bytes = b""
    expect: str = MESSAGE


@dataclass
class Outcome:
    """What the broker did with a shot: kept the connection (``code`` None, ``open``), closed it with
    ``code``, or dropped it without a close frame (``code`` None, not ``open``)."""

    open: bool
    code: int | None = None
    reason: str = ""


class Wire:
    """A worker's WebSocket to ``/ws?token=...``, one frame at a time, and what the broker sent on it."""

    def __init__(self, port: int, token: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a frame and its ping go out at once
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.reader = self.sock.makefile("rb")
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = self.reader.readline()
            assert line, f"the broker closed the handshake: {head!r}"
            head += line
        assert head.startswith(b"HTTP/1.1 101"), head
        self.assembler = Assembler()
        self.messages: list[Message] = []  # from the broker, in order
        self.frames_out = 0  # WebSocket frames written
        self._pings = 0

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    # -- writing --------------------------------------------------------------------------

    def write(self, opcode: int, payload: bytes, final: bool = True, rsv: int = 0) -> None:
        """One masked frame, as a browser sends it."""
        n, mask = len(payload), os.urandom(4)
        if n < 126:
            head = struct.pack("!BB", (0x80 if final else 0) | rsv << 4 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", (0x80 if final else 0) | rsv << 4 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", (0x80 if final else 0) | rsv << 4 | opcode, 0x80 | 127, n)
        keys = (mask * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(keys, "little")).to_bytes(n, "little")
        self.sock.sendall(head + mask + masked)
        self.frames_out += 1

    def send(self, message: Message, message_id: int = 1) -> None:
        for frame in encode(message, message_id):
            self.write(BINARY, frame)

    def shoot(self, shot: Shot) -> Outcome:
        """Send ``shot``; what the broker made of it (see :class:`Outcome`)."""
        try:
            if shot.raw:
                self.sock.sendall(shot.raw)
                self.frames_out += 1
            for opcode, payload, final in shot.frames:
                self.write(opcode, payload, final)
        except (BrokenPipeError, ConnectionResetError):
            return self.ended()  # the broker hung up as it read an earlier frame of the shot
        if shot.expect != MESSAGE:
            return self.ended()  # nothing may follow a frame that ends the connection, or it would be reset
        return self.sync()

    def sync(self) -> Outcome:
        """A WebSocket ping, and the frames up to its pong: the broker has read all that came before."""
        self._pings += 1
        token = str(self._pings).encode()
        try:
            self.write(PING, token)
        except (BrokenPipeError, ConnectionResetError):
            return self.ended()
        return self.read_until(lambda opcode, payload: opcode == PONG and payload == token)

    def ended(self) -> Outcome:
        return self.read_until(lambda opcode, payload: False)

    def read_until(self, done: Callable[[int, bytes], bool]) -> Outcome:
        """Read frames (keeping the broker's messages) until ``done`` says so, a close, or the end."""
        while True:
            try:
                head = self.reader.read(2)
                if len(head) < 2:
                    return Outcome(False)
                opcode, n = head[0] & 0x0F, head[1] & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", self.reader.read(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", self.reader.read(8))
                payload = self.reader.read(n)
            except (ConnectionResetError, struct.error):
                return Outcome(False)
            if len(payload) < n:
                return Outcome(False)
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.write(CLOSE, payload[:2])  # the answer, as a worker closes
                return Outcome(False, code, payload[2:].decode("utf-8", "replace"))
            if opcode == BINARY:
                message = self.assembler.feed(payload)
                if message is not None:
                    self.messages.append(message)
            if done(opcode, payload):
                return Outcome(True)

    def next_message(self, type_: str) -> Message:
        """Read until the broker has sent a message of ``type_`` (and return it)."""
        seen = len(self.messages)

        def arrived(opcode: int, payload: bytes) -> bool:
            return any(m.type == type_ for m in self.messages[seen:])

        outcome = self.read_until(arrived)
        assert outcome.open, f"the broker closed the connection ({outcome}) before sending a {type_!r}"
        return next(m for m in self.messages[seen:] if m.type == type_)


# -- the fuzzer ---------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def head_frame(head: dict[str, Any] | bytes, payload: bytes = b"", message_id: int = 1, json_len: int | None = None,
               kind: int = HEAD, version: int = VERSION, magic: bytes = MAGIC) -> bytes:  # fmt: skip
    """A head frame with every part of it chosen, lies included."""
    text = head if isinstance(head, bytes) else _json(head)
    length = len(text) if json_len is None else json_len
    return struct.pack("<2sBBII", magic, version, kind, message_id, length) + text + payload


def data_frame(payload: bytes, message_id: int = 1) -> bytes:
    return struct.pack("<2sBBI", MAGIC, VERSION, DATA, message_id) + payload


#: Golden frames (good and bad alike) as seeds for mutation.
GOLDEN_FRAMES = [bytes.fromhex(f) for case in CASES for f in case["frames"]]

#: Values that no field, shape or dtype should hold, as JSON text (NaN and Infinity are not JSON).
ODD_VALUES = [
    "null", "true", "-1", "0", "1e309", "-1e309", "NaN", "Infinity", "-Infinity", "2.5", "-0.0", "4294967296",
    "18446744073709551616", "9" * 400, '""', '"x"', '"\\u0000"', '"\\ud800"', "[]", "{}", "[[[]]]",
    '{"__proto__":{}}', '"' + "A" * 70_000 + '"', "[" * 5000 + "]" * 5000, "1" + "0" * 5000,
]  # fmt: skip
#: Message types a worker may not send (the broker's own), or that do not exist, as JSON text.
OTHER_TYPES = ['"job"', '"welcome"', '"put"', '"free"', '"ping"', '"cancel"', '"launch"', '"toString"']
ODD_DTYPES = ["float64", "int64", "bool", "", "<f4", "float32 ", "FLOAT32", "constructor", "__proto__"]
ODD_SHAPES = [
    "[-1]", "[2.5]", "[NaN]", "[Infinity]", "[1e309]", "[4611686018427387904]", "[2147483648]", '["4"]', "[null]",
    "[[2]]", "4", "null", "{}", "[" + ",".join(["2"] * 33) + "]", "[" + ",".join(["1"] * 1000) + "]",
    "[65536,65536]", "[2147483647,2]", "[0,4611686018427387904]", "[" + "9" * 5000 + "]", "[true]",
]  # fmt: skip


class Fuzzer(random.Random):
    """Frames for a hostile worker, from a seed.  ``shot(templates)`` mutates one of ``templates``
    (messages that fit the conversation's state: a result for the job it holds, say) or a golden
    frame, or makes something else entirely."""

    def shot(self, templates: list[Message]) -> Shot:
        kinds: list[tuple[float, Callable[[list[Message]], Shot]]] = [
            (8, self.random_bytes),
            (12, self.golden_mutant),
            (14, self.field_mutant),
            (10, self.array_mutant),
            (8, self.frame_lie),
            (40, self.kept),
            (4, self.text),
            (8, self.fragmented),
            (2, self.oversize),
            (2, self.broken),
        ]
        make = self.choices([k for _, k in kinds], [w for w, _ in kinds])[0]
        return make(templates)

    # -- pieces ----------------------------------------------------------------------------

    def _bytes(self, n: int) -> bytes:
        return self.getrandbits(8 * n).to_bytes(n, "little") if n else b""

    def _encoded(self, message: Message) -> list[bytes]:
        """The message's frames, cut small, but into four at most (7-byte pieces of a calibration's result
        would be 37,000 frames)."""
        payload = sum(a.nbytes for a in message.arrays)
        chunk = max(self.choice([7, 64, 4096, 1 << 20]), -(-payload // 4))
        return list(encode(message, self.randrange(1, 1 << 32), chunk))

    def _binary(self, what: str, frames: list[bytes]) -> Shot:
        return Shot(what, [(BINARY, f, True) for f in frames])

    def _flip(self, data: bytes) -> bytes:
        out = bytearray(data)
        for _ in range(self.choice([1, 1, 2, 4, 16])):
            if out:
                out[self.randrange(len(out))] ^= 1 << self.randrange(8)
        return bytes(out)

    def _cut(self, data: bytes) -> bytes:
        return data[: self.randrange(len(data))] if data else data

    def _splice(self, data: bytes) -> bytes:
        at = self.randrange(len(data) + 1)
        return data[:at] + self._bytes(self.randrange(1, 64)) + data[at + self.randrange(8) :]

    # -- kinds -----------------------------------------------------------------------------

    def random_bytes(self, templates: list[Message]) -> Shot:
        n = self.choice([0, 1, 7, 8, 11, 12, 13, 64, 512, 4096])
        prefix = self.choice([b"", MAGIC, MAGIC + bytes([VERSION]), MAGIC + bytes([VERSION, HEAD])])
        return self._binary("random bytes", [prefix + self._bytes(n)])

    def golden_mutant(self, templates: list[Message]) -> Shot:
        frame = self.choice(GOLDEN_FRAMES)
        mutate = self.choice([self._flip, self._cut, self._splice, lambda f: f, lambda f: f + f])
        return self._binary("golden frame mutated", [mutate(frame)])

    def field_mutant(self, templates: list[Message]) -> Shot:
        """A message whose type or fields are wrong: missing, mistyped, odd values, unknown types."""
        m = self.choice(templates)
        fields = {k: json.dumps(v) for k, v in m.fields.items()}
        type_ = json.dumps(m.type)
        choice = self.randrange(5)
        if choice == 0 and fields:
            del fields[self.choice(sorted(fields))]
        elif choice == 1 and fields:
            fields[self.choice(sorted(fields))] = self.choice(ODD_VALUES)
        elif choice == 2:
            fields[self.choice(["held", "cache", "probe", "resume", "features", "reason", "x"])] = self.choice(
                [*ODD_VALUES, '["k"]', '["' + "k" * 65 + '"]', "[" + ",".join(['"k"'] * 2000) + "]"]
            )
        elif choice == 3:
            type_ = self.choice([*OTHER_TYPES, *ODD_VALUES])
        else:
            fields = {k: self.choice(ODD_VALUES) for k in fields}
        body = ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items())
        arrays = _json([{"dtype": a.dtype.name, "shape": list(a.shape)} for a in m.arrays])
        head = b'{"type":' + type_.encode() + b',"fields":{' + body.encode() + b'},"arrays":' + arrays + b"}"
        payload = b"".join(np.ascontiguousarray(a).tobytes() for a in m.arrays)
        return self._binary("fields mutated", [head_frame(head, payload, self.randrange(1, 1 << 32))])

    def array_mutant(self, templates: list[Message]) -> Shot:
        """A message whose arrays lie: shapes and dtypes no array has, more or fewer than sent."""
        m = self.choice(templates)
        specs = [(json.dumps(a.dtype.name), json.dumps(list(a.shape))) for a in m.arrays] or [('"float32"', "[1]")]
        payload = b"".join(np.ascontiguousarray(a).tobytes() for a in m.arrays)
        at = self.randrange(len(specs))
        dtype, shape = specs[at]
        choice = self.randrange(5)
        if choice == 0:
            shape = self.choice(ODD_SHAPES)
        elif choice == 1:
            dtype = json.dumps(self.choice(ODD_DTYPES)) if self.random() < 0.8 else self.choice(ODD_VALUES)
        elif choice == 2:
            specs.append(specs[at])  # one more array than sent
        elif choice == 3:
            payload = self._cut(payload) if self.random() < 0.5 else payload + self._bytes(self.randrange(1, 64))
        else:  # the right size, another shape
            dims = json.loads(shape)
            shape = json.dumps([*reversed(dims), 1] if dims else [1, 1])
        specs[at] = (dtype, shape)
        arrays = ",".join(f'{{"dtype":{d},"shape":{s}}}' for d, s in specs).encode()
        head = b'{"type":' + json.dumps(m.type).encode() + b',"fields":' + _json(dict(m.fields))
        head += b',"arrays":[' + arrays + b"]}"
        message_id = self.randrange(1, 1 << 32)
        cut = self.choice([len(payload), 0, len(payload) // 2])
        frames = [head_frame(head, payload[:cut], message_id)]
        if cut < len(payload):
            frames.append(data_frame(payload[cut:], message_id))
        return self._binary("arrays mutated", frames)

    def frame_lie(self, templates: list[Message]) -> Shot:
        """A frame whose prefix lies: header length, kind, version, magic, message ids."""
        m = self.choice(templates)
        head = {"type": m.type, "fields": dict(m.fields), "arrays": [
            {"dtype": a.dtype.name, "shape": list(a.shape)} for a in m.arrays]}  # fmt: skip
        payload = b"".join(np.ascontiguousarray(a).tobytes() for a in m.arrays)
        text = _json(head)
        choice = self.randrange(7)
        if choice == 0:
            lie = self.choice([0, 1, len(text) - 1, len(text) + 1, MAX_HEAD_JSON + 1, 0xFFFFFFFF])
            frames = [head_frame(text, payload, json_len=lie)]
        elif choice == 1:
            frames = [head_frame(text, payload, kind=self.choice([2, 3, 7, 128, 255]))]
        elif choice == 2:
            frames = [head_frame(text, payload, version=self.choice([0, 2, 255]))]
        elif choice == 3:
            frames = [head_frame(text, payload, magic=self.choice([b"NW", b"wn", b"\x00\x00"]))]
        elif choice == 4:  # data for a message never started
            frames = [data_frame(self._bytes(self.randrange(0, 64)), self.randrange(1 << 32))]
        elif choice == 5:  # one id started twice
            frames = [head_frame(text, b"", 9), head_frame(text, payload, 9)]
        else:  # more data than declared, after the head
            frames = [head_frame(text, payload, 5), data_frame(self._bytes(self.randrange(1, 4096)), 5)]
        return self._binary("prefix lies", frames)

    def kept(self, templates: list[Message], extras: bool = True) -> Shot:
        """A message the broker may well keep: a template as it is, with odd values where they are allowed
        (``extras``: and with fields beyond the schema, which may hold what a field of that name may not)."""
        m = self.choice(templates)
        fields = dict(m.fields)
        if m.type == "pong":
            fields["t"] = self.choice([0, -1, 1e308, -1e308, 2**53, 1.5, 5e-324, 10**30])
        elif m.type == "error":
            fields["job"] = self.choice([fields["job"], "j1~1", "", "x" * 1000, "\ud800"])
            fields["message"] = self.choice(["\u202e\x1b[2J" * 100, "\udfff\ud800", "x" * 100_000])
            fields["kind"] = self.choice(["compile", "internal", "device-lost", "missing-inputs", "?" * 200])
        elif m.type == "cache":
            fields.update(key=self.choice(["", "k", "x" * 64]), held=[f"k{i}" for i in range(self.randrange(50))])
        elif m.type == "result":
            fields["timings"] = {self.choice(["kernel", "held", "x" * 100]): self.choice([-1, 1e300, 0, 86_400_001])}
        if extras and self.random() < 0.3:
            fields[self.choice(["extra", "probe", "held"])] = self.choice([[], "p1", {"a": [1, 2]}, None])
        try:
            message = Message(m.type, fields, m.arrays)
        except ValueError:
            message = m
        return self._binary("kept (if valid)", self._encoded(message))

    def text(self, templates: list[Message]) -> Shot:
        m = self.choice(templates)
        choice = self.randrange(3)
        if choice == 0:
            payload = _json({"type": m.type, "fields": dict(m.fields)})
        elif choice == 1:
            payload = self._encoded(m)[0].decode("latin-1").encode("utf-8")
        else:
            payload = "".join(chr(self.randrange(32, 0x2FFF)) for _ in range(self.randrange(64))).encode()
        return Shot("text frame", [(TEXT, payload, True)])

    def fragmented(self, templates: list[Message]) -> Shot:
        """A message (kept or mutated) split across WebSocket fragments, a ping between two of them."""
        inner = self.choice([self.kept, self.field_mutant, self.golden_mutant, self.random_bytes])(templates)
        opcode, payload, _ = inner.frames[0]
        cuts = sorted(self.randrange(len(payload) + 1) for _ in range(self.randrange(1, 5)))
        parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        frames = [(opcode if i == 0 else 0, part, i == len(parts) - 1) for i, part in enumerate(parts)]
        if len(frames) > 1 and self.random() < 0.5:
            frames.insert(1, (PING, b"between", True))
        return Shot("fragmented", frames + inner.frames[1:])

    def oversize(self, templates: list[Message]) -> Shot:
        """A WebSocket frame header claiming more than a frame may hold (nothing follows it)."""
        n = self.choice([MAX_FRAME + 1, 1 << 31, 1 << 40, (1 << 63) - 1])
        opcode = self.choice([BINARY, TEXT])
        return Shot("oversize claim", raw=struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n), expect=TOO_BIG)

    def broken(self, templates: list[Message]) -> Shot:
        """Frames that break WebSocket itself (tornado ends such a connection without a close frame)."""
        choice = self.randrange(5)
        if choice == 0:
            return Shot("broken WebSocket", raw=bytes([0x80 | 0x40 | BINARY, 0x80]) + bytes(4), expect=BROKEN)
        if choice == 1:
            return Shot("broken WebSocket", raw=bytes([0x80 | self.choice([3, 7, 0xB, 0xF]), 0x80]) + bytes(4),
                        expect=BROKEN)  # fmt: skip
        if choice == 2:
            return Shot("broken WebSocket", [(0, b"continued", True)], expect=BROKEN)
        if choice == 3:
            return Shot("broken WebSocket", [(TEXT, b"\xff\xfe" + self._bytes(8), True)], expect=BROKEN)
        return Shot("broken WebSocket", [(PING, b"x", False)], expect=BROKEN)


def right_result(job: Message, answer: Callable[[Message], list[np.ndarray]] | None = None) -> Message:
    """A result for ``job`` of the dtypes and shapes it asks for (zeros, unless ``answer`` says)."""
    arrays = answer(job) if answer else [np.zeros(o["shape"], o["dtype"]) for o in job.fields["outputs"]]
    return Message("result", {"job": job.fields["job"], "timings": {"kernel": 1.0}}, arrays)


#: Messages a worker may send at any time after its hello that change nothing: a pong, a cache listing,
#: and a result for an attempt it never held (read, and dropped as late).
QUIET = [
    Message("pong", {"t": 1.0}),
    Message("cache", {"key": "k", "held": [], "pinned": []}),
    Message("result", {"job": "j0~1", "timings": {}}),
]


def worker_messages(job: Message | None, errors: bool = True) -> list[Message]:
    """Messages a worker sends, as templates: for the job it holds, if any, or for a made-up one
    (``errors``: with error reports, which may end the job rather than its attempt: a compile error
    is the program's own)."""
    name = job.fields["job"] if job is not None else "j1~1"
    messages = [
        *QUIET,
        Message("result", {"job": name, "timings": {}}, [np.arange(6, dtype=np.float32).reshape(2, 3)]),
    ]
    if errors:
        messages.append(Message("error", {"job": name, "kind": "internal", "message": "no"}))
    if job is not None:
        messages += [right_result(job)] * 3
    return messages

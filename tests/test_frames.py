"""WebSocket frames written from a message's pieces (webnet_magic.frames): RFC 6455 headers, the
client's mask, and frames read back intact by tornado's own reader over a real loopback socket."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
import tornado.websocket
from tornado.websocket import WebSocketClosedError

from webnet_magic.frames import frame_header, masked, send_parts
from webnet_magic.protocol import Assembler, Message, encode_parts


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, b"\x82\x00"), (125, b"\x82\x7d"), (126, b"\x82\x7e\x00\x7e"), (65535, b"\x82\x7e\xff\xff"),
     (65536, b"\x82\x7f" + (65536).to_bytes(8, "big"))],
)  # fmt: skip
def test_headers_take_the_three_lengths_of_rfc_6455(length: int, expected: bytes) -> None:
    assert frame_header(length) == expected
    assert frame_header(length, b"abcd") == bytes([expected[0], expected[1] | 0x80]) + expected[2:] + b"abcd"


def test_the_mask_runs_on_across_pieces_of_any_length() -> None:
    """Byte i of the payload is XORed with mask[i % 4], whatever the pieces' lengths (here 7, 0, 5, 1 MiB + 3)."""
    rng = np.random.default_rng(0)
    pieces = [rng.bytes(7), b"", memoryview(rng.bytes(5)), memoryview(rng.bytes((1 << 20) + 3))]
    whole = np.frombuffer(b"".join(pieces), np.uint8)
    mask = b"\x01\x80\xfe\x33"
    expected = whole ^ np.resize(np.frombuffer(mask, np.uint8), whole.size)
    assert np.array_equal(masked(pieces, mask), expected)


class _Collect(tornado.websocket.WebSocketHandler):
    """Keeps every binary message it reads; answers each by writing it back with send_parts (server side)."""

    def initialize(self, got: list[bytes]) -> None:
        self.got = got

    async def on_message(self, message: str | bytes) -> None:
        assert isinstance(message, bytes)
        self.got.append(message)
        await send_parts(self.ws_connection, [message[:3], memoryview(message)[3:]], client=False)


def test_frames_of_a_message_cross_a_real_socket_both_ways_intact() -> None:
    """A 9 MB message in 4 MiB frames goes client -> tornado server (masked) -> client (unmasked);
    tornado's own reader takes every frame, and the assembled arrays equal what was sent."""
    arrays = [np.arange(2_250_000, dtype=np.float32), np.arange(7, dtype=np.int32)]
    message = Message("pong", {"t": 1.5}, arrays)

    async def exchange() -> tuple[list[bytes], Message | None]:
        got: list[bytes] = []
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server = tornado.httpserver.HTTPServer(
            tornado.web.Application([("/", _Collect, {"got": got})], websocket_max_message_size=1 << 24)
        )
        server.add_sockets(sockets)
        port = sockets[0].getsockname()[1]
        conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/", max_message_size=1 << 24)
        assembler, back = Assembler(), None
        for parts in encode_parts(message, 7):
            await send_parts(conn.protocol, parts, client=True)
            back = assembler.feed(await conn.read_message()) or back  # type: ignore[arg-type]
        conn.close()
        with pytest.raises(WebSocketClosedError):
            await send_parts(conn.protocol, [b"late"], client=True)
        server.stop()
        return got, back

    with ThreadPoolExecutor(1) as thread:  # a loop of its own, whatever loop earlier tests left in this thread
        got, back = thread.submit(asyncio.run, exchange()).result(60)
    assert [len(frame) for frame in got] == [len(b"".join(p)) for p in encode_parts(message, 7)]
    assert back is not None and back.fields == {"t": 1.5}
    for sent, returned in zip(arrays, back.arrays, strict=True):
        assert np.array_equal(sent, returned) and sent.dtype == returned.dtype

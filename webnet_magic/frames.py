"""WebSocket frames written from a message's pieces, for the broker and the native worker.

Tornado's ``write_message`` takes one ``bytes`` and builds the frame by concatenation, so
a 4 MiB frame of array data was copied twice on the way out (our join, then tornado's
header + payload), and a client's three times (the mask, then two concatenations).  Here
the frame's header and the pieces from :func:`~webnet_magic.protocol.encode_parts` go to
the connection's stream as they are: a server copies no array bytes at all (the stream
sends straight from the arrays' memory), and a client copies them once, to mask them as
RFC 6455 requires of every frame a client sends.

The frames are ordinary final binary frames (no compression is ever negotiated: the broker
offers none and the worker asks for none), so the reading side is tornado's own, or a browser's.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence

import numpy as np
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketProtocol

_BINARY_FINAL = 0x82  # FIN, opcode 2
_MASKED = 0x80


def frame_header(length: int, mask: bytes = b"") -> bytes:
    """The header of one final binary frame of ``length`` payload bytes, masked with ``mask`` if given."""
    bit = _MASKED if mask else 0
    if length < 126:
        head = struct.pack("!BB", _BINARY_FINAL, length | bit)
    elif length <= 0xFFFF:
        head = struct.pack("!BBH", _BINARY_FINAL, 126 | bit, length)
    else:
        head = struct.pack("!BBQ", _BINARY_FINAL, 127 | bit, length)
    return head + mask


def masked(parts: Sequence[bytes | memoryview], mask: bytes) -> np.ndarray:
    """The pieces back to back, each byte XORed with ``mask[i % 4]``: a client frame's payload, one copy.

    Whole 32-bit words at a time (numpy), where tornado's masking goes through a fresh bytes object.
    """
    length = sum(len(p) for p in parts)
    out = np.empty(-(-length // 4) * 4, np.uint8)
    at = 0
    for part in parts:
        out[at : at + len(part)] = np.frombuffer(part, np.uint8)
        at += len(part)
    words = out.view("<u4")
    np.bitwise_xor(words, np.frombuffer(mask, "<u4")[0], out=words)
    return out[:length]


async def send_parts(connection: WebSocketProtocol | None, parts: Sequence[bytes | memoryview], client: bool) -> int:
    """Write ``parts`` as one frame on ``connection`` and wait until the socket took it; its wire size.

    ``client``: this side opened the connection, so the frame is masked.  Nothing awaits between
    the header and the payload, so frames written by other tasks never land inside this one.
    """
    if connection is None or connection.is_closing() or connection.stream is None:
        raise WebSocketClosedError()
    stream = connection.stream
    length = sum(len(p) for p in parts)
    try:
        if client:
            mask = os.urandom(4)
            header = frame_header(length, mask)
            stream.write(header)
            done = stream.write(memoryview(masked(parts, mask)))
        else:
            header = frame_header(length)
            done = stream.write(header)
            for part in parts:
                if len(part):
                    done = stream.write(part)
        await done
    except StreamClosedError:
        raise WebSocketClosedError() from None
    return len(header) + length

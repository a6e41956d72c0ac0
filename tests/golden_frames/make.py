"""Writes ``frames.json``: frames both protocol implementations must read (and write) alike.

The bytes are built here from the layout itself (``struct`` and ``json``), not with
``webnet_magic.protocol``, so the Python encoder is checked against an independent copy
as much as the page's is.  Run it only to change the protocol on purpose, and read the diff.

    python tests/golden_frames/make.py
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

HEAD, DATA = 0, 1
MAX_DIM = 2**31 - 1


def prefix(kind: int, message_id: int, *, magic: bytes = b"WN", version: int = 1) -> bytes:
    return struct.pack("<2sBBI", magic, version, kind, message_id)


def head(header: Any, message_id: int = 1, payload: bytes = b"", *, raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header, separators=(",", ":")).encode()
    return prefix(HEAD, message_id) + struct.pack("<I", len(body)) + body + payload


def data(message_id: int, payload: bytes) -> bytes:
    return prefix(DATA, message_id) + payload


def array(dtype: str, shape: list[int], payload: bytes) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "hex": payload.hex()}


def message(type_: str, fields: dict[str, Any], *arrays: dict[str, Any]) -> dict[str, Any]:
    return {"type": type_, "fields": fields, "arrays": list(arrays)}


def framed(meaning: dict[str, Any], message_id: int, chunk: int) -> list[bytes]:
    """The frames of one message, cut as the protocol says: at most ``chunk`` payload bytes each."""
    header = {
        "type": meaning["type"],
        "fields": meaning["fields"],
        "arrays": [{"dtype": a["dtype"], "shape": a["shape"]} for a in meaning["arrays"]],
    }
    payload = b"".join(bytes.fromhex(a["hex"]) for a in meaning["arrays"])
    frames = [head(header, message_id, payload[:chunk])]
    frames += [data(message_id, payload[at : at + chunk]) for at in range(chunk, len(payload), chunk)]
    return frames


def good(name: str, meaning: dict[str, Any], message_id: int = 1, chunk: int = 4 * 2**20) -> dict[str, Any]:
    """A message both sides must decode from these frames and encode to exactly them."""
    frames = framed(meaning, message_id, chunk)
    return {"name": name, "frames": [f.hex() for f in frames], "messages": [meaning],
            "encode": {"id": message_id, "chunk": chunk}}  # fmt: skip


def decoded(name: str, frames: list[bytes], *meanings: dict[str, Any]) -> dict[str, Any]:
    """Frames both sides must decode to ``meanings`` (in the order they complete); not what either writes."""
    return {"name": name, "frames": [f.hex() for f in frames], "messages": list(meanings), "encode": None}


def bad(name: str, frames: list[bytes], reason: str, budget: int | None = None) -> dict[str, Any]:
    """Frames of which the last must be refused, with ``reason`` in the error; those before it accepted."""
    case = {"name": name, "frames": [f.hex() for f in frames], "reason": reason}
    return case if budget is None else {**case, "budget": budget}


def compact(meaning: dict[str, Any], *, ascii: bool) -> bytes:
    """A header as JSON with no spaces; JavaScript writes other characters as they are, Python as \\u escapes."""
    header = {"type": meaning["type"], "fields": meaning["fields"]}
    return json.dumps(header, separators=(",", ":"), ensure_ascii=ascii).encode()


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


RESULT = {"job": "j1", "timings": {}}


def result_head(*arrays: dict[str, Any], payload: bytes = b"", message_id: int = 1) -> bytes:
    return head({"type": "result", "fields": RESULT, "arrays": list(arrays)}, message_id, payload)


def with_shape(shape: Any, dtype: Any = "uint8") -> bytes:
    return result_head({"dtype": dtype, "shape": shape})


def with_shape_text(dimension: bytes) -> bytes:
    """A result head whose one array has the single dimension ``dimension``, as written."""
    raw = b'{"type":"result","fields":{"job":"j1","timings":{}},"arrays":[{"dtype":"uint8","shape":[%s]}]}'
    return head(None, raw=raw % dimension)


JOB = {
    "job": "j7",
    "kernels": {"k0": {"source": "@compute @workgroup_size(1) fn main() {}", "entry": "main"}},
    "buffers": [{"size": 16, "input": 0}, {"size": 8}],
    "steps": [{"kernel": "k0", "bindings": [0, 1], "workgroups": [1, 1, 1]}],
    "outputs": [{"buffer": 1, "dtype": "float32", "shape": [2]}],
}
HELLO = {
    "runtime": "browser",
    "name": "Chrome on Linux",
    "webgpu": False,
    "adapter": {},
    "limits": {},
    "reason": "This browser has no WebGPU.",
}


def cases() -> dict[str, list[dict[str, Any]]]:
    a = array("float32", [2, 3], f32(1, 2, 3, 4, 5, 6.5))
    b = array("uint8", [5], bytes([1, 2, 3, 250, 255]))
    named = message("hello", {**HELLO, "name": "Ana\u2019s iPhone \U0001f4f1"})
    pending = [result_head({"dtype": "uint8", "shape": [4]}, message_id=i) for i in range(1, 10)]
    good_cases = [
        good("a ping without arrays", message("ping", {"t": 0.5})),
        good("a hello from a page without WebGPU", message("hello", HELLO)),
        good(
            "a job with its kernels, buffers, steps and outputs",
            message("job", JOB, array("float32", [4], f32(1, 2, 3, 4))),
            2,
        ),
        good(
            "a result of two arrays cut into 10-byte frames",
            message("result", {"job": "a1", "timings": {"kernel": 1.25}}, a, b),
            300_000,
            10,
        ),
        good(
            "int32, an empty array and float16 across 4-byte frames",
            message(
                "result",
                RESULT,
                array("int32", [2], struct.pack("<2i", -1, 7)),
                array("float32", [0, 4], b""),
                array("float16", [3], struct.pack("<3e", 1.0, -2.0, 0.5)),
            ),
            2**32 - 1,
            4,
        ),
        good("a scalar (shape [])", message("result", RESULT, array("uint32", [], struct.pack("<I", 2**32 - 1)))),
        good("the largest dimension, times zero", message("result", RESULT, array("uint8", [MAX_DIM, 0], b""))),
        good("32 dimensions, the most allowed", message("result", RESULT, array("uint8", [1] * 32, b"\x2a"))),
        good("a put of one array", message("put", {"key": "abc", "pin": True}, array("uint8", [3], b"xyz"))),
        good("a pong with a field beyond the schema", message("pong", {"t": 3, "probe": "p1"})),
        good("a cache report", message("cache", {"key": "abc", "held": ["abc", "def"], "pinned": []})),
        decoded("a name in raw UTF-8", [head(None, raw=compact(named, ascii=False))], named),
        decoded("the same name in \\u escapes", [head(None, raw=compact(named, ascii=True))], named),
        decoded(
            "a dimension written 2.0 is the dimension 2",
            [
                head(
                    None,
                    raw=b'{"type":"result","fields":{"job":"j1","timings":{}},"arrays":[{"dtype":"uint8","shape":[2.0,1e0]}]}',
                    payload=b"\x01\x02",
                )
            ],
            message("result", RESULT, array("uint8", [2, 1], b"\x01\x02")),
        ),
        decoded(
            "frames of two messages interleaved",
            [
                result_head({"dtype": "uint8", "shape": [4]}, payload=b"ab", message_id=1),
                result_head({"dtype": "uint8", "shape": [2]}, payload=b"xy", message_id=2),
                data(1, b"cd"),
            ],
            message("result", RESULT, array("uint8", [2], b"xy")),
            message("result", RESULT, array("uint8", [4], b"abcd")),
        ),
    ]
    bad_cases = [
        bad("a frame shorter than its prefix", [b"WN\x01"], "shorter than the 8-byte prefix"),
        bad("another magic", [prefix(HEAD, 1, magic=b"XX") + bytes(4)], "does not start with 'WN'"),
        bad("another version", [prefix(HEAD, 1, version=2) + bytes(4)], "protocol version 2"),
        bad("an unknown frame kind", [prefix(7, 1) + bytes(4)], "unknown frame kind 7"),
        bad("data for a message never started", [data(5, b"data")], "data frame for unknown message 5"),
        bad(
            "a head frame without its header length",
            [prefix(HEAD, 1) + b"\x01\x00"],
            "too short to hold its header length",
        ),
        bad(
            "a header longer than the frame",
            [prefix(HEAD, 1) + struct.pack("<I", 999) + b"{}"],
            "declares a 999-byte header it does not hold",
        ),
        bad(
            "a header over the cap",
            [prefix(HEAD, 1) + struct.pack("<I", 2**20 + 1) + b"{}"],
            "header of 1048577 bytes is over the 1048576-byte limit",
        ),
        bad("not JSON", [head(None, raw=b"{not json")], "not valid JSON"),
        bad("not UTF-8", [head(None, raw=b"\xff\xfe")], "not valid JSON"),
        bad("a byte-order mark", [head(None, raw=b'\xef\xbb\xbf{"type":"ping","fields":{"t":1}}')], "not valid JSON"),
        bad("UTF-16", [head(None, raw='{"type":"ping","fields":{"t":1}}'.encode("utf-16-le"))], "not valid JSON"),
        bad("NaN", [head(None, raw=b'{"type":"ping","fields":{"t":NaN}}')], "not valid JSON"),
        bad("Infinity", [head(None, raw=b'{"type":"ping","fields":{"t":-Infinity}}')], "not valid JSON"),
        bad("a dimension no double holds", [with_shape_text(b"1e400")], "has a dimension over 2147483647"),
        bad("a 400-digit dimension", [with_shape_text(b"9" * 400)], "has a dimension over 2147483647"),
        bad("a 5000-digit dimension", [with_shape_text(b"9" * 5000)], "has a dimension over 2147483647"),
        bad("a 300-digit dimension", [with_shape_text(b"9" * 300)], "has a dimension over 2147483647"),
        bad("a header that is a list", [head([1, 2])], "must be an object with a string 'type'"),
        bad("a type that is not a string", [head({"type": 3, "fields": {}})], "must be an object with a string 'type'"),
        bad(
            "an unknown type",
            [head({"type": "launch_missiles", "fields": {}})],
            'unknown message type "launch_missiles"',
        ),
        bad(
            "a type named like an Object method",
            [head({"type": "toString", "fields": {}})],
            'unknown message type "toString"',
        ),
        bad("a type named __proto__", [head({"type": "__proto__", "fields": {}})], 'unknown message type "__proto__"'),
        bad("fields that are a list", [head({"type": "ping", "fields": [0.5]})], "'fields' must be an object"),
        bad("fields that are null", [head({"type": "ping", "fields": None})], "'fields' must be an object"),
        bad("arrays that are an object", [head({"type": "ping", "fields": {"t": 1}, "arrays": {}})], "'arrays' a list"),
        bad("a missing field", [head({"type": "ping", "fields": {}})], "'ping' message is missing field 't'"),
        bad(
            "a string for a number",
            [head({"type": "ping", "fields": {"t": "soon"}})],
            "'ping' message field 't' has the wrong type",
        ),
        bad(
            "a boolean for a number",
            [head({"type": "ping", "fields": {"t": True}})],
            "'ping' message field 't' has the wrong type",
        ),
        bad(
            "a list for an object",
            [head({"type": "result", "fields": {"job": "j", "timings": []}})],
            "field 'timings' has the wrong type",
        ),
        bad(
            "null for an object",
            [head({"type": "hello", "fields": {**HELLO, "adapter": None}})],
            "field 'adapter' has the wrong type",
        ),
        bad(
            "an object for a list",
            [head({"type": "cache", "fields": {"key": "k", "held": {}, "pinned": []}})],
            "field 'held' has the wrong type",
        ),
        bad("an array entry that is not an object", [result_head([2])], "each entry of 'arrays' must be an object"),
        bad("float64", [with_shape([2], "float64")], 'dtype "float64" cannot cross the wire'),
        bad(
            "a dtype named like an Object property",
            [with_shape([2], "constructor")],
            'dtype "constructor" cannot cross the wire',
        ),
        bad("no dtype", [result_head({"shape": [2]})], "cannot cross the wire"),
        bad("a negative dimension", [with_shape([-1])], "array shape [-1] is not a list of non-negative integers"),
        bad("a fractional dimension", [with_shape([1.5])], "not a list of non-negative integers"),
        bad("a boolean dimension", [with_shape([True])], "not a list of non-negative integers"),
        bad("a string dimension", [with_shape(["3"])], "not a list of non-negative integers"),
        bad("a shape that is a number", [with_shape(3)], "not a list of non-negative integers"),
        bad("no shape", [result_head({"dtype": "uint8"})], "not a list of non-negative integers"),
        bad("70 dimensions", [with_shape([1] * 70)], "array shape has 70 dimensions; at most 32 are allowed"),
        bad("33 dimensions", [with_shape([1] * 33)], "array shape has 33 dimensions; at most 32 are allowed"),
        bad("a dimension of 2**62 times zero", [with_shape([0, 2**62])], "has a dimension over 2147483647"),
        bad("a dimension of 2**31", [with_shape([2**31])], "has a dimension over 2147483647"),
        bad(
            "2**32 bytes",
            [with_shape([2**16, 2**16])],
            "a uint8 array of shape [65536,65536] holds more than 2147483647 bytes",
        ),
        bad("2**31 bytes of float32", [with_shape([2**29], "float32")], "holds more than 2147483647 bytes"),
        bad("32 dimensions of 2", [with_shape([2] * 32)], "holds more than 2147483647 bytes"),
        bad(
            "more data than declared in the head",
            [result_head({"dtype": "uint8", "shape": [2]}, payload=b"abc")],
            "message 1 carries more than the 2 bytes its header declared",
        ),
        bad(
            "more data than declared in a data frame",
            [result_head({"dtype": "uint8", "shape": [4]}, payload=b"ab"), data(1, b"cde")],
            "message 1 carries more than the 4 bytes its header declared",
        ),
        bad(
            "a message started twice",
            [result_head({"dtype": "uint8", "shape": [4]}), result_head({"dtype": "uint8", "shape": [4]})],
            "message 1 started twice",
        ),
        bad(
            "more than the budget",
            [result_head({"dtype": "float32", "shape": [3]})],
            "'result' message of 12 bytes; at most 8 were expected",
            budget=8,
        ),
        bad("a ninth message in flight", pending, "more than 8 messages in flight at once"),
    ]
    return {"good": good_cases, "bad": bad_cases}


if __name__ == "__main__":
    path = Path(__file__).with_name("frames.json")
    path.write_text(json.dumps(cases(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")

"""The wire format, on bytes alone: no sockets."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from webnet_magic import ops, protocol
from webnet_magic.program import Program
from webnet_magic.protocol import SPEC, Assembler, Message, ProtocolError, encode

from .golden import CASES, check, python_outcome

wire_dtypes = st.sampled_from(["float32", "int32", "uint32", "float16", "uint8"])
arrays = wire_dtypes.flatmap(
    lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=40))
)


def roundtrip(message: Message, chunk: int = 1024) -> Message:
    assembler = Assembler()
    frames = list(encode(message, 7, chunk))
    results = [assembler.feed(f) for f in frames]
    assert all(r is None for r in results[:-1])
    assert results[-1] is not None and assembler.pending == 0
    return results[-1]


@settings(max_examples=150, deadline=None)
@given(st.lists(arrays, max_size=4), st.integers(min_value=1, max_value=5000))
def test_arrays_survive_any_chunking(items: list[np.ndarray], chunk: int) -> None:
    """Any arrays, cut into frames of any size, come back bit-for-bit with their dtypes and shapes."""
    back = roundtrip(Message("result", {"job": "j1", "timings": {}}, items), chunk)
    assert len(back.arrays) == len(items)
    for got, sent in zip(back.arrays, items, strict=True):
        assert got.dtype == sent.dtype and got.shape == sent.shape
        assert got.tobytes() == sent.tobytes()


def test_frames_are_bounded_by_the_chunk_size() -> None:
    """A 10 MB array travels as frames of at most chunk + header bytes, never one giant frame."""
    big = np.arange(10 * 2**20 // 4, dtype=np.float32)
    frames = list(encode(Message("result", {"job": "j", "timings": {}}, [big]), 1, 2**20))
    assert len(frames) == 10
    assert max(len(f) for f in frames[1:]) == 2**20 + 8


def test_non_contiguous_and_big_endian_arrays_are_sent_as_little_endian_c_order() -> None:
    """A transposed or big-endian array arrives as the same values, in C order."""
    a = np.arange(12, dtype=">f4").reshape(3, 4).T
    back = roundtrip(Message("result", {"job": "j", "timings": {}}, [a.astype(np.float32)]))
    np.testing.assert_array_equal(back.arrays[0], a)


def test_interleaved_messages_assemble_separately() -> None:
    """Frames of two messages may interleave on one connection; each is reassembled whole."""
    a = np.arange(3000, dtype=np.float32)
    b = np.arange(5000, dtype=np.int32)
    fa = list(encode(Message("result", {"job": "a", "timings": {}}, [a]), 1, 1000))
    fb = list(encode(Message("result", {"job": "b", "timings": {}}, [b]), 2, 1000))
    assembler, done = Assembler(), []
    for i in range(max(len(fa), len(fb))):
        for frames in (fa, fb):
            if i < len(frames) and (m := assembler.feed(frames[i])) is not None:
                done.append(m)
    assert [m.fields["job"] for m in done] == ["a", "b"]
    np.testing.assert_array_equal(done[1].arrays[0], b)


def test_a_job_message_round_trips_to_the_same_program() -> None:
    """A matmul program survives encode/decode with its kernel, buffers and dispatch intact."""
    plan = ops.plan("matmul", np.ones((5, 3), np.float32), np.ones((3, 2), np.float32))
    back = Program.from_message(roundtrip(plan.program.to_message("j9")))
    assert back.steps == plan.program.steps and back.buffers == plan.program.buffers
    assert back.outputs == plan.program.outputs


def head_frame(header: object, payload: bytes = b"", raw_json: bytes | None = None) -> bytes:
    body = raw_json if raw_json is not None else json.dumps(header).encode()
    return b"WN\x01\x00" + struct.pack("<II", 1, len(body)) + body + payload


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_python_reads_writes_and_refuses_the_golden_frames(case: dict) -> None:
    """Each golden frame decodes to its meaning (and that meaning encodes to the same bytes), or is
    refused with its reason, exactly as the page's protocol.js must (tests/test_protocol_page.py)."""
    check(case, python_outcome(case))


def test_python_constants_are_the_specs() -> None:
    """Every constant the two sides share is the one in protocol.json, close codes included."""
    assert (protocol.VERSION, protocol.MAGIC.decode()) == (SPEC["version"], SPEC["magic"])
    assert SPEC["frameKinds"] == {"HEAD": protocol.HEAD, "DATA": protocol.DATA}
    named = {
        "DEFAULT_CHUNK": "defaultChunk",
        "MAX_CHUNK": "maxChunk",
        "MAX_HEAD_JSON": "maxHeadJson",
        "MAX_FRAME": "maxFrame",
        "MAX_MESSAGE_BYTES": "maxMessageBytes",
        "MAX_RANK": "maxRank",
        "MAX_PENDING": "maxPending",
    }
    assert {name: getattr(protocol, name) for name in named} == {name: SPEC[key] for name, key in named.items()}
    assert {name: getattr(protocol, f"CLOSE_{name}") for name in SPEC["close"]} == SPEC["close"]
    assert {name: dtype.itemsize for name, dtype in protocol.WIRE_DTYPES.items()} == SPEC["dtypes"]
    assert set(protocol.SCHEMA) == set(SPEC["messages"])
    assert Assembler().max_pending == SPEC["maxPending"]


def test_deeply_nested_json_is_refused() -> None:
    """A header nested 100,000 deep is refused as bad JSON, not a crash (the page refuses it too,
    with a reason of its own: JavaScript's parser is not recursive, so this case is not golden)."""
    frame = head_frame(None, raw_json=b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ProtocolError, match="not valid JSON"):
        Assembler().feed(frame)


def test_a_frame_over_the_cap_is_refused_unread() -> None:
    """A frame longer than MAX_FRAME is refused before its header is read."""
    with pytest.raises(ProtocolError, match=f"over the {protocol.MAX_FRAME}-byte limit"):
        Assembler().feed(b"WN\x01\x01" + bytes(protocol.MAX_FRAME - 3))


def test_a_header_over_the_cap_is_not_sent() -> None:
    """The sender refuses a header the receiver would refuse."""
    message = Message("error", {"job": "j", "kind": "x", "message": "m" * protocol.MAX_HEAD_JSON})
    with pytest.raises(ProtocolError, match=f"over the {protocol.MAX_HEAD_JSON}-byte limit"):
        next(encode(message, 1))


dimensions = st.one_of(
    st.integers(min_value=-3, max_value=2**70),
    st.integers(min_value=0, max_value=40),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1, max_value=2**64),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=400, deadline=None)
@given(
    wire_dtypes | st.sampled_from(["float64", "", "toString"]),
    st.lists(dimensions, max_size=80) | st.integers() | st.none(),
)
def test_any_declared_shape_is_refused_or_read_exactly(dtype: str, shape: object) -> None:
    """Whatever shape a peer declares, the header is refused with a ProtocolError (never another error)
    or read as an array of exactly that shape, at most MAX_RANK dimensions and MAX_MESSAGE_BYTES."""
    header = {"type": "result", "fields": {"job": "j", "timings": {}}, "arrays": [{"dtype": dtype, "shape": shape}]}
    assembler = Assembler()
    try:
        message = assembler.feed(head_frame(header))
    except ProtocolError:
        return
    assert isinstance(shape, list) and len(shape) <= protocol.MAX_RANK
    dims = tuple(int(d) for d in shape)
    nbytes = math.prod(dims) * np.dtype(dtype).itemsize
    assert nbytes <= protocol.MAX_MESSAGE_BYTES
    if nbytes:  # still waiting for its data
        assert message is None and assembler.pending == 1
    else:
        assert message is not None and message.arrays[0].shape == dims


def test_declared_sizes_are_checked_before_memory_is_reserved() -> None:
    """A header declaring a gigabyte is refused at once, without allocating it."""
    header = {
        "type": "result",
        "fields": {"job": "j", "timings": {}},
        "arrays": [{"dtype": "uint8", "shape": [2**15, 2**15]}],
    }
    with pytest.raises(ProtocolError, match=r"'result' message of 1073741824 bytes; at most 1048576"):
        Assembler(budget=lambda type_, fields: 2**20).feed(head_frame(header))


def test_the_budget_sees_the_type_and_fields_of_each_message() -> None:
    """A receiver can allow exactly what it asked for: here 12 bytes for job j1 and nothing else."""
    budget = lambda type_, fields: 12 if (type_, fields.get("job")) == ("result", "j1") else 0  # noqa: E731
    ok = Message("result", {"job": "j1", "timings": {}}, [np.zeros(3, np.float32)])
    assert Assembler(budget).feed(next(encode(ok, 1))) is not None
    unasked = Message("result", {"job": "j2", "timings": {}}, [np.zeros(3, np.float32)])
    with pytest.raises(ProtocolError, match="at most 0 were expected"):
        Assembler(budget).feed(next(encode(unasked, 1)))


def test_too_many_unfinished_messages_are_refused() -> None:
    """A peer cannot pin memory by starting messages it never finishes."""
    assembler = Assembler(max_pending=2)
    header = {
        "type": "result",
        "fields": {"job": "j", "timings": {}},
        "arrays": [{"dtype": "uint8", "shape": [10]}],
    }
    for message_id in (1, 2):
        assembler.feed(
            b"WN\x01\x00" + struct.pack("<II", message_id, len(json.dumps(header))) + json.dumps(header).encode()
        )
    with pytest.raises(ProtocolError, match="in flight"):
        assembler.feed(b"WN\x01\x00" + struct.pack("<II", 3, len(json.dumps(header))) + json.dumps(header).encode())


def test_a_result_must_match_the_programs_outputs() -> None:
    """A worker's result with the wrong shape or dtype is refused, not bound."""
    plan = ops.plan("matmul", np.ones((4, 3), np.float32), np.ones((3, 2), np.float32))
    with pytest.raises(ProtocolError, match="expected float32"):
        plan.program.check_results([np.zeros((2, 4), np.float32)])
    with pytest.raises(ProtocolError, match="expected 1"):
        plan.program.check_results([])


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (lambda f: f["buffers"].__setitem__(0, {"size": 3}), "multiples of 4"),
        (lambda f: f["steps"][0].__setitem__("bindings", [0, 1, 9, 3]), "does not exist"),
        (lambda f: f["steps"][0].__setitem__("workgroups", [0, 1, 1]), "must be >= 1"),
        (lambda f: f["outputs"][0].__setitem__("shape", [100, 100]), "larger than buffer"),
        (lambda f: f["outputs"][0].__setitem__("shape", [0, 2**62]), "dimension over"),
        (lambda f: f["kernels"].__setitem__(next(iter(f["kernels"])), {"source": "tampered"}), "hash"),
        (lambda f: f["steps"][0].__setitem__("kernel", "nope"), "malformed"),
    ],
)
def test_a_worker_refuses_an_inconsistent_job(change: object, complaint: str) -> None:
    """Indices, sizes and kernel hashes in a job are all checked before anything touches the GPU."""
    plan = ops.plan("matmul", np.ones((4, 3), np.float32), np.ones((3, 2), np.float32))
    message = plan.program.to_message("j")
    fields = json.loads(json.dumps(message.fields))
    change(fields)  # type: ignore[operator]
    with pytest.raises(ProtocolError, match=complaint):
        Program.from_message(Message("job", fields, message.arrays))

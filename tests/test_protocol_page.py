"""The protocol between real ends: the worker page's own protocol.js in Chromium, and a broker on loopback.

The page loads the same ``protocol.json`` that ``webnet_magic.protocol`` reads, and must make of the
golden frames exactly what Python makes of them (``tests/golden.py``).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator

import pytest

from webnet_magic import protocol
from webnet_magic.broker.thread import BrokerThread

from .conftest import wait_until
from .golden import CASES, CHECK_JS, GOLDEN, check
from .peers import Peer, small_program

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def protocol_page(chromium: object) -> Iterator[object]:
    """The worker page as a phone gets it (its CSP enforced), joined to a broker, for the whole module."""
    broker = BrokerThread(calibrate=False).start()
    context = chromium.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(broker.url)
    wait_until(broker.devices, 30, "the page to join")
    yield page
    context.close()
    broker.stop()


@pytest.fixture(scope="module")
def page_outcomes(protocol_page: object) -> dict[str, dict]:
    return protocol_page.evaluate(CHECK_JS, GOLDEN)  # type: ignore[attr-defined]


def test_the_page_loads_the_spec_that_python_reads(protocol_page: object) -> None:
    """protocol.json is served as JSON, and every constant the page's protocol.js exports is the spec's,
    the same values webnet_magic.protocol holds (CLOSE.TRY_LATER included)."""
    page = protocol_page.evaluate(  # type: ignore[attr-defined]
        """async () => {
          const p = await import("/protocol.js");
          const served = await fetch("/protocol.json");
          return { type: served.headers.get("content-type"), served: await served.json(), spec: p.SPEC,
                   close: p.CLOSE, version: p.VERSION, defaultChunk: p.DEFAULT_CHUNK, maxChunk: p.MAX_CHUNK,
                   maxHeadJson: p.MAX_HEAD_JSON, maxFrame: p.MAX_FRAME, maxMessageBytes: p.MAX_MESSAGE_BYTES,
                   maxRank: p.MAX_RANK, maxPending: new p.Assembler().maxPending };
        }"""
    )
    assert page["type"].startswith("application/json")
    assert page["served"] == page["spec"] == json.loads(json.dumps(protocol.SPEC))
    assert page["close"] == {name: getattr(protocol, f"CLOSE_{name}") for name in protocol.SPEC["close"]}
    assert page["close"]["TRY_LATER"] == protocol.CLOSE_TRY_LATER
    assert (page["version"], page["defaultChunk"], page["maxChunk"]) == (
        protocol.VERSION,
        protocol.DEFAULT_CHUNK,
        protocol.MAX_CHUNK,
    )
    assert (page["maxHeadJson"], page["maxFrame"], page["maxMessageBytes"]) == (
        protocol.MAX_HEAD_JSON,
        protocol.MAX_FRAME,
        protocol.MAX_MESSAGE_BYTES,
    )
    assert (page["maxRank"], page["maxPending"]) == (protocol.MAX_RANK, protocol.MAX_PENDING)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_the_page_reads_writes_and_refuses_the_golden_frames(page_outcomes: dict[str, dict], case: dict) -> None:
    """In Chromium, each golden frame decodes to its meaning (which encodes back to the same bytes),
    or is refused with its reason: the same outcome as webnet_magic.protocol's."""
    check(case, page_outcomes[case["name"]])


def test_the_page_refuses_a_frame_and_a_header_over_the_caps(protocol_page: object) -> None:
    """The page's assembler refuses a frame over maxFrame unread, and its encoder a header over maxHeadJson,
    in the words Python uses."""
    refused = protocol_page.evaluate(  # type: ignore[attr-defined]
        """async () => {
          const p = await import("/protocol.js");
          const attempt = (f) => { try { f(); return "allowed"; } catch (e) { return e.message; } };
          const big = new Uint8Array(p.MAX_FRAME + 1);
          big.set([0x57, 0x4e, p.VERSION, 1]);
          const long = { type: "error", fields: { job: "j", kind: "x", message: "m".repeat(p.MAX_HEAD_JSON) } };
          return [attempt(() => new p.Assembler().feed(big.buffer)), attempt(() => [...p.encode(long, 1)])];
        }"""
    )
    big = b"WN\x01\x01" + bytes(protocol.MAX_FRAME - 3)
    long = protocol.Message("error", {"job": "j", "kind": "x", "message": "m" * protocol.MAX_HEAD_JSON})
    python = []
    for attempt in (lambda: protocol.Assembler().feed(big), lambda: next(protocol.encode(long, 1))):
        with pytest.raises(protocol.ProtocolError) as refusal:
            attempt()
        python.append(str(refusal.value))
    assert refused == python


@pytest.mark.parametrize("shape", [[0, 2**62], [1] * 70], ids=["0 by 2**62", "70 dimensions"])
def test_a_result_of_an_impossible_shape_closes_the_link_with_a_reason_and_prints_nothing(
    broker: BrokerThread, peers: list[Peer], capfd: pytest.CaptureFixture[str], shape: list[int]
) -> None:
    """A worker answering a job with an array of shape [0, 2**62] (or 70 dimensions) is cut off with
    close code 1002 and a reason naming the shape; not a line reaches the notebook's output."""
    header = json.dumps(
        {"type": "result", "fields": {"job": "?", "timings": {}}, "arrays": [{"dtype": "float32", "shape": shape}]}
    )

    async def reply(conn, job) -> None:
        head = header.replace('"?"', json.dumps(job.fields["job"])).encode()
        await conn.write_message(b"WN\x01\x00" + struct.pack("<II", 9, len(head)) + head, binary=True)

    peers.append(peer := Peer(broker, reply))
    broker.submit(small_program())
    peer.thread.join(30)
    assert peer.close_code == protocol.CLOSE_PROTOCOL
    assert "dimension" in peer.conn.close_reason, peer.conn.close_reason
    wait_until(lambda: not broker.devices(), 10, "the device to leave")
    assert capfd.readouterr() == ("", "")

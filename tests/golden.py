"""The golden frames (``tests/golden_frames/frames.json``) and what a protocol implementation makes of them.

Each side (``webnet_magic.protocol`` here, the page's ``protocol.js`` through ``golden_frames/check.js``)
reports an *outcome* per case in the same shape: the messages it decoded, the frames it encoded, the
number of frames it accepted, and its reason for refusing one.  :func:`check` holds every side to the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from webnet_magic.protocol import Assembler, Message, ProtocolError, encode

HERE = Path(__file__).with_name("golden_frames")
GOLDEN: dict[str, list[dict[str, Any]]] = json.loads((HERE / "frames.json").read_text("utf-8"))
CASES = [*GOLDEN["good"], *GOLDEN["bad"]]
#: The page's checker: an async function of the golden file, for Playwright's evaluate or Selenium.
CHECK_JS = (HERE / "check.js").read_text("utf-8")


def meaning(message: Message) -> dict[str, Any]:
    return {
        "type": message.type,
        "fields": message.fields,
        "arrays": [{"dtype": a.dtype.name, "shape": list(a.shape), "hex": a.tobytes().hex()} for a in message.arrays],
    }


def python_outcome(case: dict[str, Any]) -> dict[str, Any]:
    """What ``webnet_magic.protocol`` makes of one case (errors other than ProtocolError propagate)."""
    budget = case.get("budget")
    assembler = Assembler(None if budget is None else lambda type_, fields: budget)
    outcome: dict[str, Any] = {"messages": [], "accepted": 0}
    try:
        for frame in case["frames"]:
            message = assembler.feed(bytes.fromhex(frame))
            outcome["accepted"] += 1
            if message is not None:
                outcome["messages"].append(meaning(message))
    except ProtocolError as exc:
        outcome["refused"] = str(exc)
    if case.get("encode"):
        (m,) = case["messages"]
        arrays = [np.frombuffer(bytes.fromhex(a["hex"]), a["dtype"]).reshape(a["shape"]) for a in m["arrays"]]
        frames = encode(Message(m["type"], m["fields"], arrays), case["encode"]["id"], case["encode"]["chunk"])
        outcome["encoded"] = [f.hex() for f in frames]
    return outcome


def check(case: dict[str, Any], outcome: dict[str, Any]) -> None:
    """Assert that a side's outcome for ``case`` is what the golden file says."""
    assert "crashed" not in outcome, f"{case['name']}: {outcome['crashed']}"
    if "reason" in case:
        assert "refused" in outcome, f"{case['name']}: accepted, decoding {outcome['messages']}"
        assert case["reason"] in outcome["refused"], f"{case['name']}: refused for {outcome['refused']!r}"
        assert outcome["accepted"] == len(case["frames"]) - 1, f"{case['name']}: refused too early"
        return
    assert "refused" not in outcome, f"{case['name']}: refused: {outcome['refused']}"
    assert outcome["messages"] == case["messages"]
    if case["encode"]:
        assert outcome["encoded"] == case["frames"]

"""Typed device records: what the notebook side decides from, and the one place the panel's rows come from."""

from __future__ import annotations

from dataclasses import replace

import pytest

from webnet_magic.broker.placement import shard_weights
from webnet_magic.broker.records import DeviceRecord, DeviceState
from webnet_magic.broker.thread import BrokerThread

from .peers import Peer


@pytest.mark.parametrize(
    ("state", "usable", "ready"),
    [
        (DeviceState.IDLE, True, True),
        (DeviceState.BUSY, True, True),
        (DeviceState.CALIBRATING, True, False),
        (DeviceState.BANNED, False, False),
        (DeviceState.NO_WEBGPU, False, False),
        (DeviceState.CLOSING, False, False),
    ],
)
def test_a_state_says_whether_the_device_takes_work(state: DeviceState, usable: bool, ready: bool) -> None:
    record = DeviceRecord("d1", state=state)
    assert (record.usable, record.ready) == (usable, ready)
    assert record.display()["state"] == state.value and record.display()["banned"] == (state is DeviceState.BANNED)


def test_the_panel_rounds_for_reading_and_decisions_use_what_was_measured() -> None:
    """Two devices the panel shows at 1.00 GF/s are still sized by their measured speeds."""
    slower = DeviceRecord("d1", speed=1.0e9, rate=12_345_678.0, round_trip=0.0123456, backlog=0.12345)
    faster = replace(slower, id="d2", speed=1.004e9)
    assert slower.display()["gflops"] == faster.display()["gflops"] == 1.0
    shown = slower.display()
    assert (shown["link_mbps"], shown["rtt_ms"], shown["backlog_s"]) == (12.3, 12.3, 0.123)
    small, large = shard_weights([slower, faster], 2.004e9)
    assert large / small == pytest.approx(1.004)


def test_a_broker_gives_records_and_shows_their_display(peers: list[Peer]) -> None:
    """A joined device is a typed record on the notebook side; its panel row is that record's display."""
    thread = BrokerThread(calibrate=False).start()
    try:
        peers.append(Peer(thread))
        (record,) = thread.records()
        assert record.state is DeviceState.IDLE and record.speed is None and record.ready
        assert record.limits["maxBufferSize"] == 1 << 20
        (shown,) = thread.devices()  # (its figures move on with each heartbeat)
        assert shown.keys() == record.display().keys() and (shown["id"], shown["state"]) == ("d1", "idle")
        assert thread.fleet()["devices"][0].keys() == shown.keys()
    finally:
        thread.stop()

"""One settings object (webnet_magic.config.Config) for the broker, its scheduler, workers and notebook side."""

from __future__ import annotations

import math
import threading

import pytest

from webnet_magic.broker.thread import BrokerThread
from webnet_magic.client.session import Session
from webnet_magic.config import DEFAULTS, Config

from .peers import Peer


def test_the_settings_given_to_a_session_reach_every_part() -> None:
    """Keywords override the defaults once; the broker, its scheduler and the session read that one object."""
    session = Session(tunnel="off", heartbeat=0.5, silence_limit=4.0, lease=7.0, attempts=2, depth=1, timeout=9.0)
    try:
        config = session.config
        assert config == DEFAULTS.updated(heartbeat=0.5, silence_limit=4.0, lease=7.0, attempts=2, depth=1, timeout=9.0)
        assert session.broker.config is config and session.broker.broker.config is config
        scheduler = session.broker.broker.scheduler
        assert (scheduler.lease, scheduler.max_attempts, scheduler.cancel_grace) == (7.0, 2, 4.0)
        assert (scheduler.placement.depth, scheduler.placement.hold_bytes) == (1, DEFAULTS.hold_bytes)
        assert session._timeout(None) == 9.0
    finally:
        session.stop()


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"heartbeet": 1.0}, TypeError, "unknown setting.*'heartbeet'; the settings are heartbeat, silence_limit"),
        ({"heartbeat": 0}, ValueError, "heartbeat must be a positive number of seconds, not 0"),
        ({"timeout": math.nan}, ValueError, "timeout must be a positive number of seconds, not nan"),
        ({"attempts": 1.5}, ValueError, "attempts must be a whole number, 1 or more, not 1.5"),
        ({"depth": 0}, ValueError, "depth must be a positive number of jobs"),
        ({"calibrate": "yes"}, ValueError, "calibrate must be True or False"),
        ({"progress_after": -1}, ValueError, "progress_after must be a number of seconds, 0 or more"),
    ],
)
def test_a_setting_that_does_not_exist_or_makes_no_sense_is_refused_before_anything_starts(
    settings: dict, error: type, message: str
) -> None:
    brokers = {t for t in threading.enumerate() if t.name == "webnet-broker"}
    with pytest.raises(error, match=message):
        Session(tunnel="off", **settings)
    with pytest.raises(error, match=message):
        Config(**settings) if error is ValueError else DEFAULTS.updated(**settings)
    assert not {t for t in threading.enumerate() if t.name == "webnet-broker"} - brokers  # none started


def test_the_welcome_tells_a_worker_the_broker_s_timings(peers: list[Peer]) -> None:
    """Workers keep to the broker's heartbeat and silence limit (they restate no defaults of their own)."""
    thread = BrokerThread(heartbeat=0.25, silence_limit=5.0, calibrate=False).start()
    try:
        peer = Peer(thread)
        peers.append(peer)
        assert peer.welcome is not None
        assert (peer.welcome.fields["heartbeat"], peer.welcome.fields["silence"]) == (0.25, 5.0)
    finally:
        thread.stop()

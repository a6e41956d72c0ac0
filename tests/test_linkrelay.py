"""The relay that shapes loopback like a phone's link, and holds a direction while a test acts."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from webnet_magic.testing.linkrelay import LOOPBACK, Direction, Link, LinkRelay

from .conftest import wait_until


def test_the_relay_carries_bytes_intact_both_ways() -> None:
    """What goes in one end comes out the other, in order, and the relay counts it."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        echo = threading.Thread(target=_echo_once, args=(server,), daemon=True)
        echo.start()
        with LinkRelay(port, Link.symmetric("fast", 50e6, 0.005)) as relay:
            payload = np.random.default_rng(0).bytes(3_000_000)
            with socket.create_connection(("127.0.0.1", relay.port)) as conn:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)
                back = b"".join(iter(lambda: conn.recv(1 << 16), b""))
        assert back == payload
        assert relay.moved == {"down": len(payload), "up": len(payload)}


def _echo_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(1 << 16):
            conn.sendall(data)


def test_a_receiver_that_stops_reading_holds_the_sender_back() -> None:
    """Back-pressure: the relay stops reading when its line is full, so the sender's writes block."""
    server = socket.create_server(("127.0.0.1", 0))
    with server, LinkRelay(server.getsockname()[1], Link.symmetric("slow", 1e6, 0.01)) as relay:
        conn = socket.create_connection(("127.0.0.1", relay.port))
        idle, _ = server.accept()  # accepted and never read
        conn.setblocking(False)
        accepted, block = 0, b"\0" * (1 << 16)
        while accepted < 64 << 20 and select.select([], [conn], [], 1.0)[1]:
            try:
                accepted += conn.send(block)
            except BlockingIOError:
                continue
        conn.close()
        idle.close()
    assert accepted < 16 << 20  # socket buffers and a bounded line, not 64 MB held in the relay


def test_a_link_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="positive number of bytes per second"):
        Direction(rate=0)
    with pytest.raises(ValueError, match="non-negative number of seconds"):
        Direction(rate=1e6, delay=-1)


@pytest.fixture
def ends() -> Iterator[tuple[LinkRelay, socket.socket, socket.socket]]:
    """A relay on loopback, a connection through it (the worker's end) and the far end (the broker's)."""
    with socket.create_server(("127.0.0.1", 0)) as server, LinkRelay(server.getsockname()[1], LOOPBACK) as relay:
        near = socket.create_connection(("127.0.0.1", relay.port))
        far, _ = server.accept()
        with near, far:
            yield relay, near, far


def test_a_held_direction_delivers_nothing_until_released(ends) -> None:
    """Held: the bytes wait in the relay (more than its line holds when flowing) while the other way
    still flows; released: they arrive whole and in order."""
    relay, near, far = ends
    payload = np.random.default_rng(1).bytes(2_000_000)
    relay.hold("up")
    near.sendall(payload)
    wait_until(lambda: relay.waiting("up") == len(payload), 30, "the relay to hold the payload")
    assert not select.select([far], [], [], 0)[0] and relay.moved["up"] == 0
    far.sendall(b"the other way")
    assert near.recv(100) == b"the other way"
    relay.release("up")
    far.settimeout(30)
    received = b""
    while len(received) < len(payload):
        received += far.recv(1 << 16)
    assert received == payload and relay.moved["up"] == len(payload) and relay.waiting("up") == 0


def test_a_sender_that_closes_while_held_loses_what_was_held(ends) -> None:
    """As a worker killed before its answer got through: the far end sees the link close, and no byte."""
    relay, near, far = ends
    relay.hold("up")
    near.sendall(b"an answer that never arrives")
    near.shutdown(socket.SHUT_WR)
    far.settimeout(30)
    try:
        received = b"".join(iter(lambda: far.recv(1 << 16), b""))
    except ConnectionResetError:
        received = b""
    assert received == b"" and relay.moved["up"] == 0


def test_a_hold_applies_to_connections_made_later_and_names_a_direction() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, LinkRelay(server.getsockname()[1], LOOPBACK) as relay:
        relay.hold("down")
        with socket.create_connection(("127.0.0.1", relay.port)) as near, server.accept()[0] as far:
            far.sendall(b"held")
            wait_until(lambda: relay.waiting("down") == 4, 30, "the relay to hold the bytes")
            assert not select.select([near], [], [], 0)[0]
            relay.release("down")
            near.settimeout(30)
            assert near.recv(100) == b"held"
        with pytest.raises(ValueError, match="'down' or 'up'"):
            relay.hold("sideways")

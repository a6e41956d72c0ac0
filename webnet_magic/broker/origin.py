"""Where a worker's connection comes from, as far as the broker can know: its address and user agent.

Two rules lean on it.  Each address may hold only :data:`MAX_PER_ADDRESS` of the broker's
worker connections, so one machine with the token cannot take every slot.  And a device
banned by ``--verify`` that comes back without its resume secret (a reloaded page, a
restarted worker) is known again by its *identity*: the same address, user agent, runtime
and adapter, which a reloaded page keeps.

What cannot be known: a client that changes its user agent or adapter name, or moves to
another address, is a stranger again (the scheduler's retries cope with that, see
:meth:`~webnet_magic.broker.scheduler.Scheduler._choose`); and devices of one model behind
one address (two identical phones on one Wi-Fi, seen through a tunnel) share an identity.
Through a tunnel every connection arrives from the agent on loopback; the agent names the
client in ``X-Forwarded-For`` (its last entry: the address the agent saw), which is believed
only for connections that came through the tunnel, from loopback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from .hello import printable

#: Worker connections one address may hold at once (of the broker's 64).
MAX_PER_ADDRESS = 16


@dataclass(frozen=True)
class Origin:
    """A connection's address (the client's, through a tunnel) and the user agent it sent."""

    address: str
    agent: str


def origin_of(remote_ip: str | None, headers: Mapping[str, str], tunneled: bool) -> Origin:
    """The origin of a request from ``remote_ip`` with ``headers``; ``tunneled``: it came by the tunnel's name."""
    address = remote_ip or ""
    if tunneled and _loopback(address):
        forwarded = headers.get("X-Forwarded-For", "").split(",")[-1].strip()
        if _ip(forwarded):
            address = forwarded
    return Origin(address, printable(headers.get("User-Agent", ""), 200))


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _loopback(address: str) -> bool:
    return _ip(address) and ipaddress.ip_address(address).is_loopback

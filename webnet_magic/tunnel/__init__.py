"""How a phone reaches the broker: this machine only, an ngrok tunnel, or https on the LAN.

WebGPU needs a secure context (https, or a page on localhost), and a phone can reach
neither a Colab kernel nor ``127.0.0.1``.  :func:`expose` picks the link the QR code
shows and says, in words for the panel, what the person holding the phone will see.
Whatever fails (no authtoken, no pyngrok, no network, a refused token) leaves the broker
serving this machine, with the reason in :attr:`Reach.problem`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import TunnelError
from .authtoken import NAME, find_authtoken, hosted

if TYPE_CHECKING:
    from ..broker.thread import BrokerThread

MODES = ("auto", "ngrok", "off")
FREE_TIER_BYTES = 1_000_000_000  # ngrok's free tier: about 1 GB out a month

LOCAL = (
    "This link works in a browser on this machine only: WebGPU needs https or localhost, and a phone "
    "cannot reach 127.0.0.1. For a phone: %webnet start --tunnel ngrok (any network; a free ngrok "
    "authtoken) or --lan (the same Wi-Fi)."
)
HOSTED = (
    "In {where} a phone can reach this notebook only through a tunnel: add a secret named {name} "
    "(your free token from dashboard.ngrok.com), then %webnet stop and %webnet start."
)
NGROK = (
    "Through an ngrok tunnel, from any network. The first visit shows ngrok's warning page: tap "
    "Visit Site. The free tier carries about 1 GB a month; the bytes through it are counted below."
)
LAN = (
    "On this Wi-Fi, over https with a certificate made for this session. The phone will say the "
    "connection is not private: tap Show Details (Safari) or Advanced (Chrome), then visit the "
    "website / Proceed. The certificate's SHA-256 fingerprint starts {fingerprint}."
)


@dataclass
class Reach:
    """The link for the QR code (token included), what kind it is, and what the panel says about it."""

    url: str
    kind: str  # "local", "ngrok" or "lan"
    note: str
    problem: str = ""  # why the tunnel or https mode that was asked for is not there
    close: Callable[[], None] = field(default=lambda: None, repr=False)


def expose(
    broker: BrokerThread, *, tunnel: str = "auto", authtoken: str | None = None, lan: bool | str = False
) -> Reach:
    """Open what ``tunnel`` and ``lan`` ask for on ``broker`` and say how a phone gets there.

    ``tunnel="auto"`` opens ngrok in Colab or Kaggle when an authtoken is found (without
    asking for one); ``"ngrok"`` opens it anywhere and may prompt for the token; ``"off"``
    opens nothing.  ``lan`` (True, or the address to serve on) serves https on the local
    network instead.
    """
    if tunnel not in MODES:
        raise ValueError(f"tunnel must be one of {', '.join(MODES)}, not {tunnel!r}")
    if lan and tunnel == "ngrok":
        raise ValueError("choose --tunnel ngrok or --lan, not both")
    where = hosted()
    local = Reach(broker.url, "local", HOSTED.format(where=where.title(), name=NAME) if where else LOCAL)
    if lan:
        try:
            return _lan(broker, lan if isinstance(lan, str) else None)
        except TunnelError as exc:
            local.problem = str(exc)
            return local
    if tunnel == "off" or (tunnel == "auto" and where is None):
        return local
    token = find_authtoken(authtoken, prompt=tunnel == "ngrok")
    if token is None:
        if tunnel == "ngrok":
            local.problem = (
                f"no ngrok authtoken: pass --authtoken, or set {NAME} (environment variable, or a Colab or "
                "Kaggle secret) to your free token from https://dashboard.ngrok.com/get-started/your-authtoken"
            )
        return local
    from .ngrok import open_ngrok

    try:
        opened = open_ngrok(broker.port, token)
    except TunnelError as exc:
        local.problem = str(exc)
        return local
    broker.expose_through(opened.host)
    return Reach(f"{opened.public_url}/?token={broker.token}", "ngrok", NGROK, close=opened.close)


def _lan(broker: BrokerThread, address: str | None) -> Reach:
    from .lan import lan_address, make_certificate

    address = address or lan_address()
    certificate = make_certificate(address)
    try:
        port = broker.serve_https(address, certificate.context, broker.port)
    except OSError:
        try:
            port = broker.serve_https(address, certificate.context)  # that port is taken there
        except OSError as exc:
            raise TunnelError(f"cannot serve https on {address}: {exc.strerror or exc}") from None
    host = f"[{address}]" if ":" in address else address
    note = LAN.format(fingerprint=certificate.fingerprint[:23])
    return Reach(f"https://{host}:{port}/?token={broker.token}", "lan", note)

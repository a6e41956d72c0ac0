"""An https address for the broker's one port through ngrok, driven by pyngrok.

pyngrok runs the ngrok agent (downloading it on first use) and asks the agent's local
API for an endpoint.  What this module adds:

- the authtoken goes to the agent in a private config file (mode 0600, deleted once the
  agent has read it), not on its command line, where ``ps`` would show it;
- the whole start runs under one deadline of our own: pyngrok reads the agent's log line by
  line, and an agent that stops printing would otherwise hold the notebook forever;
- each way it can fail (pyngrok missing, the agent not downloadable, the token refused, the
  account's limit reached) becomes one message that says what to do, with the token
  scrubbed from anything ngrok said.

The page and its WebSocket share the tunnel's one origin, so ngrok's free-tier warning page,
passed once in the browser, covers the socket too.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .._threads import run_with_deadline
from ..errors import TunnelError
from .authtoken import DASHBOARD, Authtoken

START_TIMEOUT = 30.0  # seconds for download (pyngrok gives it 6), agent start and endpoint
AUTH_REFUSED = ("ERR_NGROK_105", "ERR_NGROK_107", "authentication failed")
LIMIT_REACHED = ("ERR_NGROK_108", "ERR_NGROK_324", "limited to")


@dataclass
class Tunnel:
    """An open tunnel: its public https URL (no token) and how to close it."""

    public_url: str
    close: Callable[[], None]

    @property
    def host(self) -> str:
        """The ``Host`` header requests through the tunnel carry (ngrok passes it on unchanged)."""
        return urlsplit(self.public_url).netloc


def open_ngrok(port: int, authtoken: Authtoken, timeout: float = START_TIMEOUT) -> Tunnel:
    """An ngrok endpoint forwarding https to ``127.0.0.1:port``; raises :class:`TunnelError`."""
    try:
        from pyngrok import conf, ngrok, process
    except ImportError:
        raise TunnelError(
            "ngrok tunnels need pyngrok: pip install 'webnet-magic[tunnel]' (or pip install pyngrok), "
            "then %webnet stop and %webnet start --tunnel ngrok"
        ) from None
    private = tempfile.mkdtemp(prefix="webnet-ngrok-")  # 0700
    config_path = os.path.join(private, "ngrok.yml")
    descriptor = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(f'version: "3"\nagent:\n  authtoken: "{_yaml_escape(authtoken.value)}"\n')
    config = conf.PyngrokConfig(config_path=config_path, startup_timeout=int(timeout))
    config.auth_token = None  # pyngrok would put NGROK_AUTHTOKEN from the environment on the command line

    def kill() -> None:
        # Not ngrok.kill(): it takes the lock that pyngrok's start holds while it reads the log.
        running = process._current_processes.get(config.ngrok_path)
        if running is not None:
            with contextlib.suppress(OSError):
                running.proc.kill()

    try:
        endpoint: Any = run_with_deadline(
            lambda: ngrok.connect(f"http://127.0.0.1:{port}", "http", pyngrok_config=config),
            timeout,
            on_timeout=kill,
        )
    except TimeoutError:
        raise TunnelError(
            f"the ngrok agent did not open a tunnel within {timeout:g} s; the broker keeps running on this "
            "machine. Try again, or use --lan on the same Wi-Fi"
        ) from None
    except Exception as exc:
        kill()
        raise TunnelError(_explain(exc, authtoken)) from None
    finally:
        shutil.rmtree(private, ignore_errors=True)
    public_url = str(endpoint.public_url)
    if public_url.startswith("http://"):  # an https address is what gives the page WebGPU
        public_url = "https://" + public_url.removeprefix("http://")

    def close() -> None:
        # Stopping the agent closes its endpoint.  Not ngrok.disconnect(): it would start a
        # new agent if this one had died, and write a default config where ours was.
        with contextlib.suppress(Exception):
            ngrok.kill(config)

    return Tunnel(public_url, close)


def _explain(exc: BaseException, authtoken: Authtoken) -> str:
    """One message for a pyngrok failure: what happened and what to do; never the token."""
    said = " ".join(str(part) for part in (exc, getattr(exc, "ngrok_error", None) or "") if part)
    said = said.replace(authtoken.value, "<authtoken>").replace("\\n", " ").replace("\r", " ").replace("\n", " ")
    said = " ".join(said.split())
    kind = type(exc).__name__
    if kind == "PyngrokNgrokInstallError":
        return (
            f"could not download the ngrok agent ({said}). Without internet access it cannot be fetched: "
            "install ngrok yourself and set PYNGROK_NGROK_PATH to it, or use --lan on the same Wi-Fi. "
            "The broker keeps running on this machine"
        )
    if any(code in said for code in AUTH_REFUSED):
        return (
            f"ngrok refused {authtoken} ({said}). Copy it again from {DASHBOARD}. "
            "The broker keeps running on this machine"
        )
    if any(code in said for code in LIMIT_REACHED):
        return (
            f"your ngrok account's limit is reached ({said}): stop the other ngrok agent or tunnel "
            "(https://dashboard.ngrok.com/agents), then %webnet stop and start again. "
            "The broker keeps running on this machine"
        )
    return f"ngrok did not open a tunnel ({kind}: {said}). The broker keeps running on this machine"


def _yaml_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')

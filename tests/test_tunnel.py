"""Reaching the broker from a phone: ngrok through a stand-in agent, https on the LAN, authtokens.

ngrok's service cannot be reached from here, so pyngrok runs ``tests/standin_ngrok.py``
as its agent (``PYNGROK_NGROK_PATH``): pyngrok, its process handling and its API calls are
the real ones, and Chromium reaches the worker page through the stand-in's https edge,
warning page included, as a phone would.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from webnet_magic.client import session as sessions
from webnet_magic.errors import TunnelError
from webnet_magic.tunnel.authtoken import find_authtoken, hosted
from webnet_magic.tunnel.lan import lan_address
from webnet_magic.tunnel.ngrok import open_ngrok

from .conftest import wait_until

STANDIN = Path(__file__).with_name("standin_ngrok.py")
TUNNEL_HOST = "tunnel.webnet.test"  # Chromium maps it to 127.0.0.1 (conftest)


@pytest.fixture
def agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The stand-in as the ngrok binary pyngrok starts; yields its byte log."""
    binary = tmp_path / "ngrok"
    binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" "$@"\n')
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    record = tmp_path / "bytes.log"
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(binary))
    monkeypatch.setenv("STANDIN_HOST", TUNNEL_HOST)
    monkeypatch.setenv("STANDIN_LOG", str(record))
    monkeypatch.delenv("NGROK_AUTHTOKEN", raising=False)
    yield record


def agent_running() -> bool:
    found = subprocess.run(["pgrep", "-f", str(STANDIN)], capture_output=True, text=True)
    return bool(found.stdout.strip())


@pytest.fixture
def phone(chromium: object) -> Iterator[object]:
    """A browser that accepts the stand-in's and the LAN mode's self-made certificates."""
    context = chromium.new_context(ignore_https_errors=True)  # type: ignore[attr-defined]
    yield context.new_page()
    context.close()


def test_a_phone_reaches_the_notebook_through_the_tunnel_past_the_warning_page(
    agent: Path, shell, phone, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("NGROK_AUTHTOKEN", "standin-good")
    private_before = set(Path(tempfile.gettempdir()).glob("webnet-*"))
    assert shell.run_cell("%webnet start --tunnel ngrok").success
    assert set(Path(tempfile.gettempdir()).glob("webnet-*")) == private_before  # the token's file is gone
    session = sessions.current()
    assert session.reach.kind == "ngrok" and not session.reach.problem
    assert session.url.startswith(f"https://{TUNNEL_HOST}:") and session.url.endswith(f"/?token={session.broker.token}")
    panel = session.panel()
    assert panel.url == session.url and "warning page" in panel.note and "standin-good" not in capsys.readouterr().out

    phone.goto(session.url)  # what the QR code opens
    assert "You are about to visit" in phone.inner_text("h1")
    phone.click("#visit")  # once; the page's WebSocket carries the cookie on the same origin
    session.wait_for_devices(1, 60)
    assert phone.evaluate("location.protocol") == "https:" and phone.evaluate("isSecureContext")
    shell.run_cell("import numpy as np\nA = np.random.rand(64, 48).astype(np.float32)\nB = np.ones((48, 8), 'f4')")
    result = shell.run_cell("%webnet A @ B -> C")
    assert result.success, result.error_in_exec
    np.testing.assert_allclose(shell.user_ns["C"], shell.user_ns["A"] @ shell.user_ns["B"], rtol=1e-5)
    through = session.broker.fleet()["tunnel"]
    assert through > 64 * 48 * 4  # page, scripts, calibration and the job all came through it
    wait_until(lambda: panel.tunnel == session.broker.fleet()["tunnel"], 5, "the panel's tunnel bytes")
    shell.run_cell("%webnet status")
    assert "through the ngrok tunnel:" in capsys.readouterr().out

    shell.run_cell("%webnet stop")
    wait_until(lambda: not agent_running(), 10, "the agent to be stopped with the broker")
    assert set(Path(tempfile.gettempdir()).glob("webnet-*")) == private_before
    assert int(agent.read_text()) >= through  # the edge carried what the broker counted, and headers


@pytest.mark.parametrize(
    ("token", "said"),
    [
        ("standin-refused", "ngrok refused the ngrok authtoken from the argument (The ngrok process errored"),
        ("standin-busy", "your ngrok account's limit is reached"),
    ],
)
def test_a_refused_or_busy_account_is_one_message_and_the_broker_stays_local(
    agent: Path, shell, capsys, token: str, said: str
) -> None:
    started = time.monotonic()
    assert shell.run_cell(f"%webnet start --tunnel ngrok --authtoken {token}").success
    out = capsys.readouterr().out
    assert said in out and "The broker keeps running on this machine" in out and token not in out
    session = sessions.current()
    assert session.running and session.reach.kind == "local" and session.url.startswith("http://127.0.0.1:")
    assert time.monotonic() - started < 20 and not agent_running()


def test_an_agent_that_never_answers_is_given_up_on(agent: Path) -> None:
    authtoken = find_authtoken("standin-silent")
    assert authtoken is not None
    started = time.monotonic()
    with pytest.raises(TunnelError, match="did not open a tunnel within 2 s"):
        open_ngrok(9, authtoken, timeout=2)
    assert time.monotonic() - started < 6
    wait_until(lambda: not agent_running(), 10, "the silent agent to be killed")


def test_without_network_the_agent_download_fails_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No agent installed and no way out: pyngrok's download is sent to a closed loopback port."""
    monkeypatch.setenv("PYNGROK_NGROK_PATH", str(tmp_path / "nowhere" / "ngrok"))
    for proxy in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(proxy, "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "")
    monkeypatch.setenv("NO_PROXY", "")
    session = sessions.Session(tunnel="ngrok", authtoken="any-token")
    try:
        assert "could not download the ngrok agent" in session.reach.problem
        assert "PYNGROK_NGROK_PATH" in session.reach.problem and session.running
    finally:
        session.stop()


def test_without_pyngrok_the_message_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['pyngrok'] = None\n"  # as if it were not installed
        "import webnet_magic as wm\n"
        "s = wm.start(tunnel='ngrok', authtoken='any-token')\n"
        "print(s.reach.problem); print(s.url); wm.stop()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "pip install 'webnet-magic[tunnel]'" in out and "http://127.0.0.1:" in out


def test_auto_opens_nothing_outside_colab_and_kaggle_and_asks_for_nothing(
    shell, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NGROK_AUTHTOKEN", "standin-good")
    assert shell.run_cell("%webnet start").success
    session = sessions.current()
    assert session.reach.kind == "local" and "--tunnel ngrok" in session.reach.note


STAND_INS = ("google.colab.userdata", "google.colab", "google", "kaggle_secrets")


@pytest.fixture
def hosted_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for stand-in Colab and Kaggle modules, forgotten afterwards
    (an imported ``google.colab`` left in sys.modules would make every later session "in Colab")."""
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for module in STAND_INS:
        sys.modules.pop(module, None)


def test_authtokens_are_found_in_the_order_users_expect(hosted_modules: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Argument, then environment, then a Colab secret, then a Kaggle secret; the value never shows."""
    colab = hosted_modules / "google" / "colab"
    colab.mkdir(parents=True)
    (colab / "__init__.py").write_text("")
    (colab / "userdata.py").write_text("def get(name):\n    return {'NGROK_AUTHTOKEN': 'from-colab'}[name]\n")
    (hosted_modules / "kaggle_secrets.py").write_text(
        "class UserSecretsClient:\n    def get_secret(self, name):\n        return 'from-kaggle'\n"
    )
    monkeypatch.setenv("NGROK_AUTHTOKEN", "from-env")
    assert find_authtoken(" given ").value == "given"  # type: ignore[union-attr]
    found = find_authtoken()
    assert found is not None and found.value == "from-env" and "from-env" not in f"{found!r} {found}"
    monkeypatch.delenv("NGROK_AUTHTOKEN")
    assert find_authtoken().source == "Colab's secret NGROK_AUTHTOKEN"  # type: ignore[union-attr]
    (colab / "userdata.py").write_text("def get(name):\n    raise KeyError(name)\n")  # no such secret
    for module in STAND_INS[:3]:
        sys.modules.pop(module, None)
    assert find_authtoken().value == "from-kaggle"  # type: ignore[union-attr]
    assert hosted() == "colab"  # google.colab is imported now, as in a Colab kernel


def test_colab_and_kaggle_are_recognised_by_their_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("COLAB_RELEASE_TAG", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(name, raising=False)
    assert hosted() is None
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert hosted() == "kaggle"
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab-20261127")
    assert hosted() == "colab"


def test_lan_mode_serves_https_with_a_session_certificate(shell, phone, capsys) -> None:
    """--lan on an address (loopback here: test traffic stays on this machine) serves the page over
    https with a certificate made for the session, whose fingerprint the panel quotes."""
    assert shell.run_cell("%webnet start --lan 127.0.0.1").success
    session = sessions.current()
    assert session.reach.kind == "lan" and session.url.startswith("https://127.0.0.1:")
    port = int(session.url.split(":")[2].split("/")[0])
    assert port != session.broker.port  # the http listener keeps its port for local workers
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, context.wrap_socket(raw) as tls:
        served = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest().upper()  # type: ignore[arg-type]
    shown = session.reach.note.split("starts ")[1].rstrip(".")
    assert served.startswith(shown.replace(":", "")) and "not private" in session.reach.note
    phone.goto(session.url)
    session.wait_for_devices(1, 60)
    assert phone.evaluate("isSecureContext")
    shell.run_cell("import numpy as np\nA = np.eye(16, dtype=np.float32)")
    assert shell.run_cell("%webnet A @ A -> C").success
    np.testing.assert_array_equal(shell.user_ns["C"], np.eye(16))


def test_the_lan_address_is_this_machines_own() -> None:
    try:
        address = lan_address()
    except TunnelError as exc:  # a machine with no network at all
        assert "no local network address" in str(exc)
        return
    assert not address.startswith("127.") and socket.inet_aton(address)

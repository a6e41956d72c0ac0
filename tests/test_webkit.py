"""The worker page in WebKit, Safari's engine (what every iPhone browser runs): WebKitGTK's
WebKitWebDriver under Selenium, in Xvfb.  This build has no WebGPU backend (``navigator.gpu`` is
null even with ``--features=+WebGPU``), so what it checks is the page's JavaScript in
JavaScriptCore: that it loads, that its protocol reads and writes the golden frames as Python does,
and that it tells a real broker on loopback it has no WebGPU, and why.

Where WebKit is not installed the module is skipped with the reason; under CI (``CI`` set) that is a
failure instead.  One WebKit session serves the whole module.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from webnet_magic import protocol
from webnet_magic.broker.thread import BrokerThread

from .conftest import wait_until
from .golden import CASES, CHECK_JS, GOLDEN, check

DRIVER = "WebKitWebDriver"
MINIBROWSER = "/usr/lib/*/webkit2gtk-4.*/MiniBrowser"


def missing_parts() -> list[str]:
    """What this machine lacks to run WebKit (empty when nothing)."""
    missing = [name for name in (DRIVER, "Xvfb") if shutil.which(name) is None]
    if not glob.glob(MINIBROWSER):
        missing.append("MiniBrowser (libwebkit2gtk)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    return missing


def start_xvfb() -> tuple[subprocess.Popen[bytes], str]:
    """A virtual X display of its own: Xvfb picks a free number and writes it to a pipe (-displayfd)."""
    read, write = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
        pass_fds=(write,),
        stderr=subprocess.DEVNULL,
    )
    os.close(write)
    with os.fdopen(read) as pipe:
        number = pipe.readline().strip()
    if not number:
        xvfb.kill()
        raise RuntimeError("Xvfb did not start")
    return xvfb, f":{number}"


@pytest.fixture(scope="module")
def webkit() -> Iterator[Any]:
    """One WebKit session (MiniBrowser in automation mode) on a display of its own."""
    missing = missing_parts()
    if missing:
        reason = f"WebKit is not installed here (missing {', '.join(missing)}): run scripts/install-system-deps"
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason + "; CI must run the WebKit tests")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.webkitgtk.service import Service

    xvfb, display = start_xvfb()
    options = webdriver.WebKitGTKOptions()
    options.binary_location = sorted(glob.glob(MINIBROWSER))[-1]
    # These arguments replace the driver's default --automation, so it is given again.
    for argument in ("--automation", "--features=+WebGPU"):
        options.add_argument(argument)
    service = Service(executable_path=shutil.which(DRIVER), env={**os.environ, "DISPLAY": display})
    try:
        driver = webdriver.WebKitGTK(options=options, service=service)
    except Exception:
        xvfb.kill()
        raise
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    xvfb.terminate()
    xvfb.wait(10)


@pytest.fixture(scope="module")
def webkit_page(webkit: Any) -> Iterator[tuple[Any, BrokerThread]]:
    """The worker page, loaded in WebKit from a broker on loopback, once it has said hello."""
    broker = BrokerThread(calibrate=False).start()
    webkit.get(broker.url)
    wait_until(broker.devices, 60, "the WebKit page to say hello")
    yield webkit, broker
    broker.stop()


def run_async(driver: Any, function: str, *args: Any) -> Any:
    """Await ``function(...args)`` (an async function's source) in the page; its value, or the error it threw."""
    script = (
        "const done = arguments[arguments.length - 1];"
        f"({function})(...Array.from(arguments).slice(0, -1))"
        ".then(done, (e) => done({ thrown: `${e.name}: ${e.message}` }));"
    )
    return driver.execute_async_script(script, *args)


def test_the_page_tells_the_broker_it_has_no_webgpu_and_why(webkit_page: tuple[Any, BrokerThread]) -> None:
    """In JavaScriptCore the page loads, joins a real broker and says it has no WebGPU: the broker lists
    the device as a Safari page with no WebGPU and the page's reason, and the page shows the same."""
    driver, broker = webkit_page
    (device,) = broker.devices()
    assert "AppleWebKit" in driver.execute_script("return navigator.userAgent")
    assert device["runtime"] == "browser" and device["name"].startswith("Safari")
    assert device["state"] == "no WebGPU"
    assert "no WebGPU" in device["reason"]
    wait_until(lambda: driver.execute_script("return window.webnet.status") == "no WebGPU", 30, "the page's status")
    assert device["reason"] == driver.execute_script("return window.webnet.detail")


def test_webkit_loads_the_spec_that_python_reads(webkit_page: tuple[Any, BrokerThread]) -> None:
    """The page's protocol.js in JavaScriptCore exports the spec's constants, the values Python holds."""
    driver, _ = webkit_page
    page = run_async(
        driver,
        """async () => {
          const p = await import("/protocol.js");
          return { spec: p.SPEC, close: p.CLOSE, version: p.VERSION, maxHeadJson: p.MAX_HEAD_JSON,
                   maxMessageBytes: p.MAX_MESSAGE_BYTES, maxRank: p.MAX_RANK };
        }""",
    )
    assert "thrown" not in page, page
    assert page["spec"] == json.loads(json.dumps(protocol.SPEC))
    assert page["close"] == {name: getattr(protocol, f"CLOSE_{name}") for name in protocol.SPEC["close"]}
    assert (page["version"], page["maxHeadJson"], page["maxMessageBytes"], page["maxRank"]) == (
        protocol.VERSION,
        protocol.MAX_HEAD_JSON,
        protocol.MAX_MESSAGE_BYTES,
        protocol.MAX_RANK,
    )


@pytest.fixture(scope="module")
def webkit_outcomes(webkit_page: tuple[Any, BrokerThread]) -> dict[str, dict]:
    outcomes = run_async(webkit_page[0], CHECK_JS, GOLDEN)
    assert "thrown" not in outcomes, outcomes
    return outcomes


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_webkit_reads_writes_and_refuses_the_golden_frames(webkit_outcomes: dict[str, dict], case: dict) -> None:
    """In JavaScriptCore, each golden frame decodes to its meaning (which encodes back to the same
    bytes), or is refused with its reason: the same outcome as webnet_magic.protocol's and Chromium's."""
    check(case, webkit_outcomes[case["name"]])

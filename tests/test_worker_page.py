"""What the worker page says to the person holding the device, in headless Chromium with real WebGPU."""

from __future__ import annotations

from webnet_magic.broker.thread import BrokerThread

from .conftest import wait_until

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 26_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/26.0 Mobile/15E148 Safari/604.1"
)


def joined(page, broker: BrokerThread) -> None:
    page.goto(broker.url)
    wait_until(broker.devices, 30, "the page to join")
    page.wait_for_function("window.webnet.status === 'idle'")


def test_a_joined_page_says_in_plain_words_that_it_helps_and_to_keep_it_open(page, broker: BrokerThread) -> None:
    """Not 'idle': a headline, what it is waiting for, and the footer asking to keep the page open."""
    joined(page, broker)
    assert page.inner_text("#status") == "Ready"
    assert page.inner_text("#detail") == "Connected. Waiting for work from the notebook."
    assert page.is_visible("#hint")
    hint = page.inner_text("#hint")
    assert hint == "This computer is helping a notebook compute. Keep this page open and the screen on."


def test_a_phone_is_called_a_phone(chromium, broker: BrokerThread) -> None:
    context = chromium.new_context(user_agent=IPHONE)  # type: ignore[attr-defined]
    try:
        page = context.new_page()
        joined(page, broker)
        assert page.inner_text("#hint").startswith("This phone is helping a notebook compute.")
    finally:
        context.close()


def test_the_footer_goes_when_the_page_can_no_longer_help(chromium, page, broker: BrokerThread) -> None:
    """Refused link, no token, no WebGPU, session ended: no 'keep this page open' (it would only drain a battery)."""
    page.goto(broker.url.replace("token=", "token=stale"))
    page.wait_for_function("window.webnet.status === 'refused'")
    assert page.inner_text("#status") == "Link refused" and not page.is_visible("#hint")

    page.goto(broker.url.split("?")[0])
    page.wait_for_function("window.webnet.status === 'no token'")
    assert page.inner_text("#status") == "Incomplete link" and not page.is_visible("#hint")

    page.goto(broker.url.replace("127.0.0.1", "insecure.webnet.test"))
    page.wait_for_function("window.webnet.status === 'no WebGPU' && window.webnet.deviceId !== null")
    assert page.inner_text("#status") == "Cannot help" and not page.is_visible("#hint")

    own = BrokerThread().start()
    joined(page, own)
    assert page.is_visible("#hint")
    own.stop()
    page.wait_for_function("window.webnet.status === 'session ended'")
    assert page.inner_text("#status") == "All done" and not page.is_visible("#hint")
    assert "you can close this page" in page.inner_text("#detail")

"""The worker page served by the broker, in Debian's headless Chromium with real WebGPU (SwiftShader)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic._assets import static_dir
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.client import session as sessions
from webnet_magic.errors import WorkerError
from webnet_magic.program import Buffer, Kernel, Program, Step
from webnet_magic.testing.linkrelay import LOOPBACK, LinkRelay

from .conftest import wait_until


def open_worker(page, url: str, broker: BrokerThread, count: int = 1) -> dict:
    page.goto(url)
    devices = wait_until(lambda: len(broker.devices()) >= count and broker.devices(), 30, "the page to join")
    page.wait_for_function("window.webnet && window.webnet.deviceId !== null", timeout=10_000)
    return devices[-1]


def status(page) -> str:
    return page.inner_text("#status")


def test_the_page_joins_under_its_own_csp_and_shows_its_state(chromium, broker: BrokerThread) -> None:
    """With its strict CSP enforced, the page joins with its adapter and limits and says idle."""
    context = chromium.new_context()  # no bypass_csp: the page as a phone sees it
    try:
        page = context.new_page()
        page.goto(broker.url)
        (device,) = wait_until(broker.devices, 30, "the page to join")
        assert device["runtime"] == "browser"
        assert "swiftshader" in device["adapter"].lower()
        assert device["limits"]["maxStorageBufferBindingSize"] >= 128 * 2**20
        wait_until(lambda: status(page) == "Ready", 10, "the page to say it is ready")
        assert "d1" in page.inner_text("#device")
    finally:
        context.close()


def test_the_magic_runs_on_the_browser_worker(page, shell) -> None:
    """From a real IPython shell, `%%webnet matmul A B -> C` runs on the page's WebGPU."""
    shell.run_cell("%webnet start")
    session = sessions.current()
    open_worker(page, session.url, session.broker)
    shell.run_cell("import numpy as np\nA = np.random.rand(300, 129)\nB = np.random.rand(129, 77)")
    result = shell.run_cell("%%webnet matmul A B -> C")
    assert result.success, result.error_in_exec
    ns = shell.user_ns
    np.testing.assert_allclose(ns["C"], ns["A"] @ ns["B"], rtol=1e-5, atol=1e-4)
    page.wait_for_function("window.webnet.jobsDone === 3")  # the page's two calibration runs, then the matmul
    assert "3 jobs done" in page.inner_text("#jobs")
    assert session.devices()[0]["last_job_ms"] > 0 and session.devices()[0]["jobs_done"] == 1
    assert session.devices()[0]["gflops"] > 0
    # What the person holding the phone saw, phase by phase: the job, its result going back, idle.
    trail = page.evaluate("window.webnet.trail")
    running = [t for t in trail if t.startswith("running: job")]
    assert any("1 GPU step" in t and "MB received" in t for t in running), trail
    assert any(t.endswith("sending the result, 100%") for t in running) and trail[-1] == "idle", trail


def test_a_compile_error_names_the_wgsl_line(page, broker: BrokerThread) -> None:
    """The browser's compilation info (line:column) comes back as WorkerError, the page's own answer."""
    open_worker(page, broker.url, broker)
    kernel = Kernel("@compute @workgroup_size(1)\nfn main() { let x: f32 = true; }")
    with pytest.raises(WorkerError, match=r"compile error: line 2:") as info:
        broker.submit(Program((), (Buffer(4),), (Step(kernel, (0,), (1, 1, 1)),), ())).future.result(30)
    assert info.value.kind == "compile"
    assert status(page) == "Ready"


def test_closing_the_page_mid_job_sends_the_job_to_the_next_page(chromium, page) -> None:
    """A tab closed before its job's answer gets through (held in a relay): the job is queued again at
    once, not after the silence limit, and runs on the page opened next."""
    broker = BrokerThread(calibrate=False).start()  # 30 s of silence before a held page counts as lost
    try:
        with LinkRelay(broker.port, LOOPBACK) as relay:
            open_worker(page, relay.url(broker.url), broker)
            x = np.ones((64, 64), np.float32)
            plan = ops.plan("matmul", x, x)
            relay.hold("up")
            handle = broker.submit(plan.program)
            wait_until(lambda: relay.waiting("up") >= plan.program.output_bytes, 60, "the page's answer")
            page.close()
            wait_until(lambda: handle.progress.state == "queued", 20, "the job to go back to the queue")
        assert "disconnected" in handle.progress.failures[0]
        context = chromium.new_context()
        try:
            context.new_page().goto(broker.url)
            (c,) = plan.finish(handle.future.result(60))
            assert c[0, 0] == 64 and handle.progress.device == "d2"
        finally:
            context.close()
    finally:
        broker.stop()


def test_a_lost_gpu_device_is_retried_once_the_page_recovers(page) -> None:
    """GPUDevice.destroy() while the page runs a job: the page reports it, gets a new device, and the job
    runs again there.  The debugger stops the page inside the job (so the job cannot end first), and
    the relay holds the retry until the page has its new device (so it cannot find the page without one)."""
    broker = BrokerThread(calibrate=False).start()  # 3 s heartbeats: the page waits 30 s for a silent broker
    try:
        with LinkRelay(broker.port, LOOPBACK) as relay:
            open_worker(page, relay.url(broker.url), broker)
            debugger, paused = attach_debugger(page)
            dispatch = source_line("gpu.js", "device.queue.submit([encoder")
            stop = {"urlRegex": r"/gpu\.js(\?.*)?$", "lineNumber": dispatch}
            breakpoint = debugger.send("Debugger.setBreakpointByUrl", stop)["breakpointId"]
            x = np.ones((64, 64), np.float32)
            plan = ops.plan("matmul", x, x)
            handle = broker.submit(plan.program)
            deadline = time.monotonic() + 60
            while not paused and time.monotonic() < deadline:
                page.wait_for_timeout(20)  # (lets Playwright hear the debugger's event)
            assert paused, "the page did not reach the job's dispatch"
            relay.hold("down")
            frame = paused[0]["callFrames"][0]["callFrameId"]
            debugger.send("Debugger.evaluateOnCallFrame", {"callFrameId": frame, "expression": "device.destroy()"})
            debugger.send("Debugger.removeBreakpoint", {"breakpointId": breakpoint})
            debugger.send("Debugger.resume")
            wait_until(lambda: handle.progress.failures, 30, "the page to report its lost device")
            page.wait_for_function("window.webnet.status === 'idle'", timeout=30_000)  # with its new device
            relay.release("down")
            (c,) = plan.finish(handle.future.result(60))
            assert c[0, 0] == 64
            assert handle.progress.attempts == 2 and "device-lost" in handle.progress.failures[0]
            a = np.arange(6, dtype=np.float32).reshape(2, 3)
            plan = ops.plan("matmul", a, a.T)
            np.testing.assert_allclose(plan.finish(broker.submit(plan.program).future.result(30))[0], a @ a.T)
    finally:
        broker.stop()


def attach_debugger(page) -> tuple[Any, list[dict]]:
    """The DevTools debugger on ``page``, and the list its pauses are appended to (newest last)."""
    debugger = page.context.new_cdp_session(page)
    debugger.send("Debugger.enable")
    paused: list[dict] = []
    debugger.on("Debugger.paused", lambda event: paused.append(event))  # (Playwright wants a Python function)
    return debugger, paused


def source_line(name: str, text: str) -> int:
    """The (0-based) line of the worker page's script ``name`` where ``text`` first appears."""
    lines = (static_dir() / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines) if text in line)


def test_an_insecure_page_says_webgpu_needs_https_and_the_notebook_hears_it(page, broker: BrokerThread) -> None:
    """Reached by a non-localhost http name the page has no WebGPU: it says why, and tells the broker."""
    page.goto(broker.url.replace("127.0.0.1", "insecure.webnet.test"))
    (device,) = wait_until(broker.devices, 30, "the insecure page to join")
    assert device["state"] == "no WebGPU"
    assert "https" in device["reason"] and "localhost" in device["reason"]
    page.wait_for_function("window.webnet.deviceId !== null")
    assert status(page) == "Cannot help" and "https" in page.inner_text("#detail")


def test_a_wrong_token_is_shown_on_the_page(page, broker: BrokerThread) -> None:
    page.goto(broker.url.replace("token=", "token=stale"))
    page.wait_for_function("window.webnet.status === 'refused'")
    assert "%webnet url" in page.inner_text("#detail")
    assert broker.devices() == []


def test_a_link_without_a_token_says_so(page, broker: BrokerThread) -> None:
    page.goto(broker.url.split("?")[0])
    page.wait_for_function("window.webnet.status === 'no token'")
    assert broker.devices() == []


def test_the_page_reconnects_after_a_dropped_link(page, broker: BrokerThread) -> None:
    """When the link drops (not a deliberate stop) the page reconnects with backoff, as the same device."""
    open_worker(page, broker.url, broker)
    broker.call(lambda: [s.close(4008, "simulated drop") for s in list(broker.broker.sockets)])
    wait_until(lambda: [d for d in broker.devices() if d["returns"] == 1], 15, "the page to rejoin")
    assert [d["id"] for d in broker.devices()] == ["d1"]
    assert page.inner_text("#device").startswith("d1")
    a = np.eye(4, dtype=np.float32)
    plan = ops.plan("matmul", a, a)
    np.testing.assert_array_equal(plan.finish(broker.submit(plan.program).future.result(30))[0], a)


def test_the_page_says_when_the_notebook_stopped_the_broker(page) -> None:
    thread = BrokerThread().start()
    open_worker(page, thread.url, thread)
    thread.stop()
    page.wait_for_function("window.webnet.status === 'session ended'")
    assert "%webnet start" in page.inner_text("#detail")


def test_the_page_echoes_a_ping_with_arrays_bit_exact(page, broker: BrokerThread) -> None:
    """The link probe through the browser: 10 MB in several frames, back unchanged."""
    open_worker(page, broker.url, broker)
    data = np.random.default_rng(0).standard_normal(10 * 2**20 // 4).astype(np.float32)
    (back,) = broker.echo([data])
    np.testing.assert_array_equal(back, data)


def test_the_notebook_repeats_why_a_connected_page_has_no_webgpu(page, shell, capsys) -> None:
    """While an op waits, the cell names the page that joined without WebGPU and its reason."""
    shell.run_cell("%webnet start")
    session = sessions.current()
    page.goto(session.url.replace("127.0.0.1", "insecure.webnet.test"))
    wait_until(session.devices, 30, "the insecure page to join")
    shell.run_cell("import numpy as np\nA = np.ones((2, 2), np.float32)")
    capsys.readouterr()
    result = shell.run_cell("%webnet matmul A A -> C --timeout 1")
    out = capsys.readouterr().out
    assert "joined without WebGPU" in out and "https" in out
    assert type(result.error_in_exec).__name__ == "NoDeviceError"


def test_the_page_keeps_inputs_between_jobs_and_holds_what_put_pins(page, broker: BrokerThread) -> None:
    """The browser's buffer cache: a repeated job sends no W; a pinned array reaches the page."""
    open_worker(page, broker.url, broker)
    rng = np.random.default_rng(4)
    a, w = rng.random((8, 256), np.float32), rng.random((256, 256), np.float32)
    sent = []
    for _ in range(2):
        before = broker.devices()[0]["bytes_out"]
        plan = ops.plan("matmul", a, w)
        (c,) = plan.finish(broker.submit(plan.program).future.result(60))
        sent.append(broker.devices()[0]["bytes_out"] - before)
        assert ops.error_ratio(plan.nodes[0], c) <= 1
    assert sent[1] < w.nbytes / 10 < sent[0]
    v = rng.random((128, 256), np.float32)
    key = ops.compiler.content_key(v)
    assert broker.put(key, v) == {"d1": True}
    before = broker.devices()[0]["bytes_out"]
    plan = ops.plan("matmul", v, w)
    (c,) = plan.finish(broker.submit(plan.program).future.result(60))
    assert broker.devices()[0]["bytes_out"] - before < v.nbytes / 10
    assert ops.error_ratio(plan.nodes[0], c) <= 1


def test_a_custom_kernel_compiles_in_the_browser_and_errors_point_at_the_cell(page, shell) -> None:
    from webnet_magic.ops import OPS

    from .test_custom_kernels import BROKEN, SAXPY

    shell.run_cell("%webnet start")
    session = sessions.current()
    open_worker(page, session.url, session.broker)
    try:
        assert shell.run_cell(SAXPY).success
        shell.run_cell("import numpy as np\nX = np.arange(10, dtype=np.float32)")
        assert shell.run_cell("%webnet saxpy(X, X, a=3.0) -> Z").success
        np.testing.assert_array_equal(shell.user_ns["Z"], 4 * np.arange(10))
        message = str(shell.run_cell(BROKEN).error_in_exec)
        assert "kernel broken does not compile, cell line 6 column" in message
        assert "out[id.x] = x[id.x] +;" in message
    finally:
        OPS.pop("saxpy", None)


def test_a_page_with_a_small_buffer_limit_gets_the_work_in_blocks(page, shell) -> None:
    """?maxbuffer=0.25 makes the page report (and keep to) a 0.25 MB limit, as an old phone might."""
    shell.run_cell("%webnet start")
    session = sessions.current()
    open_worker(page, session.url + "&maxbuffer=0.25", session.broker)
    assert session.devices()[0]["limits"]["maxBufferSize"] == 256 * 1024
    shell.run_cell("import numpy as np\nA = np.random.rand(300, 400)\nB = np.random.rand(400, 200)")
    result = shell.run_cell("%webnet A @ B -> C")
    assert result.success, result.error_in_exec
    np.testing.assert_allclose(shell.user_ns["C"], shell.user_ns["A"] @ shell.user_ns["B"], rtol=1e-4)
    assert session.devices()[0]["jobs_done"] > 1


def test_the_page_keeps_to_the_broker_s_silence_limit(page, broker: BrokerThread) -> None:
    """The page gives up on a silent broker after the broker's own silence limit, told in its welcome."""
    open_worker(page, broker.url, broker)
    assert page.evaluate("window.webnetWorker.silenceLimit") == broker.config.silence_limit * 1000


def stop_in_a_job_with_another_behind_it(page, broker: BrokerThread, relay: LinkRelay) -> tuple[object, list, list]:
    """Two jobs on the page (the broker holds two per device), the page stopped by the debugger at the
    first one's dispatch with the second here too: the debugger session, its pauses and the two jobs."""
    debugger, paused = attach_debugger(page)
    breakpoint = debugger.send("Debugger.setBreakpointByUrl", in_gpu_js("device.queue.submit([encoder"))["breakpointId"]
    plans = [ops.plan("matmul", np.full((64, 64), k, np.float32), np.ones((64, 64), np.float32)) for k in (1, 2)]
    relay.hold("down")  # both jobs arrive together, so the second is on the page before the first dispatches
    handles = [broker.submit(plan.program) for plan in plans]
    wait_until(lambda: relay.waiting("down") >= sum(p.program.input_bytes for p in plans), 30, "both jobs sent")
    relay.release("down")
    wait_for_pause(page, paused, "the page to reach the first job's dispatch")
    debugger.send("Debugger.removeBreakpoint", {"breakpointId": breakpoint})
    here = evaluate_paused(debugger, paused, "window.webnetWorker.waiting.size")
    assert here == 1, "the second job did not reach the page before the first one dispatched"
    return debugger, paused, list(zip(plans, handles, strict=True))


def wait_for_pause(page, heard: list, what: str, done: Callable[[], bool] | None = None) -> None:
    """Until the debugger has reported something in ``heard`` (or ``done`` holds), however long it takes."""
    done = done or (lambda: bool(heard))
    deadline = time.monotonic() + 60
    while not done() and time.monotonic() < deadline:
        page.wait_for_timeout(20)  # (lets Playwright hear the debugger's events)
    assert done(), what


def lose_the_device(debugger, paused: list) -> None:
    """``device.destroy()`` where the page stopped in a job, then let it go on."""
    evaluate_paused(debugger, paused, "device.destroy()")
    debugger.send("Debugger.resume")


def in_gpu_js(text: str) -> dict:
    """A breakpoint on the first line of the page's gpu.js that holds ``text``."""
    return {"urlRegex": r"/gpu\.js(\?.*)?$", "lineNumber": source_line("gpu.js", text)}


def evaluate_paused(debugger, paused: list, expression: str) -> object:
    """``expression``'s value where the page stopped last (its locals in scope)."""
    frame = paused[-1]["callFrames"][0]["callFrameId"]
    answer = debugger.send("Debugger.evaluateOnCallFrame", {"callFrameId": frame, "expression": expression})
    return answer["result"].get("value")


def test_a_job_that_comes_while_the_gpu_is_lost_waits_for_the_new_device(page) -> None:
    """The job behind the one running when the GPU is lost waits for the new device and runs there, in
    one attempt: the lost job ends at once (before, the page waited on the lost device for it)."""
    broker = BrokerThread(calibrate=False, depth=2).start()
    try:
        with LinkRelay(broker.port, LOOPBACK) as relay:
            open_worker(page, relay.url(broker.url), broker)
            debugger, paused, jobs = stop_in_a_job_with_another_behind_it(page, broker, relay)
            lose_the_device(debugger, paused)
            (first, one), (second, two) = jobs
            np.testing.assert_array_equal(second.finish(two.future.result(60))[0], np.full((64, 64), 128))
            np.testing.assert_array_equal(first.finish(one.future.result(60))[0], np.full((64, 64), 64))
            page.wait_for_function("window.webnet.status === 'idle'")
        assert two.progress.failures == [] and two.progress.attempts == 1 and two.progress.device == "d1"
        assert len(one.progress.failures) == 1 and "device-lost" in one.progress.failures[0]
        trail = page.evaluate("window.webnet.trail")
        assert any(t.startswith("device lost:") and t.endswith("Job j2~1 waits for it.") for t in trail), trail
    finally:
        broker.stop()


def test_a_job_sent_while_the_page_gets_a_new_device_waits_for_it(page) -> None:
    """The GPU is lost while the page is idle; a job that reaches it while it asks for a new device
    runs on the new one, in one attempt and with no failure (before, it failed with device-lost and
    was sent again).  The debugger holds the page at its request for a device until the relay has
    delivered the job to the browser.  Which the page then hears first, the job or its new device, is
    Chromium's to order (the job came first in 3 runs of 4): either way the job must cost no attempt."""
    broker = BrokerThread(calibrate=False).start()
    try:
        with LinkRelay(broker.port, LOOPBACK) as relay:
            open_worker(page, relay.url(broker.url), broker)
            debugger, paused = attach_debugger(page)
            debugger.send("Debugger.setBreakpointByUrl", in_gpu_js("await adapter.requestDevice("))
            debugger.send("Runtime.evaluate", {"expression": "window.webnetWorker.executor.device.destroy()"})
            wait_for_pause(page, paused, "the page to ask for a new device")
            plan = ops.plan("matmul", np.full((64, 64), 3, np.float32), np.ones((64, 64), np.float32))
            relay.hold("down")
            handle = broker.submit(plan.program)
            wait_until(lambda: relay.waiting("down") >= plan.program.input_bytes, 30, "the job to be sent")
            relay.release("down")
            wait_until(lambda: relay.waiting("down") == 0, 30, "the job to reach the browser")
            debugger.send("Debugger.resume")
            np.testing.assert_array_equal(plan.finish(handle.future.result(60))[0], np.full((64, 64), 192))
        assert handle.progress.failures == [] and handle.progress.attempts == 1
    finally:
        broker.stop()


def test_a_page_that_cannot_get_its_gpu_back_hands_its_jobs_back_at_once(chromium, page) -> None:
    """The browser refuses the page a new device (the debugger asks it for more than the adapter has):
    the page says so in plain words and tells the broker, which sends the job waiting there elsewhere at
    once (the page is still connected: no lease or silence had to end) and counts no failure for it."""
    broker = BrokerThread(calibrate=False, depth=2).start()
    try:
        with LinkRelay(broker.port, LOOPBACK) as relay:
            open_worker(page, relay.url(broker.url), broker)
            debugger, paused, jobs = stop_in_a_job_with_another_behind_it(page, broker, relay)
            debugger.send("Debugger.setBreakpointByUrl", in_gpu_js("await adapter.requestDevice("))
            lose_the_device(debugger, paused)
            wait_for_pause(page, paused, "the page to ask for a new device", lambda: len(paused) == 2)
            evaluate_paused(debugger, paused, "requiredLimits.maxBufferSize = adapter.limits.maxBufferSize * 2")
            debugger.send("Debugger.resume")
            (first, one), (second, two) = jobs
            wait_until(lambda: one.progress.state == two.progress.state == "queued", 30, "the jobs to come back")
            (device,) = broker.devices()
            assert device["state"] == "no WebGPU" and "none came back" in device["reason"]
            page.wait_for_function("window.webnet.status === 'GPU gone'")
            assert status(page) == "GPU stopped" and "Reload this page" in page.inner_text("#detail")
            context = chromium.new_context()
            try:
                context.new_page().goto(broker.url)
                np.testing.assert_array_equal(second.finish(two.future.result(60))[0], np.full((64, 64), 128))
                np.testing.assert_array_equal(first.finish(one.future.result(60))[0], np.full((64, 64), 64))
            finally:
                context.close()
        assert two.progress.failures == [] and two.progress.device == "d2"
        assert len(one.progress.failures) == 1 and "device-lost" in one.progress.failures[0]
    finally:
        broker.stop()

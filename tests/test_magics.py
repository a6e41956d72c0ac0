"""%webnet and %%webnet in a real IPython shell, with a native worker on lavapipe."""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest

from webnet_magic.client import session as sessions
from webnet_magic.testing.linkrelay import LOOPBACK, LinkRelay

from .conftest import Workers, wait_until
from .peers import Peer, result, send


def run(shell, code: str):
    """Run a cell as the notebook would; returns IPython's ExecutionResult."""
    return shell.run_cell(code, store_history=False)


@pytest.fixture
def started(joined, capsys):
    """A shell whose broker runs and has one native worker joined, with A and B."""
    shell = joined
    capsys.readouterr()
    shell.run_cell("import numpy as np\nrng = np.random.default_rng(0)")
    shell.run_cell("A = rng.random((300, 129))\nB = rng.random((129, 77))")
    return shell


def test_the_line_magic_binds_the_product(started) -> None:
    """`%webnet matmul A B -> C` leaves C = A @ B (float32) in the notebook."""
    assert run(started, "%webnet matmul A B -> C").success
    ns = started.user_ns
    assert ns["C"].dtype == np.float32 and ns["C"].shape == (300, 77)
    np.testing.assert_allclose(ns["C"], ns["A"] @ ns["B"], rtol=1e-5, atol=1e-4)


def test_a_cell_holding_only_the_cell_magic_line_works(started) -> None:
    """The design card's form: a cell of one line, `%%webnet matmul A B -> C`, no body."""
    result = run(started, "%%webnet matmul A B -> C")
    assert result.success, result.error_in_exec
    np.testing.assert_allclose(started.user_ns["C"], started.user_ns["A"] @ started.user_ns["B"], rtol=1e-5, atol=1e-4)


def test_operand_expressions_and_the_returning_form(started) -> None:
    """Operands may be expressions such as A.T (non-contiguous); without '->' the result is returned."""
    assert run(started, "D = %webnet matmul A.T A").success
    ns = started.user_ns
    np.testing.assert_allclose(ns["D"], ns["A"].T @ ns["A"], rtol=1e-5, atol=1e-3)


def test_float64_inputs_give_one_short_warning(started) -> None:
    """Converting to float32 is said once, naming the operands, and the result is float32."""
    with pytest.warns(sessions.PrecisionWarning, match="converted A from float64, B from float64") as record:
        run(started, "%webnet matmul A B -> C")
    assert len(record) == 1


def test_local_computes_with_numpy_and_needs_no_broker(shell) -> None:
    """`--local` works without %webnet start, with the same float32 semantics."""
    run(shell, "import numpy as np\nA = np.arange(6.).reshape(2, 3)\nB = np.ones((3, 2), int)")
    assert run(shell, "%webnet matmul A B --local -> C").success
    np.testing.assert_array_equal(shell.user_ns["C"], np.array([[3, 3], [12, 12]], np.float32))
    assert shell.user_ns["C"].dtype == np.float32


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("%webnet matmul A B.T -> C", "inner dimensions 129 and 77 must be equal"),
        ("%webnet matmul A missing -> C", "'missing' is not defined in the notebook"),
        ("%webnet matmul A Z -> C", "complex"),
        ("%webnet matmul A S -> C", "WGSL cannot hold"),
        ("%webnet matmul A B[10**9] -> C", "cannot evaluate 'B[10**9]': IndexError"),
        ("%webnet matmul A B -> 2C", "cannot bind to '2C'"),
        ("%webnet matmul A -> C", "takes 2 array arguments, got 1"),
        ("%webnet frobnicate(A) -> C", "unknown function 'frobnicate'"),
        ("%webnet A @ B -> C, D", "gives 1 result(s) but 2 name(s)"),
        ("%webnet A + 1j -> C", "is not a number"),
        ("%%webnet matmul A B -> C\nprint('a body')", "not both"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_output_untouched(started, capsys, line: str, message: str) -> None:
    """Each input error is a one-line UsageError before anything is sent; C keeps its old value."""
    run(started, "C = 'untouched'\nZ = np.ones((77, 2), complex)\nS = np.array([['x'] * 2] * 77)")
    result = run(started, line)
    assert not result.success
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert message in str(result.error_in_exec)
    assert "\n" not in str(result.error_in_exec)
    assert started.user_ns["C"] == "untouched"
    assert sessions.current().devices()[0]["jobs_done"] == 0


def test_a_worker_lost_mid_job_with_none_to_replace_it_times_out_and_binds_nothing(shell, workers: Workers) -> None:
    """Killing the only worker while its job is on the way to it: the job waits for another device, then
    the timeout names the device it lost.  The kill follows the job's bytes into the relay, so only the
    broker's send (not the worker's compile or compute) has to happen within the timeout."""
    assert run(shell, "%webnet start").success
    session = sessions.current()
    with LinkRelay(session.broker.port, LOOPBACK) as relay:
        workers.start(relay.url(session.url))
        session.wait_for_devices(1, 60)
        run(shell, "import numpy as np\nC = 'untouched'\nX = np.ones((64, 64), np.float32)")
        relay.hold("down")  # the job waits in the relay: it cannot finish before the kill

        def kill_once_sent() -> None:
            wait_until(lambda: relay.waiting("down") >= 64 * 64 * 4, 60, "the job to be sent")
            workers.processes[0].kill()

        killer = threading.Thread(target=kill_once_sent)
        killer.start()
        result = run(shell, "%webnet matmul X X -> C --timeout 8")
        killer.join()
    assert type(result.error_in_exec).__name__ == "DeviceLost", result.error_in_exec
    assert shell.user_ns["C"] == "untouched"


def test_a_job_beyond_the_devices_limits_is_refused_naming_the_limit(started) -> None:
    """Work no connected device can hold is refused before sending; the output is untouched."""
    session = sessions.current()
    run(
        started,
        "C = 'untouched'\nbig = np.ones((65536 * 64 + 1, 1), np.float32)\none = np.ones((1, 1), np.float32)",
    )
    # 4M+ rows need 65537 workgroups in y: above maxComputeWorkgroupsPerDimension, refused by the broker.
    result = run(started, "%webnet matmul big one -> C")
    assert not result.success and "maxComputeWorkgroupsPerDimension" in str(result.error_in_exec)
    assert started.user_ns["C"] == "untouched"
    assert session.devices()[0]["state"] == "idle"


def test_no_device_says_where_to_open_one_then_fails_at_the_timeout(shell, capsys) -> None:
    """Without a worker the cell prints the URL it is waiting on (not its token), then raises NoDeviceError."""
    run(shell, "%webnet start")
    run(shell, "import numpy as np\nA = np.ones((2, 2), np.float32)")
    capsys.readouterr()
    result = run(shell, "%webnet matmul A A -> C --timeout 1")
    out = capsys.readouterr().out
    assert "waiting for a device" in out and sessions.current().url.split("?")[0] in out
    assert sessions.current().broker.token not in out + str(result.error_in_exec)  # only %webnet url shows it
    assert "python -m webnet_magic.worker" in out
    assert type(result.error_in_exec).__name__ == "NoDeviceError"
    assert "C" not in shell.user_ns
    assert sessions.current().broker.call(lambda: len(sessions.current().broker.broker.scheduler.tasks)) == 0


def test_ctrl_c_cancels_the_job(shell) -> None:
    """A KeyboardInterrupt while waiting cancels the job in the broker and binds nothing."""
    run(shell, "%webnet start")
    run(shell, "import numpy as np\nA = np.ones((2, 2), np.float32)")
    broker = sessions.current().broker
    main = threading.main_thread().ident

    def interrupt() -> None:
        wait_until(lambda: broker.call(lambda: len(broker.broker.scheduler.queue)), 10, "the job to queue")
        import ctypes

        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(main), ctypes.py_object(KeyboardInterrupt))

    threading.Thread(target=interrupt).start()
    result = run(shell, "%webnet matmul A A -> C --timeout 30")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert "C" not in shell.user_ns
    assert broker.call(lambda: len(broker.broker.scheduler.tasks)) == 0


def test_status_devices_url_and_help_print_plain_text(started, capsys) -> None:
    session = sessions.current()
    run(started, "%webnet url")
    assert capsys.readouterr().out.strip() == session.url
    run(started, "%webnet status")
    assert "1 device(s) connected" in capsys.readouterr().out
    run(started, "%webnet devices")
    out = capsys.readouterr().out
    assert "d1" in out and "idle" in out and "llvmpipe" in out
    assert re.search(r"max buf.*\n.* \d+ MB  ", out)  # the largest buffer it binds, from its hello
    run(started, "%webnet help")
    assert "matmul" in capsys.readouterr().out


def test_start_is_idempotent_and_stop_disconnects(started, capsys) -> None:
    """A second start shows the same session; stop ends it and the worker leaves."""
    session = sessions.current()
    run(started, "%webnet start")
    assert sessions.current() is session
    run(started, "%webnet start --port 1")
    assert "already running" in capsys.readouterr().out
    run(started, "%webnet stop")
    assert "broker stopped" in capsys.readouterr().out
    assert sessions.current() is None and not session.running
    result = run(started, "%webnet matmul A B -> C")
    assert "no broker is running" in str(result.error_in_exec)


def test_settings_come_from_traitlets_config(shell) -> None:
    """`%config WebnetMagics.timeout = ...` changes the default op timeout."""
    run(shell, "%config WebnetMagics.timeout = 0.5")
    run(shell, "%webnet start")
    run(shell, "import numpy as np\nA = np.ones((2, 2), np.float32)")
    result = run(shell, "%webnet matmul A A -> C")
    assert "within 0.5 s" in str(result.error_in_exec)
    run(shell, "%config WebnetMagics.timeout = 60.0")


def test_unload_stops_the_broker_and_removes_the_rewrite(shell) -> None:
    """%unload_ext leaves no broker thread and no input transformer behind."""
    from webnet_magic.client.magics import bodyless_cell

    run(shell, "%webnet start")
    run(shell, "%unload_ext webnet_magic")
    assert sessions.current() is None
    assert not any(t.name == "webnet-broker" and t.is_alive() for t in threading.enumerate())
    assert bodyless_cell not in shell.input_transformers_cleanup
    run(shell, "%load_ext webnet_magic")  # the fixture unloads again


def calibrated_then_hanging_up():
    """A peer's reply that passes its calibration, then drops the link on the first real job."""
    from webnet_magic.broker.calibration import calibration

    program, _ = calibration()
    a, b = program.inputs[:2]
    right = (a.astype(np.float64) @ b).astype(np.float32)

    async def reply(conn, job) -> None:
        (spec,) = job.fields["outputs"]
        if tuple(spec["shape"]) == right.shape:
            await send(conn, result(job, right, timings={"kernel": 5.0}))
        else:
            conn.close()

    return reply


def test_a_device_lost_mid_job_is_named_in_one_line_at_the_timeout(shell, peers, capsys) -> None:
    """Not "no device connected": the error names the device lost and the retry, shown without a traceback."""
    run(shell, "%webnet start")
    session = sessions.current()
    peers.append(Peer(session.broker, calibrated_then_hanging_up()))
    session.wait_for_devices(1, 30)
    run(shell, "import numpy as np\nA = np.ones((2, 2), np.float32)\nC = 'untouched'")
    capsys.readouterr()
    result = run(shell, "%webnet A @ A -> C --timeout 3")
    error = result.error_in_exec
    assert type(error).__name__ == "DeviceLost" and error.devices == ("d1",)
    assert "lost its device (d1 (hand-written peer): disconnected) and was queued again (1 retry)" in str(error)
    assert "within 3 s" in str(error) and "\n" not in str(error)
    shown = capsys.readouterr().out
    assert "Traceback" not in shown and shown.strip().splitlines()[-1] == f"DeviceLost: webnet: {error}"
    assert tasks_left(session) == 0 and shell.user_ns["C"] == "untouched"


def tasks_left(session) -> int:
    return session.broker.call(lambda: len(session.broker.broker.scheduler.tasks))


def test_help_on_a_command_prints_its_usage_and_starts_nothing(shell, capsys) -> None:
    """`%webnet start --help` is the start command's usage; no broker is started."""
    assert run(shell, "%webnet start --help").success
    out = capsys.readouterr().out
    assert out.startswith("usage: %webnet start") and "--tunnel {auto,ngrok,off}" in out
    assert sessions.current() is None
    assert run(shell, "%%webnet kernel --help").success  # a kernel cell's options, with no WGSL below
    assert "--workgroups EXPR" in capsys.readouterr().out


def test_the_magics_docstring_lists_the_commands_and_options(shell, capsys) -> None:
    """`%webnet?` shows every sub-command and the options of each."""
    run(shell, "%webnet?")
    out = capsys.readouterr().out
    for text in ("start", "stop", "devices", "kernel", "--workgroups", "--port PORT", "--timeout S", "--bg"):
        assert text in out, text


def test_a_misspelt_command_is_named_unless_it_is_a_variable(shell) -> None:
    """`%webnet stats` suggests status / start; with a variable named stats it is an expression."""
    result = run(shell, "%webnet stats")
    assert type(result.error_in_exec).__name__ == "UsageError"
    assert str(result.error_in_exec) == (
        "webnet: 'stats' is no command or variable; did you mean status / start? (%webnet help)"
    )
    run(shell, "import numpy as np\nstats = np.ones(3, np.float32)")
    result = run(shell, "%webnet stats * 2 --local")
    assert result.success and list(result.result) == [2, 2, 2]


def test_every_usage_error_starts_with_one_prefix(shell) -> None:
    """Parser, expression and option errors all read 'webnet: ...' on one line."""
    run(shell, "import numpy as np\nA = np.ones((2, 3))")
    lines = ["%webnet", "%webnet start --port 70000", "%webnet A @ A --local", "%webnet A @ B --local"]
    lines += ["%webnet matmul A A -> 2C", "%webnet A[A.__class__] --local", "%webnet A @ A -> C --timeout x"]
    for line in lines:
        error = run(shell, line).error_in_exec
        assert type(error).__name__ == "UsageError", line
        assert str(error).startswith("webnet: ") and not str(error).startswith("webnet: webnet"), str(error)
        assert "\n" not in str(error), str(error)

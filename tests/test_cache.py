"""Data that does not travel twice: workers keep inputs by content key; put pins, free releases."""

from __future__ import annotations

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.client import session as sessions
from webnet_magic.worker.cache import BufferCache

from .conftest import Workers, join_native, wait_until


class Fake:
    """A stand-in for a GPU buffer: the cache only counts bytes and calls destroy."""

    def __init__(self) -> None:
        self.destroyed = False


def test_the_cache_drops_the_least_recently_used_unpinned_entry_first() -> None:
    dropped: list[Fake] = []
    cache = BufferCache(100, dropped.append)
    a, b, c, d = Fake(), Fake(), Fake(), Fake()
    assert cache.keep("a", a, 40) and cache.keep("b", b, 40, pin=True)
    cache.get("a")  # a is now the most recently used, but b is pinned
    assert cache.keep("c", c, 40)  # 120 > 100: a goes, b stays pinned
    assert dropped == [a] and cache.held() == ["b", "c"]
    assert not cache.keep("d", d, 90, protect={"c"})  # c is in use by the job, b pinned: no room
    assert cache.held() == ["b", "c"] and cache.pinned() == ["b"]
    cache.drop("b")
    assert dropped == [a, b] and not cache.owns(b)


def test_content_keys_tell_apart_arrays_that_differ_in_any_piece_shape_or_dtype() -> None:
    """Keys are hashed piece by piece on threads: one changed element in any piece, or the same bytes
    under another shape or dtype, is another key; an equal copy (or a strided view's contents) the same."""
    from webnet_magic.ops.compiler import HASH_PIECE, content_key

    a = np.random.default_rng(2).random(3 * HASH_PIECE // 4 + 5, np.float32)  # four pieces, the last short
    keys = {content_key(a)}
    for at in (0, HASH_PIECE // 4, a.size - 1):
        changed = a.copy()
        changed[at] += 1
        keys.add(content_key(changed))
    keys |= {content_key(a[:-1].reshape(2, -1)), content_key(a.view(np.int32)), content_key(a[:-1])}
    assert len(keys) == 7
    assert content_key(a.copy()) == content_key(a)
    strided = np.arange(24, dtype=np.int32).reshape(4, 6)[:, ::2]
    assert content_key(strided) == content_key(np.ascontiguousarray(strided))


def matmul_job(a: np.ndarray, w: np.ndarray) -> ops.Plan:
    return ops.plan("matmul", a, w)


def test_a_repeated_job_sends_none_of_the_arrays_the_worker_kept(broker: BrokerThread, workers: Workers) -> None:
    join_native(broker, workers)
    rng = np.random.default_rng(0)
    a, w = rng.random((8, 256), np.float32), rng.random((256, 256), np.float32)
    sent = []
    for _ in range(3):
        before = broker.devices()[0]["bytes_out"]
        plan = matmul_job(a, w)
        (c,) = plan.finish(broker.submit(plan.program).future.result(60))
        sent.append(broker.devices()[0]["bytes_out"] - before)
        assert ops.error_ratio(plan.nodes[0], c) <= 1
    assert sent[0] > w.nbytes and sent[1] < w.nbytes / 10 and sent[2] < w.nbytes / 10
    assert broker.devices()[0]["cached"] == 1  # W (a, at 8 KiB, is below the size worth keeping)


def test_an_input_the_worker_dropped_meanwhile_is_sent_again(broker: BrokerThread, workers: Workers) -> None:
    """If the broker's list is stale (a free crossed the job), the worker says so and the job is resent."""
    join_native(broker, workers)
    w = np.random.default_rng(1).random((256, 256), np.float32)
    plan = matmul_job(np.eye(256, dtype=np.float32), w)
    broker.submit(plan.program).future.result(60)
    key = next(b.key for b in plan.program.buffers if b.key and b.size == w.nbytes)

    def free_then_submit():
        broker.broker.free(key)  # the worker drops W before it sees the next job
        return broker.broker.scheduler.submit(plan.program, task_id="j-stale")

    job = broker.call(free_then_submit)
    wait_until(job.future.done, 60, "the resent job")
    (c,) = plan.finish(job.future.result())
    np.testing.assert_allclose(c, w, rtol=1e-6)


def test_the_worker_cache_respects_its_budget(broker: BrokerThread, workers: Workers) -> None:
    """A worker with a 1 MB cache keeps the latest 768 KB array, not both."""
    workers.start(broker.url, "--cache-mb", "1")
    wait_until(broker.devices, 60, "the worker")
    rng = np.random.default_rng(2)
    for _ in range(2):
        w = rng.random((384, 512), np.float32)
        plan = matmul_job(np.ones((1, 384), np.float32), w)
        (c,) = plan.finish(broker.submit(plan.program).future.result(60))
        np.testing.assert_allclose(c, w.sum(axis=0, keepdims=True), rtol=1e-4)
    assert broker.devices()[0]["cached"] == 1


def test_put_pins_an_array_on_devices_including_later_ones_and_free_lets_go(shell, workers: Workers, capsys) -> None:
    shell.run_cell("%webnet start")
    session = sessions.current()
    workers.start(session.url)
    session.wait_for_devices(1, 60)
    shell.run_cell("import numpy as np\nW = np.random.rand(300, 300)\nX = np.random.rand(4, 300)")
    capsys.readouterr()
    shell.run_cell("%webnet put W")
    assert "W (0.4 MB) kept on d1" in capsys.readouterr().out
    workers.start(session.url)  # joins after the put: it is sent W too
    session.wait_for_devices(2, 60)  # calibrated: its calibration's bytes are not counted below
    wait_until(lambda: all(d["cached"] for d in session.devices()), 60, "W on d2")
    for device in ("d1", "d2"):
        before = next(d["bytes_out"] for d in session.devices() if d["id"] == device)
        result = shell.run_cell(f"%webnet X @ W -> Y --device {device}")
        assert result.success, result.error_in_exec
        after = next(d["bytes_out"] for d in session.devices() if d["id"] == device)
        assert after - before < 300 * 300 * 4 / 10  # W's bytes did not travel again
    np.testing.assert_allclose(shell.user_ns["Y"], shell.user_ns["X"] @ shell.user_ns["W"], rtol=1e-4)
    shell.run_cell("%webnet free W")
    wait_until(lambda: not any(d["cached"] for d in session.devices()), 30, "the devices to drop W")
    result = shell.run_cell("%webnet free W")
    assert "nothing is pinned under 'W'" in str(result.error_in_exec)


@pytest.mark.parametrize("line", ["%webnet put nope", "%webnet put 'A B'"])
def test_put_of_something_missing_is_a_usage_error(shell, line: str) -> None:
    shell.run_cell("%webnet start")
    result = shell.run_cell(line)
    assert type(result.error_in_exec).__name__ == "UsageError"


def test_putting_a_name_again_replaces_what_it_pinned(shell, workers: Workers) -> None:
    """A re-put frees the old array and pins the new one: the answer is about the new one."""
    shell.run_cell("%webnet start")
    session = sessions.current()
    workers.start(session.url)
    session.wait_for_devices(1, 60)
    first = np.random.rand(200, 200)
    for value in (first, first + 1, first + 2):
        assert session.put("W", value).devices == {"d1": True}
    assert session.put("small", np.ones(3)).kept is False


def test_an_array_too_large_for_a_device_is_not_sent_to_it(shell, workers: Workers) -> None:
    shell.run_cell("%webnet start")
    session = sessions.current()
    workers.start(session.url, "--max-buffer-mb", "0.5")
    session.wait_for_devices(1, 60)
    assert session.put("W", np.ones((512, 512), np.float32)).devices == {"d1": False}
    shell.run_cell("import numpy as np\nA = np.ones((4, 4))")
    assert shell.run_cell("%webnet A @ A -> C").success  # the worker is fine

"""The native worker after its wgpu device is lost (``device.destroy()``, on lavapipe)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from webnet_magic import ops
from webnet_magic.broker.thread import BrokerThread
from webnet_magic.worker.gpu import GpuJobError, WgpuExecutor
from webnet_magic.worker.native import NativeWorker

from .conftest import wait_until


@pytest.fixture
def served() -> Iterator[tuple[BrokerThread, NativeWorker]]:
    """A broker and a native worker in this process (so the test can reach its device)."""
    broker = BrokerThread(calibrate=False).start()
    worker = NativeWorker(broker.url, WgpuExecutor())
    thread = threading.Thread(target=asyncio.run, args=(worker.run(),), daemon=True)
    thread.start()
    try:
        wait_until(broker.devices, 30, "the worker to join")
        yield broker, worker
    finally:
        broker.stop()  # the worker's run() ends when the broker goes away
        thread.join(10)


def test_a_lost_device_fails_a_job_as_device_lost_not_as_the_program_s_error() -> None:
    """wgpu-py reports a lost device only through its calls' validation errors: they are a device-lost
    (retried elsewhere), not the program's own error (before: a compile error, which fails the job)."""
    executor = WgpuExecutor()
    plan = ops.plan("matmul", np.ones((8, 8), np.float32), np.ones((8, 8), np.float32))
    executor.device.destroy()
    with pytest.raises(GpuJobError) as info:
        executor.run(plan.program)
    assert info.value.kind == "device-lost"


def test_the_native_worker_gets_a_new_device_and_runs_the_job_there(served) -> None:
    """The device lost between jobs: the next job runs on a new one, in one attempt, with no failure
    (before, it failed as a compile error, and so did every job after it)."""
    broker, worker = served
    lost = worker.executor
    lost.device.destroy()
    for k in (2, 3):
        plan = ops.plan("matmul", np.full((16, 16), k, np.float32), np.ones((16, 16), np.float32))
        handle = broker.submit(plan.program)
        np.testing.assert_array_equal(plan.finish(handle.future.result(60))[0], np.full((16, 16), 16 * k))
        assert handle.progress.failures == [] and handle.progress.attempts == 1
    assert worker.executor is not lost and not worker.gone

"""A model larger than any one device keeps, split by layers over three native workers that keep
1.5 MiB each (``--cache-mb``): stages, micro-batches, weights that stay, and a stage whose device dies."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

import webnet_magic as wm
from webnet_magic.client import session as sessions
from webnet_magic.errors import DeviceLimitError
from webnet_magic.models.pipeline import PipelineJob

from .conftest import Workers, wait_until

pytestmark = pytest.mark.native
KEPT_MB = 1.5


def tall_mlp() -> nn.Module:
    """3.6 MB of weights in layers of 1.2 MB: three stages on devices keeping 1.5 MiB each."""
    torch.manual_seed(4)
    return nn.Sequential(
        nn.Linear(300, 1000), nn.ReLU(), nn.Linear(1000, 300), nn.Tanh(), nn.Linear(300, 1000), nn.ReLU(),
        nn.Linear(1000, 10),
    ).eval()  # fmt: skip


@pytest.fixture
def trio(workers: Workers) -> Iterator[tuple[sessions.Session, dict[str, object]]]:
    """A session with three small workers, named w1..w3; their processes by device id."""
    sessions.stop()
    session = wm.start(tunnel="off")
    for name in ("w1", "w2", "w3"):
        workers.start(session.url, "--name", name, "--cache-mb", str(KEPT_MB), "--slowdown", "3")
    devices = session.wait_for_devices(3, 120)
    by_name = dict(zip(("w1", "w2", "w3"), workers.processes, strict=True))
    yield session, {d["id"]: by_name[d["name"]] for d in devices}
    wm.stop()


def answer(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def test_a_model_too_big_for_each_device_runs_in_stages_over_three(trio):
    """Each stage on its own device, micro-batches through them, torch's answer; a second call sends no weights."""
    session, _ = trio
    module = tall_mlp()
    net = wm.load_model(module, torch.randn(2, 300))
    assert net.parameter_bytes > 2 * KEPT_MB * 2**20
    x = np.random.default_rng(0).standard_normal((6, 300)).astype(np.float32)
    job = net.submit(x, session=session)
    assert isinstance(job, PipelineJob)
    np.testing.assert_allclose(job.result(300), answer(module, x), rtol=1e-4, atol=1e-5)
    stages = {t.id.rsplit(".", 1)[1] for t in job.tasks}
    assert stages == {"1", "2", "3"}
    by_stage = {s: {t.progress.device for t in job.tasks if t.id.endswith(f".{s}")} for s in stages}
    assert len(set.union(*by_stage.values())) == 3, by_stage  # three devices took part
    assert len(job.tasks) >= 3 * 2  # two micro-batches at least went through every stage
    before = session.broker.fleet()["sent"]
    np.testing.assert_allclose(net(x, session=session, timeout=300), answer(module, x), rtol=1e-4, atol=1e-5)
    assert session.broker.fleet()["sent"] - before < net.parameter_bytes / 4  # the weights stayed where they went


def test_a_stage_whose_device_dies_moves_and_the_call_completes(trio):
    session, processes = trio
    module = tall_mlp()
    net = wm.load_model(module, torch.randn(2, 300))
    x = np.random.default_rng(1).standard_normal((6, 300)).astype(np.float32)
    job = net.submit(x, session=session)
    running = wait_until(
        lambda: next((t for t in job.tasks if t.id.endswith(".2") and t.progress.state == "running"), None),
        120,
        "a stage-2 task running",
    )
    lost = running.progress.device
    processes[lost].kill()  # type: ignore[attr-defined]
    np.testing.assert_allclose(job.result(300), answer(module, x), rtol=1e-4, atol=1e-5)
    assert job.moves and job.moves[0].startswith(f"stage 2: {lost} left, now on "), job.moves


def test_weights_beyond_every_device_together_are_refused_naming_the_limit(trio):
    session, _ = trio
    torch.manual_seed(5)
    module = nn.Sequential(*[nn.Linear(300, 1000) if i % 2 == 0 else nn.Linear(1000, 300) for i in range(6)]).eval()
    net = wm.load_model(module, torch.randn(2, 300))
    with pytest.raises(DeviceLimitError, match=r"do not fit the 3 device\(s\) connected"):
        net(np.zeros((2, 300), np.float32), session=session)

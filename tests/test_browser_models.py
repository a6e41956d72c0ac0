"""Models on the browser worker: the page's WebGPU (SwiftShader) in headless Chromium runs the same
programs as the native worker, checked against torch and onnxruntime."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import onnxruntime
import pytest
import torch

import webnet_magic as wm
from webnet_magic.client import session as sessions
from webnet_magic.models.samples import light_model

from . import model_zoo
from .conftest import wait_until

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser_session(chromium) -> Iterator[sessions.Session]:
    """A session whose only device is a worker page in Chromium."""
    sessions.stop()
    session = wm.start(tunnel="off")
    context = chromium.new_context()
    context.new_page().goto(session.local_url)
    wait_until(lambda: session.wait_for_devices(1, 60), 90, "the page to join")
    assert session.devices()[0]["runtime"] != "native"
    yield session
    context.close()
    wm.stop()


def test_the_demo_mlp_runs_in_the_browser(browser_session):
    module = model_zoo.demo_mlp()
    net = wm.load_model(module, torch.randn(2, 40))
    x = np.random.default_rng(0).standard_normal((3, 40)).astype(np.float32)
    np.testing.assert_allclose(net(x, session=browser_session), model_zoo.torch_answer(module, x), rtol=1e-5, atol=1e-6)


def test_a_cnn_and_a_decoder_run_in_the_browser(browser_session):
    cnn = model_zoo.small_resnet()
    net = wm.load_model(model_zoo.to_onnx(cnn, torch.randn(1, 3, 32, 32)))
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(net(x, session=browser_session), model_zoo.torch_answer(cnn, x), rtol=1e-4, atol=1e-5)
    decoder = model_zoo.decoder()
    ids = np.random.default_rng(2).integers(0, 97, (1, 9)).astype(np.int64)
    gpt = wm.load_model(model_zoo.to_onnx(decoder, torch.from_numpy(ids), {0: "batch", 1: "tokens"}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ids narrowed to int32
        logits = gpt(ids, session=browser_session)
    np.testing.assert_allclose(logits, model_zoo.torch_answer(decoder, ids), rtol=1e-4, atol=1e-4)


def test_squeezenet_with_random_weights_runs_in_the_browser(browser_session):
    """A real architecture (grouped fire modules, Concat, GlobalAveragePool) on SwiftShader."""
    model = light_model("squeezenet")
    net = wm.load_model(model)
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    run = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = run.run(None, {net.inputs[0].name: x})
    got = net(x, session=browser_session, timeout=600)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-5 * float(np.abs(expected).max()))

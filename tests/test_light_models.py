"""The nine real architectures in the onnx wheel, with seeded random weights, against onnxruntime.

ONNX's own runner already runs these models (tests/test_onnx_backend.py), but their weights are all
``ConstantOfShape(0.02)``: every softmax output is exactly uniform, so a wrong convolution can still
pass.  Here each constant gets seeded random values (He-style scale; batch-norm variances and
scales positive), the input is random, and the logits (the final softmax is left out: random weights
saturate it) are compared with onnxruntime's, element by element.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

import webnet_magic as wm
from webnet_magic.client import session as sessions
from webnet_magic.models.samples import LIGHT_MODELS, light_model

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def session(native_session: sessions.Session) -> sessions.Session:
    return native_session


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_a_real_architecture_with_random_weights_matches_onnxruntime(session, name):
    model = light_model(name, logits=True)
    net = wm.load_model(model)
    (spec,) = net.inputs
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = reference.run(None, {spec.name: x})
    got = net(x, timeout=900)
    assert got.shape == expected.shape
    assert np.std(expected) > 1e-3 * np.abs(expected).max(), "random weights should make the logits differ"
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()))

"""The nine real architectures in the onnx wheel, with seeded random weights, against onnxruntime.

ONNX's own runner already runs these models (tests/test_onnx_backend.py), but their weights are all
``ConstantOfShape(0.02)``: every softmax output is exactly uniform, so a wrong convolution can still
pass.  Here each constant gets seeded random values (He-style scale; batch-norm variances and
scales positive), the input is random, and the whole output is compared with onnxruntime's.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import numpy_helper

import webnet_magic as wm
from webnet_magic.client import session as sessions

pytestmark = pytest.mark.native

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet", "squeezenet",
          "vgg19", "zfnet512"]  # fmt: skip


@pytest.fixture(scope="module")
def session() -> Iterator[sessions.Session]:
    sessions.stop()
    running = wm.start(tunnel="off")
    running.local_worker("native")
    running.wait_for_devices(1, 120)
    yield running
    wm.stop()


def randomized(name: str, seed: int = 0) -> onnx.ModelProto:
    """The light model with every ``ConstantOfShape`` weight replaced by a seeded random initializer."""
    model = onnx.load(str(LIGHT / f"light_{name}.onnx"))
    graph = model.graph
    shapes = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(seed)
    kept = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape":
            kept.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        target = node.output[0]
        lowered = target.lower()
        if any(k in lowered for k in ("riv", "var", "bn_s", "scale")):  # variances and scales: positive
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            value = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[1:])), shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), target))
    del graph.node[:]
    graph.node.extend(kept)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in names or i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_a_real_architecture_with_random_weights_matches_onnxruntime(session, name):
    model = randomized(name)
    net = wm.load_model(model)
    (spec,) = net.inputs
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    reference = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = reference.run(None, {spec.name: x})
    got = net(x, timeout=900)
    assert got.shape == expected.shape
    assert np.std(expected) > 1e-4, "random weights should make the output far from uniform"
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-5 * float(np.abs(expected).max()))

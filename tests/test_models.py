"""Models end to end: torch modules and ONNX graphs loaded, checked and run on a native worker (lavapipe),
compared with torch and onnxruntime; weights sent once; errors before anything is sent."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper

import webnet_magic as wm
from webnet_magic.client import session as sessions
from webnet_magic.errors import ShapeError
from webnet_magic.models import ModelError

from . import model_zoo

pytestmark = pytest.mark.native


@pytest.fixture(scope="module")
def session(native_session: sessions.Session) -> sessions.Session:
    return native_session


def sent(session: sessions.Session) -> int:
    return session.broker.fleet()["sent"]


def jobs_done(session: sessions.Session) -> int:
    return sum(d["jobs_done"] for d in session.devices())


def onnxruntime_answer(proto: onnx.ModelProto, *arrays: np.ndarray) -> list[np.ndarray]:
    run = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return run.run(None, {i.name: a for i, a in zip(run.get_inputs(), arrays, strict=True)})


def test_the_seed_projects_demo_runs_from_a_torch_module_and_its_weights_travel_once(session):
    """Linear(40, 8196) -> ReLU -> Linear(8196, 1) -> Sigmoid, exported by torch: torch's answer, and a
    second call sends only its input (and the kernels), not the 1.3 MB of weights."""
    module = model_zoo.demo_mlp()
    net = wm.load_model(module, torch.randn(2, 40))
    X = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)
    before = sent(session)
    Y = net(X)
    first = sent(session) - before
    np.testing.assert_allclose(Y, model_zoo.torch_answer(module, X), rtol=1e-5, atol=1e-6)
    before = sent(session)
    np.testing.assert_allclose(net(X * 2), model_zoo.torch_answer(module, X * 2), rtol=1e-5, atol=1e-6)
    second = sent(session) - before
    assert net.parameter_bytes > 1_300_000
    assert first > net.parameter_bytes > second + 1_000_000, (first, second)


def test_a_model_describes_itself(session):
    """Its inputs with the symbolic batch, outputs, ops and weight bytes, in text and in HTML."""
    net = wm.load_model(model_zoo.demo_mlp(), torch.randn(2, 40))
    text = repr(net)
    assert "input  input: float32(batch, 40)" in text and "output output: float32(batch, 1)" in text
    assert "Gemm x2" in text and "MB of weights" in text
    assert "<table>" in net._repr_html_()
    assert [s.name for s in net.inputs] == ["input"] and net.ops["Relu"] == 1


def test_a_cnn_with_batchnorm_grouped_conv_and_pooling_matches_torch(session):
    """Conv + BatchNorm folded at load, a grouped conv, residual adds, pools, softmax: batch 1 and 3."""
    module = model_zoo.small_resnet()
    net = wm.load_model(model_zoo.to_onnx(module, torch.randn(1, 3, 32, 32)))
    assert "BatchNormalization" not in net.ops  # folded into the convolutions
    for batch in (1, 3):
        X = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        np.testing.assert_allclose(net(X), model_zoo.torch_answer(module, X), rtol=1e-4, atol=1e-5)


def test_a_gpt_style_decoder_matches_onnxruntime_and_torch(session):
    """Token ids (int64, narrowed), Gather embeddings, LayerNormalization, fused QKV + Split, shapes computed
    in the graph, a causal mask through Where, Softmax, GELU through Erf."""
    module = model_zoo.decoder()
    ids = np.random.default_rng(3).integers(0, 97, (2, 11)).astype(np.int64)
    proto = model_zoo.to_onnx(module, torch.from_numpy(ids), {0: "batch", 1: "tokens"})
    ops = {n.op_type for n in proto.graph.node}
    assert {"Gather", "LayerNormalization", "Split", "Where", "Softmax", "Erf", "Shape"} <= ops, ops
    net = wm.load_model(proto)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int64 ids narrowed to int32, said once
        logits = net(ids)
    (reference,) = onnxruntime_answer(proto, ids)
    np.testing.assert_allclose(logits, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, model_zoo.torch_answer(module, ids), rtol=1e-4, atol=1e-4)
    shorter = ids[:1, :5]  # another batch and length: the symbolic dimensions bind per call
    np.testing.assert_allclose(net(shorter), onnxruntime_answer(proto, shorter)[0], rtol=1e-4, atol=1e-4)


def test_local_runs_the_same_graph_with_numpy(session):
    """--local: every op's numpy reference, no device, the same answer."""
    module = model_zoo.small_resnet()
    net = wm.load_model(model_zoo.to_onnx(module, torch.randn(1, 3, 32, 32)))
    X = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    before = jobs_done(session)
    np.testing.assert_allclose(net(X, local=True), model_zoo.torch_answer(module, X), rtol=1e-5, atol=1e-6)
    assert jobs_done(session) == before


def test_free_drops_the_weights_so_the_next_call_sends_them_again(session):
    net = wm.load_model(model_zoo.demo_mlp(), torch.randn(2, 40))
    X = np.ones((1, 40), np.float32)
    net(X)
    before = sent(session)
    net(X)
    kept = sent(session) - before
    net.free()
    before = sent(session)
    net(X)
    assert sent(session) - before > kept + net.parameter_bytes * 0.9


def _graph_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_an_unsupported_op_is_refused_at_load_naming_it_and_the_supported_list():
    proto = _graph_model(
        [helper.make_node("Relu", ["x"], ["r"], name="first"), helper.make_node("Det", ["r"], ["y"], name="det7")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
    )
    with pytest.raises(ModelError, match=r"Det node 'det7' is not supported .*Supported: .*Conv.*MatMul"):
        wm.load_model(proto)


def test_wrong_inputs_name_the_model_input_and_its_shape(session):
    net = wm.load_model(model_zoo.demo_mlp(), torch.randn(2, 40))
    with pytest.raises(ShapeError, match=r"input input: float32\(batch, 40\) got shape \(3, 41\)"):
        net(np.zeros((3, 41), np.float32))
    with pytest.raises(ModelError, match="needs input input"):
        net()
    with pytest.raises(ModelError, match="has no input 'x'"):
        net(x=np.zeros((1, 40)))
    with pytest.raises(ModelError, match="no model file"):
        wm.load_model("/nonexistent/model.onnx")


def test_the_batch_is_cut_over_two_devices_by_speed(session):
    """With two devices, a batch of 6 becomes two tasks of one job, and the answer is whole; a small call
    under shard="auto" stays one task."""
    session.local_worker("native")
    session.wait_for_devices(2, 120)
    module = model_zoo.small_resnet()
    net = wm.load_model(model_zoo.to_onnx(module, torch.randn(1, 3, 32, 32)))
    X = np.random.default_rng(7).standard_normal((6, 3, 32, 32)).astype(np.float32)
    job = net.submit(X, session=session, shard=2)  # ("auto" cuts only work worth a round trip: this is small)
    assert len(job.tasks) == 2
    np.testing.assert_allclose(job.result(120), model_zoo.torch_answer(module, X), rtol=1e-4, atol=1e-5)
    assert len(net.submit(X, session=session, shard="off").tasks) == 1
    assert len(net.submit(X, session=session).tasks) == 1


def test_map_streams_batches_through_a_model_in_order(session):
    """net.map: several batches in flight, results in order, each torch's answer; weights sent once."""
    module = model_zoo.demo_mlp()
    net = wm.load_model(module, torch.randn(2, 40))
    batches = [np.random.default_rng(i).standard_normal((3, 40)).astype(np.float32) for i in range(6)]
    for device in session.devices():  # the weights travel here, to every device the stream may use
        net(batches[0], session=session, devices=device["id"])
    before = sent(session)
    results = list(net.map(batches, session=session, in_flight=3))
    assert len(results) == 6
    for x, y in zip(batches, results, strict=True):
        np.testing.assert_allclose(y, model_zoo.torch_answer(module, x), rtol=1e-5, atol=1e-6)
    assert sent(session) - before < net.parameter_bytes / 4

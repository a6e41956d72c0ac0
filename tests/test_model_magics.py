"""Models from the magic, in a real IPython shell with a native worker: load, call inside expressions,
--bg, --local, and errors that bind nothing."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from . import model_zoo

pytestmark = pytest.mark.native


@pytest.fixture
def loaded(joined, tmp_path):
    """The shell with the seed demo saved as model.onnx and loaded as ``net``, and an input ``X``."""
    module = model_zoo.demo_mlp()
    path = tmp_path / "model.onnx"
    onnx.save(model_zoo.to_onnx(module, torch.randn(2, 40)), str(path))
    joined.user_ns["X"] = np.random.default_rng(0).standard_normal((4, 40)).astype(np.float32)
    assert joined.run_cell(f"%webnet load {path} -> net", store_history=False).success
    return joined, module


def test_load_binds_a_model_and_a_model_runs_inside_an_expression(loaded):
    shell, module = loaded
    assert type(shell.user_ns["net"]).__name__ == "Model"
    assert shell.run_cell("%webnet 1 - net(X) -> P", store_history=False).success
    expected = 1 - model_zoo.torch_answer(module, shell.user_ns["X"])
    np.testing.assert_allclose(shell.user_ns["P"], expected, rtol=1e-5, atol=1e-6)


def test_a_model_call_in_the_background_and_locally(loaded):
    shell, module = loaded
    result = shell.run_cell("h = %webnet net(X) -> Y --bg", store_history=False)
    assert result.success
    shell.user_ns["h"].result(120)
    shell.run_cell("pass", store_history=False)  # bound as the next cell runs
    np.testing.assert_allclose(shell.user_ns["Y"], model_zoo.torch_answer(module, shell.user_ns["X"]), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    assert shell.run_cell("%webnet net(X) -> L --local", store_history=False).success
    np.testing.assert_allclose(shell.user_ns["L"], shell.user_ns["Y"], rtol=1e-5, atol=1e-6)


def test_a_wrong_input_is_one_line_and_binds_nothing(loaded, capsys):
    shell, _ = loaded
    shell.user_ns["Y"] = "untouched"
    shell.user_ns["Z"] = np.zeros((4, 41), np.float32)
    result = shell.run_cell("%webnet net(Z) -> Y", store_history=False)
    assert not result.success or result.error_in_exec is None
    assert "(batch, 40) got shape (4, 41)" in capsys.readouterr().err
    assert shell.user_ns["Y"] == "untouched"


def test_load_refuses_what_is_no_model(joined, capsys):
    joined.user_ns["thing"] = 3
    joined.run_cell("%webnet load thing -> net", store_history=False)
    assert "cannot load a model from a int" in capsys.readouterr().err
    assert "net" not in joined.user_ns
    joined.run_cell("%webnet load missing.onnx -> net", store_history=False)
    assert "no model file at 'missing.onnx'" in capsys.readouterr().err
    assert "net" not in joined.user_ns

"""``onnx.backend.base.Backend`` on this process's webnet session, so ONNX's own test runner can drive it.

::

    import onnx.backend.test
    from webnet_magic.onnx import backend
    suite = onnx.backend.test.BackendTest(backend, __name__)

``prepare`` loads a model (:func:`webnet_magic.load_model`) and returns a rep whose
``run`` calls it on the running session's devices; with no session, one is started
on loopback with a local worker (``worker_kind``: ``"native"`` for wgpu-py,
``"browser"`` (headless Chromium), or ``"auto"``).  ``is_compatible`` says no to graphs with ops that do
not run here, so the runner skips them rather than counting them as failures.
ONNX names devices ``CPU`` and ``CUDA``; a webnet device is neither, and answers to
``CPU`` (the runner's default), meaning "whatever device the fleet has".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep

from ..client import session as sessions
from ..models import Model, ModelError, load_model

#: The local worker started when no session runs: "native" (wgpu-py), "browser" (Chromium) or "auto".
worker_kind = "auto"
#: Seconds a call may take (a large model on a CPU adapter is slow).
timeout = 600.0


class WebnetRep(BackendRep):
    """A prepared model; ``run`` takes the inputs in graph order (or by name) and returns a tuple."""

    def __init__(self, model: Model) -> None:
        self.model = model

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            results = self.model(session=session(), timeout=timeout, **inputs)
        else:
            arrays = list(inputs) if isinstance(inputs, Sequence) else [inputs]
            results = self.model(*arrays, session=session(), timeout=timeout)
        return results if isinstance(results, tuple) else (results,)


class WebnetBackend(Backend):
    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        try:
            load_model(model)
        except (ModelError, TypeError, ValueError):
            return False
        return True

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> WebnetRep:
        super().prepare(model, device, **kwargs)
        return WebnetRep(load_model(model))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU", outputs_info: Any = None,
                 **kwargs: Any) -> tuple[Any, ...]:  # fmt: skip
        """One node as a model of its own (inputs as given, outputs of unknown shape)."""
        arrays = [np.asarray(a) for a in inputs]
        graph = onnx.helper.make_graph(
            [node],
            "node",
            [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
             for name, a in zip(node.input, arrays, strict=False)],
            [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output],
        )  # fmt: skip
        return cls.run_model(onnx.helper.make_model(graph), arrays, device, **kwargs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


def session() -> sessions.Session:
    """The running session, or one started here with a local worker that the runner's tests share."""
    running = sessions.current()
    if running is None:
        running = sessions.start(tunnel="off")
    if not running.devices():
        running.local_worker(worker_kind)
        running.wait_for_devices(1, timeout=120)
    return running


is_compatible = WebnetBackend.is_compatible
prepare = WebnetBackend.prepare
run_model = WebnetBackend.run_model
run_node = WebnetBackend.run_node
supports_device = WebnetBackend.supports_device

"""Models: an ONNX graph (or a torch module, exported to ONNX) run on the fleet.

``load_model`` reads and checks the graph, folds what is constant on the host, and
refuses unsupported ops at once; the :class:`Model` it returns is called like a
function (``net(X)``), in Python or inside ``%webnet`` expressions.  The lowering of
each ONNX op into the op graph lives in :mod:`.onnx_ops` (elementwise, shapes,
indexing) and :mod:`.onnx_nn` (convolution, pooling, normalization, Gemm, softmax,
reductions); :mod:`.run` turns a call into tasks, cutting a batch over devices.
"""

from __future__ import annotations

from . import onnx_nn, onnx_ops  # noqa: F401  (importing registers the ONNX ops)
from .lowering import supported_ops
from .model import Model, load_model
from .source import ModelError, TensorSpec

__all__ = ["Model", "ModelError", "TensorSpec", "load_model", "supported_ops"]

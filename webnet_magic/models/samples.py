"""Real architectures to try without downloading anything: the nine "light" models in the onnx wheel.

ONNX ships them for its conformance runner with every weight made by ``ConstantOfShape(0.02)``,
which makes each output exactly uniform.  :func:`light_model` gives the same graph with seeded
random weights (He-style scale; batch-norm scales and variances positive), so its outputs are
far from uniform: good for benchmarks, and for tests where a wrong convolution must show.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

#: The architectures, by the names ONNX's runner gives their tests.
LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                "squeezenet", "vgg19", "zfnet512")  # fmt: skip


def light_model(name: str, seed: int = 0, *, any_batch: bool = False, logits: bool = False) -> Any:
    """The onnx wheel's light ``name`` (see :data:`LIGHT_MODELS`) as a ModelProto with random weights.

    ``any_batch``: the input's first dimension becomes the symbolic ``batch``, and reshape targets
    that fix it to 1 take -1 instead (these graphs were exported for batch 1).  ``logits``: the graph
    ends before its final Softmax, whose probabilities random weights tend to saturate to 0 and 1
    (every one of them would then match exactly, hiding small errors in what came before).
    """
    import onnx
    from onnx import numpy_helper

    if name not in LIGHT_MODELS:
        raise ValueError(f"no light model {name!r}; there are: {', '.join(LIGHT_MODELS)}")
    model = onnx.load(str(Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"))
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(seed)
    nodes = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape":
            nodes.append(node)
            continue
        shape = tuple(int(d) for d in constants[node.input[0]])
        graph.initializer.append(numpy_helper.from_array(_weights(node.output[0], shape, rng), node.output[0]))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    names = {t.name for t in kept}
    inputs = [i for i in graph.input if i.name in used and i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)  # from IR 4 on, initializers need not be listed as inputs
    if logits and graph.node[-1].op_type == "Softmax":
        last = graph.node[-1]
        graph.output[0].name = last.input[0]
        graph.node.remove(last)
    if any_batch:
        for value in (graph.input[0], *graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = "batch"
        targets = {n.input[1] for n in graph.node if n.op_type == "Reshape"}
        for i, t in enumerate(graph.initializer):
            shape = numpy_helper.to_array(t)
            if t.name in targets and shape.ndim == 1 and shape.size > 1 and shape[0] == 1:
                graph.initializer[i].CopyFrom(numpy_helper.from_array(np.concatenate([[-1], shape[1:]]), t.name))
    return model


def _weights(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    lowered = name.lower()
    if any(k in lowered for k in ("riv", "var", "bn_s", "scale")):  # variances and scales: positive
        values = rng.uniform(0.5, 1.5, shape)
    elif len(shape) >= 2:
        values = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[1:])), shape)
    else:
        values = rng.normal(0.0, 0.1, shape)
    return values.astype(np.float32)

"""webnet_magic: run numpy work from a notebook on the WebGPU in a phone or laptop.

In IPython / Jupyter::

    %load_ext webnet_magic
    %webnet start
    %webnet matmul A B -> C

From Python::

    import webnet_magic as wm
    session = wm.start()          # broker in a background thread; open session.url on a device
    C = session.matmul(A, B)
    Y = wm.run("relu(X @ W1 + b1) @ W2", X=X, W1=W1, b1=b1, W2=W2)   # one job
    net = wm.load_model("model.onnx")   # or a torch module with example inputs
    P = net(X)                          # weights go to each device once

Imports stay lazy so ``%load_ext`` is cheap and a missing optional extra (wgpu for
the native worker) only matters when its feature is used.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# A library's logging is for whoever configures logging: without this, Python's last-resort
# handler writes warnings to stderr, which a kernel shows in the cell that ran last.
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

    from .client.session import Session


def start(**options: Any) -> Session:
    """Start this process's broker, or return the running one (see :class:`Session`)."""
    from .client.session import start as _start

    return _start(**options)


def run(expression: str, /, *, local: bool = False, **arrays_and_options: Any) -> Any:
    """Evaluate ``expression`` as one job on the fleet, its names bound from keyword arrays.

    ``run("relu(X @ W1 + b1) @ W2", X=X, W1=W1, b1=b1, W2=W2)`` sends the four arrays once,
    keeps ``X @ W1 + b1`` and its relu on the device, and returns only the product.  A tuple
    expression returns a tuple.  ``local=True`` computes with numpy instead (no broker needed).
    The keywords ``timeout``, ``devices``, ``shard``, ``verify`` and ``wire`` are options, as
    for :meth:`Session.launch <webnet_magic.client.session.Session.launch>` (so no array may
    take those names); ``wire="f16"`` sends float data as float16 both ways.
    """
    from .client.session import RUN_OPTIONS, evaluate_expression

    options = {k: arrays_and_options.pop(k) for k in RUN_OPTIONS if k in arrays_and_options}
    return evaluate_expression(expression, arrays_and_options, local=local, **options)


def load_model(source: Any, example: Any = None, **options: Any) -> Any:
    """A model to run on the fleet: an ONNX path, bytes or ModelProto, or a torch module with example inputs.

    ``net = load_model("resnet50.onnx")`` then ``Y = net(X)``; see
    :func:`webnet_magic.models.load_model` (needs the ``[models]`` extra: onnx).
    """
    from .models import load_model as _load

    return _load(source, example, **options)


def stop() -> None:
    """Stop this process's broker, closing every worker connection and freeing its port."""
    from .client.session import stop as _stop

    _stop()


def load_ipython_extension(ipython: InteractiveShell) -> None:
    """``%load_ext webnet_magic``: register ``%webnet`` / ``%%webnet``."""
    from .client.magics import load

    load(ipython)


def unload_ipython_extension(ipython: InteractiveShell) -> None:
    """``%unload_ext webnet_magic``: stop the broker and remove the input transformer."""
    from .client.magics import unload

    unload(ipython)


__all__ = ["__version__", "load_ipython_extension", "load_model", "run", "start", "stop", "unload_ipython_extension"]

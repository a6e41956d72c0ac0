"""The ops webnet_magic can run on a device: each a ``.wgsl`` kernel beside the Python that plans it.

An op module offers ``ARITY``, ``RESULTS`` and ``USAGE`` (for the magic's parser and help),
``plan(*operands, names=...) -> Plan`` (shape and dtype checks,
then a :class:`~webnet_magic.program.Program`), ``reference(*operands)`` (numpy's
answer) and ``tolerance(*operands)`` (how far the device may be from it).
"""

from __future__ import annotations

from types import ModuleType

from . import matmul

OPS: dict[str, ModuleType] = {"matmul": matmul}

__all__ = ["OPS", "matmul"]

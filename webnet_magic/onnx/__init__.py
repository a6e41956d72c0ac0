"""ONNX's backend interface over webnet_magic (see :mod:`webnet_magic.onnx.backend`)."""

"""Exceptions a user of webnet_magic can catch, each saying what to do next.

Input problems (:class:`ShapeError`, :class:`DtypeError`) subclass the builtin
``ValueError`` / ``TypeError`` so generic numpy-style handlers keep working;
device problems subclass ``RuntimeError`` and carry the worker's own message.
"""

from __future__ import annotations


class WebnetError(Exception):
    """Base class of every error raised by webnet_magic."""


class ShapeError(WebnetError, ValueError):
    """Operands whose shapes the op cannot combine; nothing was sent."""


class DtypeError(WebnetError, TypeError):
    """An operand whose dtype WGSL cannot hold (complex, object, strings, ...)."""


class DeviceLimitError(WebnetError, ValueError):
    """A job larger than a device's reported limits (buffer size, dispatch size)."""


class DeviceNotFound(WebnetError, LookupError):
    """``--device ID`` names no connected device (see ``%webnet devices``)."""


class NoDeviceError(WebnetError, TimeoutError):
    """No worker connected before the timeout; open the worker URL on a device with WebGPU."""


class JobTimeout(WebnetError, TimeoutError):
    """A job did not finish before its timeout; it has been cancelled on the worker."""


class WorkerError(WebnetError, RuntimeError):
    """A worker could not run a job: WGSL compile error, device lost, out of memory, ...

    ``kind`` is a short machine-readable tag (``compile``, ``validation``,
    ``out-of-memory``, ``device-lost``, ``disconnected``, ...) and ``device`` the id
    of the worker that reported it.
    """

    def __init__(self, message: str, *, kind: str = "error", device: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.device = device


class WorkerLost(WorkerError):
    """The worker running a job disconnected or stopped answering heartbeats mid-job."""


class VerificationFailed(WorkerError):
    """A device's result failed the ``--verify`` check; the device is banned for the session."""


class BrokerStopped(WebnetError, RuntimeError):
    """The broker was stopped (``%webnet stop``) while a job was waiting or running."""


class TunnelError(WebnetError, RuntimeError):
    """A tunnel or https mode could not be opened; the broker keeps serving this machine."""

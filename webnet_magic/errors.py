"""Exceptions a user of webnet_magic can catch, each saying what to do next.

Input problems (:class:`ShapeError`, :class:`DtypeError`) subclass the builtin
``ValueError`` / ``TypeError`` so generic numpy-style handlers keep working;
device problems subclass ``RuntimeError`` and carry the worker's own message.

IPython shows each of them as one line (``DeviceLost: webnet: ...``) instead of a
traceback: they are raised on purpose, their message says what happened and what to
do, and a traceback through webnet's own frames would bury that (``%tb`` still shows it).
"""

from __future__ import annotations

#: What every message the magics print starts with, so a user can tell webnet's words from others'.
PREFIX = "webnet: "


def prefixed(message: str) -> str:
    """``message`` with :data:`PREFIX` in front, once."""
    return message if message.startswith(PREFIX) else PREFIX + message


class WebnetError(Exception):
    """Base class of every error raised by webnet_magic."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows in place of a traceback (the protocol ipyparallel's RemoteError uses)."""
        return f"{type(self).__name__}: {prefixed(str(self))}".splitlines()


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


class DeviceLost(NoDeviceError):
    """The device(s) running a job were lost and none took it up again before the timeout.

    A :class:`NoDeviceError` (no device was left to finish the job) that says what happened:
    ``devices`` are the ids of the devices lost, ``failures`` every failed attempt, in order.
    """

    def __init__(self, message: str, *, devices: tuple[str, ...] = (), failures: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.devices = devices
        self.failures = failures


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

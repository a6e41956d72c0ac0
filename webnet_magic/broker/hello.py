"""What a worker's hello may say about itself, as the broker keeps it: nothing from a device is trusted.

A device names itself and its adapter, and reports its limits.  Names reach the user's screen
(``%webnet devices``, the panel), limits reach the scheduler's arithmetic; both are cleaned here,
as pure functions, before either sees them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

#: Limits a device may report: WebGPU's names, each a positive integer a JavaScript number holds exactly.
MAX_LIMITS, MAX_LIMIT = 64, 2**53
#: What every WebGPU device supports at least (the specification's defaults), for the limits the kernels
#: are written against: 16 x 16 workgroups, 16 KiB of workgroup memory, eight storage buffers.  (The two
#: buffer sizes are not here: a device may cap those itself, as a phone or ``--max-buffer-mb`` does.)
WEBGPU_GUARANTEES = {
    "maxComputeInvocationsPerWorkgroup": 256,
    "maxComputeWorkgroupSizeX": 256,
    "maxComputeWorkgroupSizeY": 256,
    "maxComputeWorkgroupSizeZ": 64,
    "maxComputeWorkgroupStorageSize": 16384,
    "maxComputeWorkgroupsPerDimension": 65535,
    "maxStorageBuffersPerShaderStage": 8,
    "maxUniformBufferBindingSize": 65536,
}


def printable(value: Any, limit: int) -> str:
    """A device-supplied string as shown to the user: control characters (newlines, ANSI escapes) made
    visible as U+FFFD, so a name cannot forge rows in ``%webnet devices``; cut to ``limit``."""
    return "".join("\ufffd" if unicodedata.category(c).startswith("C") else c for c in str(value)[:limit])


def reported_limits(reported: Mapping[Any, Any]) -> dict[str, int]:
    """The limits kept from a hello: at most :data:`MAX_LIMITS` named ones, each an integer in [1, 2**53]."""
    return {
        name: value
        for name, value in list(reported.items())[:MAX_LIMITS]
        if isinstance(name, str) and name.isidentifier() and len(name) <= 64
        and type(value) is int and 1 <= value <= MAX_LIMIT
    }  # fmt: skip


def below_webgpu(limits: Mapping[str, int]) -> str | None:
    """Why a device reporting ``limits`` cannot run the kernels (a limit below what WebGPU guarantees),
    or None: such a device is refused as it joins, as one without WebGPU is."""
    short = [name for name, least in WEBGPU_GUARANTEES.items() if limits.get(name, least) < least]
    if not short:
        return None
    reported = ", ".join(f"{name} of {limits[name]}" for name in short)
    guaranteed = ", ".join(f"{WEBGPU_GUARANTEES[name]}" for name in short)
    return f"it reports {reported}, below what every WebGPU device supports ({guaranteed})"

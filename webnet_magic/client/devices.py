"""The connected devices as a short table, for ``%webnet devices`` and wherever a notebook shows them.

A device's snapshot is a dict of some twenty fields (limits, adapter, link figures, ...): a list
of them, the value of ``session.wait_for_devices()`` at the end of a cell, filled the screen.
:class:`DeviceTable` is still that list, but shows as one row per device.
"""

from __future__ import annotations

from typing import Any

from ..ops.split import buffer_limit

_ROW = "{:<5} {:<11} {:>5} {:>5} {:>8} {:>8} {:>9} {:>7} {:>8}  {}".format
_HEADER = _ROW("id", "state", "jobs", "fails", "GF/s", "last ms", "link MB/s", "rtt ms", "max buf", "name / adapter")


class DeviceTable(list[dict[str, Any]]):
    """Device snapshots (a list of dicts, as :meth:`Session.devices` gives) that show as a table."""

    def __repr__(self) -> str:
        return table(self)


def table(devices: list[dict[str, Any]]) -> str:
    """One header line and one row per device; a sentence when there is none."""
    if not devices:
        return "webnet: no device connected; open the URL from %webnet url on a device with WebGPU"
    return "\n".join([_HEADER, *(_row(d) for d in devices)])


def _row(d: dict[str, Any]) -> str:
    last = f"{d['last_job_ms']:.1f}" if d["last_job_ms"] is not None else "-"
    speed = f"{d['gflops']:.3g}" if d["gflops"] is not None else "-"
    link = [f"{d[k]:.3g}" if d.get(k) is not None else "-" for k in ("link_mbps", "rtt_ms")]  # measured
    buffer = f"{buffer_limit(d['limits']) / 1e6:.0f} MB"
    who = f"{d['name']} / {d['adapter']}" + (f"  ({d['reason']})" if d["banned"] else "")
    return _ROW(d["id"], d["state"], d["jobs_done"], d["failures"], speed, last, *link, buffer, who)

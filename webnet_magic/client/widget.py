"""The panel ``%webnet start`` shows: QR code, worker link, and the fleet as it works.

It is an anywidget; the broker thread sets ``devices`` (speed, state, jobs,
failures, bans), ``jobs`` (in flight, with who holds which shard) and the bytes
sent and received after every change, which reaches the front end while the
notebook is idle or a cell blocks (ipykernel >= 7.0.1 sends from threads).
Where widgets do not render (a terminal, nbconvert), the text form shows the URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anywidget
import segno
import traitlets

from .._assets import static_dir

if TYPE_CHECKING:
    from .session import Session


def qr_svg(url: str) -> str:
    """The QR code of ``url`` as an inline SVG (no image library, no network)."""
    return segno.make(url, error="m").svg_inline(scale=4, border=2, dark="#111", light="#fff")


class DevicePanel(anywidget.AnyWidget):
    """QR code + link + live device table for one session."""

    _esm = static_dir() / "widget.js"
    _css = static_dir() / "widget.css"

    url = traitlets.Unicode("").tag(sync=True)
    qr_svg = traitlets.Unicode("").tag(sync=True)
    note = traitlets.Unicode("").tag(sync=True)
    running = traitlets.Bool(True).tag(sync=True)
    devices = traitlets.List(traitlets.Dict()).tag(sync=True)
    jobs = traitlets.List(traitlets.Dict()).tag(sync=True)
    sent = traitlets.Int(0).tag(sync=True)
    received = traitlets.Int(0).tag(sync=True)
    reach = traitlets.Unicode("local").tag(sync=True)  # local, ngrok or lan: how the link is reached
    tunnel = traitlets.Int(0).tag(sync=True)  # bytes through the ngrok tunnel, both ways

    def __init__(self, session: Session, **kwargs: Any) -> None:
        reach = session.reach
        note = f"{reach.problem} {reach.note}" if reach.problem else reach.note
        super().__init__(url=reach.url, qr_svg=qr_svg(reach.url), note=note, reach=reach.kind, **kwargs)
        self._update(session.broker.fleet())
        session.broker.add_listener(self._update)

    def _update(self, fleet: dict[str, Any]) -> None:
        if self.running:
            with self.hold_sync():  # one message to the front end per change
                self.devices, self.jobs = fleet["devices"], fleet["jobs"]
                self.sent, self.received, self.tunnel = fleet["sent"], fleet["received"], fleet["tunnel"]

    def stopped(self) -> None:
        self.running = False
        self.devices, self.jobs = [], []

    def __repr__(self) -> str:
        if not self.running:
            return "webnet broker: stopped"
        lines = ["webnet broker running. Open this link on a device with WebGPU:", f"  {self.url}"]
        if self.note:
            lines.append(f"  ({self.note})")
        if self.reach == "ngrok":
            lines.append(f"through the tunnel so far: {self.tunnel / 1e6:.1f} MB (ngrok's free tier: ~1 GB a month)")
        lines.append(f"devices: {len(self.devices)}")
        lines += [f"  {d['id']}  {d['name']}  [{d['state']}, {d['jobs_done']} jobs]" for d in self.devices]
        lines += [f"job {j['id']}: {j['done']}/{j['total']} done" for j in self.jobs]
        return "\n".join(lines)

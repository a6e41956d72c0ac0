"""The panel ``%webnet start`` shows: QR code, worker link, and the fleet as it works.

It is an anywidget; the broker thread sets ``devices`` (speed, state, jobs,
failures, bans), ``jobs`` (in flight, with who holds which shard), the bytes
sent and received and the connections refused after every change, which reaches
the front end while the notebook is idle or a cell blocks (ipykernel >= 7.0.1
sends from threads).

The link carries the session's token, so it lives only in the widget's live
state (what the QR code and the link are drawn from) and never in what a
notebook saves as output: the text form says how to get the link instead.  What
a notebook opened later shows says that the session has ended and how to start
one, never a stale link: when the session stops, every shown copy of the panel
is replaced by a line saying so; and a notebook saved while it ran keeps, under
the panel, a note that the panel's own stylesheet hides for as long as the panel
is live (JupyterLab and Notebook 7 show "model not found" for a widget whose
kernel has gone, so the note is what tells the reader why).
"""

from __future__ import annotations

import html
import uuid
from typing import TYPE_CHECKING, Any

import anywidget
import segno
import traitlets
from IPython.display import display, update_display

from .._assets import static_dir
from ..tunnel import FREE_TIER_BYTES

if TYPE_CHECKING:
    from .session import Session

#: Modules of blank margin around the code: the QR standard's quiet zone, which phone cameras need.
QR_QUIET_ZONE = 4
#: Screen pixels per module at the code's natural size (widget.css keeps it at least 148 px wide in any container).
QR_MODULE_PX = 4

#: The panel's text form, for a terminal, a front end without Jupyter widgets, or an untrusted notebook.
#: No link: it would outlive the session, and it holds the token.
FALLBACK_TEXT = (
    "webnet: the live panel (QR code, devices) needs Jupyter widgets and the kernel that ran %webnet start.\n"
    "%webnet url prints the link for a device (with its token), %webnet status what is connected."
)
#: Shown under the panel where the panel is not live: its stylesheet (see widget.css) hides it while it is.
SAVED_NOTE = "webnet: the session that showed its panel here has ended. Run %webnet start to start a new one."
#: What replaces every shown copy of the panel, and its note, once the session stops.
ENDED_TEXT = "webnet: this session has ended. Run %webnet start to start a new one."


def qr_svg(url: str) -> str:
    """The QR code of ``url`` as an inline SVG (no image library, no network).

    It has a ``viewBox`` so a narrow output area scales it instead of cropping it, a
    4-module quiet zone, and crisp edges so a screenshot of it still decodes.
    """
    code = segno.make(url, error="m")
    side = code.symbol_size(border=QR_QUIET_ZONE)[0] * QR_MODULE_PX
    svg = code.svg_inline(scale=1, border=QR_QUIET_ZONE, omitsize=True, dark="#111", light="#fff")
    size = f'<svg width="{side}" height="{side}" shape-rendering="crispEdges" role="img" aria-label="QR code" '
    return svg.replace("<svg ", size, 1)


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
    refused = traitlets.Int(0).tag(sync=True)  # connections the broker turned away (bad token, over a limit)
    reach = traitlets.Unicode("local").tag(sync=True)  # local, ngrok or lan: how the link is reached
    tunnel = traitlets.Int(0).tag(sync=True)  # bytes through the ngrok tunnel, both ways
    tunnel_free = traitlets.Int(FREE_TIER_BYTES).tag(sync=True)  # what ngrok's free tier carries a month

    def __init__(self, session: Session, **kwargs: Any) -> None:
        reach = session.reach
        note = f"{reach.problem} {reach.note}" if reach.problem else reach.note
        super().__init__(url=reach.url, qr_svg=qr_svg(reach.url), note=note, reach=reach.kind, **kwargs)
        self._display_id = f"webnet-panel-{uuid.uuid4().hex}"
        self._shown = False
        self._update(session.broker.fleet())
        session.broker.add_listener(self._update)

    def _ipython_display_(self) -> None:
        """The panel, then :data:`SAVED_NOTE`, each under one display id for every copy, so that
        :meth:`stopped` can replace them all (``display(panel)`` and a cell's last value come here)."""
        data, metadata = self._repr_mimebundle_()
        display(data, metadata=metadata, raw=True, display_id=self._display_id)
        note = f'<div class="webnet-saved-note">{html.escape(SAVED_NOTE)}</div>'
        display({"text/html": note}, raw=True, display_id=f"{self._display_id}-note")  # no text: consoles skip it
        self._shown = True

    def _update(self, fleet: dict[str, Any]) -> None:
        if self.running:
            with self.hold_sync():  # one message to the front end per change
                self.devices, self.jobs = fleet["devices"], fleet["jobs"]
                self.sent, self.received, self.tunnel = fleet["sent"], fleet["received"], fleet["tunnel"]
                self.refused = fleet.get("refused", 0)

    def stopped(self) -> None:
        """The session ended: drop the link, replace every shown copy with :data:`ENDED_TEXT`, close the model.

        Once closed the model is in no widget state a front end saves, and the outputs a
        notebook saves say that the session ended rather than showing a dead link.
        """
        with self.hold_sync():
            self.running = False
            self.devices, self.jobs, self.url, self.qr_svg, self.note = [], [], "", "", ""
        if self._shown:
            update_display({"text/plain": ENDED_TEXT}, raw=True, display_id=self._display_id)
            update_display({"text/html": ""}, raw=True, display_id=f"{self._display_id}-note")
        self.close()

    def __repr__(self) -> str:
        """The text in the widget's display bundle (anywidget's ``text/plain``): never the link."""
        return FALLBACK_TEXT if self.running else ENDED_TEXT

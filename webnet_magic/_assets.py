"""Where the worker page and widget scripts are: inside the wheel, or ``js/`` in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).parent


def static_dir() -> Path:
    """``webnet_magic/static`` when installed from a wheel; the repository's ``js/`` otherwise."""
    for candidate in (_PACKAGE / "static", _PACKAGE.parent / "js"):
        if (candidate / "worker.html").is_file():
            return candidate
    raise FileNotFoundError("webnet_magic's worker page is missing (no static/ or js/ folder); reinstall the package")

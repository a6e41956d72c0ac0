"""Starting a worker on this machine: headless Chromium on the worker page, or the native worker.

For when no phone is at hand: the demo, a notebook on a laptop, and tests.  The
browser worker is the same page a phone opens; the native one runs the same WGSL
through wgpu-py.  Both are child processes, stopped with :meth:`LocalWorker.stop`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

#: Chromium flags for a headless worker.  WebGPU on Linux is behind --enable-unsafe-webgpu;
#: SwiftShader (a CPU implementation) gives an adapter on machines without a GPU.  The
#: background-networking flags stop Chromium calling home on machines with no internet.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--enable-unsafe-webgpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
)
SOFTWARE_GPU_FLAGS = ("--use-webgpu-adapter=swiftshader",)
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """Path of a Chromium or Chrome on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_flags(software_gpu: bool = True) -> list[str]:
    """The flags above, plus --no-sandbox when running as root (Chromium refuses otherwise)."""
    flags = list(CHROMIUM_FLAGS) + (list(SOFTWARE_GPU_FLAGS) if software_gpu else [])
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return flags


def native_available() -> bool:
    try:
        import wgpu  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class LocalWorker:
    """A worker process on this machine; ``kind`` is ``browser`` or ``native``."""

    kind: str
    process: subprocess.Popen[bytes]
    _profile: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def stop(self, timeout: float = 5.0) -> None:
        """End the worker and every process it started (Chromium's renderer and GPU processes)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        if self._profile is not None:
            self._profile.cleanup()


def launch(
    url: str, kind: str = "auto", *, software_gpu: bool = True, name: str | None = None
) -> LocalWorker:
    """Start a worker for ``url``.  ``kind="auto"`` prefers headless Chromium, else the native worker."""
    if kind not in ("auto", "browser", "native"):
        raise ValueError(f"kind must be 'auto', 'browser' or 'native', not {kind!r}")
    chromium = find_chromium()
    if kind == "browser" or (kind == "auto" and chromium):
        if chromium is None:
            raise RuntimeError("no Chromium found; install it (Debian: apt-get install chromium)")
        profile = tempfile.TemporaryDirectory(prefix="webnet-chromium-", ignore_cleanup_errors=True)
        args = [chromium, *chromium_flags(software_gpu), f"--user-data-dir={profile.name}", url]
        return LocalWorker("browser", _spawn(args), profile)
    if not native_available():
        raise RuntimeError(
            "no local worker possible: install Chromium, or wgpu-py (pip install 'webnet-magic[native]')"
        )
    args = [sys.executable, "-m", "webnet_magic.worker", url] + (["--name", name] if name else [])
    return LocalWorker("native", _spawn(args))


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    # A session of its own, so stop() can end the whole process group.
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )

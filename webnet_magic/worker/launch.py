"""Starting a worker on this machine: headless Chromium on the worker page, or the native worker.

For when no phone is at hand: the demo, a notebook on a laptop, and tests.  The
browser worker is the same page a phone opens; the native one runs the same WGSL
through wgpu-py.  Both are child processes, stopped with :meth:`LocalWorker.stop`.

Neither carries the session token on its command line, which every local user can
read (``ps``, ``/proc/*/cmdline``; a URL's fragment is no better, it is argv too).
The native worker reads it from its environment, which only its owner can read;
Chromium opens a page in its private profile directory (mode 0700, the page 0600)
that sends it on to the worker link, so the token exists only in that file and in
the browser's memory.
"""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .native import TOKEN_ENV, split_token

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
    log: IO[bytes] = field(repr=False)  # the process's output, for last_words()
    profile: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    def last_words(self, lines: int = 5) -> str:
        """The exit status and the last lines the process printed: why it stopped."""
        self.log.seek(0)
        text = self.log.read().decode(errors="replace")
        tail = [line.strip() for line in text.splitlines() if line.strip()]
        return f"status {self.process.poll()}: " + (" | ".join(tail[-lines:]) or "(it printed nothing)")

    def stop(self, timeout: float = 5.0) -> None:
        """End the worker and every process it started (Chromium's renderer and GPU processes)."""
        if self._stopped:  # its process group id may belong to someone else by now
            return
        self._stopped = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        if self.profile is not None:
            self.profile.cleanup()
        self.log.close()


def launch(url: str, kind: str = "auto", *, software_gpu: bool = True, name: str | None = None) -> LocalWorker:
    """Start a worker for ``url``.  ``kind="auto"`` prefers headless Chromium, else the native worker."""
    if kind not in ("auto", "browser", "native"):
        raise ValueError(f"kind must be 'auto', 'browser' or 'native', not {kind!r}")
    chromium = find_chromium()
    if kind == "browser" or (kind == "auto" and chromium):
        if chromium is None:
            raise RuntimeError("no Chromium found; install it (Debian: apt-get install chromium)")
        profile = tempfile.TemporaryDirectory(prefix="webnet-chromium-", ignore_cleanup_errors=True)
        flags = [*chromium_flags(software_gpu), f"--user-data-dir={profile.name}"]
        process, log = _spawn([chromium, *flags, _forwarding_page(Path(profile.name), url)])
        return LocalWorker("browser", process, log, profile)
    if not native_available():
        raise RuntimeError(
            "no local worker possible: install Chromium, or wgpu-py (pip install 'webnet-magic[native]')"
        )
    # The token travels in the environment, not on the command line, which other local users can read.
    page, token = split_token(url)
    args = [sys.executable, "-m", "webnet_magic.worker", page] + (["--name", name] if name else [])
    process, log = _spawn(args, {**os.environ, TOKEN_ENV: token})
    return LocalWorker("native", process, log)


def _forwarding_page(folder: Path, url: str) -> str:
    """The ``file:`` URL of a page, readable by this user only, that sends the browser on to ``url``.

    ``folder`` is private already (``mkdtemp`` makes it 0700); the page is created 0600 besides,
    and carries no referrer on to the worker page.
    """
    page = folder / "start.html"
    fd = os.open(page, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(
            '<!doctype html><meta charset="utf-8"><meta name="referrer" content="no-referrer">'
            f'<meta http-equiv="refresh" content="0; url={html.escape(url)}"><title>webnet worker</title>'
        )
    return page.as_uri()


def _spawn(args: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """The process (in a session of its own, so stop() can end its whole group) and its log file."""
    log = tempfile.TemporaryFile()  # noqa: SIM115 (it outlives this call; LocalWorker.stop closes it)
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return process, log

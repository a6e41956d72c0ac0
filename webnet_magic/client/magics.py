"""``%webnet`` / ``%%webnet``: the notebook's commands, over :mod:`webnet_magic.client.session`.

The same function is the line and the cell magic.  A cell holding only
``%%webnet matmul A B -> C`` never reaches it as a cell magic: IPython refuses
an empty cell body before calling any magic, so :func:`bodyless_cell` (an input
transformer that runs before IPython's own) rewrites such a cell into the line
magic.  Input problems become one-line ``UsageError``\\ s and leave every
notebook variable as it was; outputs are bound only after the whole result
has arrived and been checked.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.core.magic import Magics, line_cell_magic, magics_class, no_var_expand
from IPython.display import display
from traitlets import Float, Int, Unicode

from ..config import DEFAULTS
from ..errors import DeviceLimitError, DeviceNotFound, DtypeError, ShapeError, WorkerError, prefixed
from ..ops import Graph, Node
from ..ops.custom import KernelDefinitionError, compile_error, define, install, restore
from ..program import Program
from ..tunnel import FREE_TIER_BYTES
from ..worker.native import split_token
from . import binding
from . import session as sessions
from .devices import table
from .expressions import ExpressionError, namespace_resolver, parse_program
from .parsing import Command, MagicSyntaxError, help_text, parse

_BODYLESS = re.compile(r"^%%webnet(\s|$)")
_ABOUT = """Offload numpy work to the WebGPU of phones and laptops joined to this notebook.

::

    %webnet start                        # broker + QR code + live device panel
    %webnet matmul A B -> C              # C = A @ B on a connected device
    %%webnet matmul A B -> C             # the same, as a cell of its own
    %webnet relu(X @ W1 + b1) @ W2 -> Y  # one job; intermediates stay on the device
    C = %webnet A @ B                    # without '->' the result is returned

"""


def bodyless_cell(lines: list[str]) -> list[str]:
    """Turn a cell that is only ``%%webnet ...`` (blank lines aside) into ``%webnet ...``."""
    if lines and _BODYLESS.match(lines[0]) and not any(line.strip() for line in lines[1:]):
        return ["%" + lines[0][2:]]
    return lines


@magics_class
class WebnetMagics(Magics):
    """Run numpy work on the WebGPU of a phone or laptop joined to this notebook.

    Settings (``%config WebnetMagics.port = 8765``) apply at the next ``%webnet start``.
    """

    port = Int(0, help="Port of the broker (0: any free port).").tag(config=True)
    host = Unicode("127.0.0.1", help="Address the broker binds; 127.0.0.1 is this machine only.").tag(config=True)
    timeout = Float(DEFAULTS.timeout, help="Seconds an op waits for a device and its result.").tag(config=True)
    heartbeat = Float(DEFAULTS.heartbeat, help="Seconds between heartbeats to each worker.").tag(config=True)
    silence_limit = Float(DEFAULTS.silence_limit, help="Seconds of silence before a worker is lost.").tag(config=True)
    lease = Float(DEFAULTS.lease, help="Base of each task's lease in seconds (plus its run time).").tag(config=True)
    attempts = Int(DEFAULTS.attempts, help="Failed attempts before a task's job fails.").tag(config=True)
    progress_after = Float(DEFAULTS.progress_after, help="Seconds before a progress bar shows.").tag(config=True)
    tunnel = Unicode("auto", help="auto (ngrok in Colab/Kaggle with an authtoken), ngrok or off.").tag(config=True)

    @no_var_expand
    @line_cell_magic
    def webnet(self, line: str, cell: str | None = None) -> Any:
        try:
            command = parse(line, cell, self._namespace)
        except MagicSyntaxError as exc:
            raise UsageError(prefixed(str(exc))) from None
        if command.name == "run":
            return self._run(command)
        return getattr(self, f"_{command.name}")(command)

    webnet.__doc__ = _ABOUT + help_text(ops=False)  # %webnet? : every command and option, from the parsers

    # -- sub-commands ------------------------------------------------------------------------

    def _start(self, command: Command) -> None:
        running = sessions.current()
        host, port = command.options.get("host", self.host), command.options.get("port", self.port)
        if running is not None:
            reach = {k: command.options[k] for k in ("tunnel", "lan") if k in command.options}
            if port not in (0, running.broker.port) or host != running.broker.host or reach:
                where = split_token(running.url)[0]  # the token only when asked for: %webnet url
                print(f"webnet: already running at {where}; %webnet stop first to move it or change its reach")
        else:
            try:
                running = sessions.start(
                    host=host,
                    port=port,
                    heartbeat=self.heartbeat,
                    silence_limit=self.silence_limit,
                    lease=self.lease,
                    attempts=self.attempts,
                    depth=command.options.get("depth"),
                    tunnel=command.options.get("tunnel") or self.tunnel,
                    authtoken=command.options.get("authtoken"),
                    lan=command.options.get("lan") or False,
                )
            except OSError as exc:
                raise UsageError(f"webnet: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            except ValueError as exc:
                raise UsageError(f"webnet: {exc}") from None
            if running.reach.problem:
                print(f"webnet: {running.reach.problem}")
        display(running.panel())

    def _stop(self, command: Command) -> None:
        if sessions.current() is None:
            print("webnet: no broker is running")
            return
        sessions.stop()
        print("webnet: broker stopped; every device was disconnected")

    def _status(self, command: Command) -> None:
        session = self._session()
        fleet = session.broker.fleet()
        devices = fleet["devices"]
        busy = sum(d["state"] in ("busy", "calibrating") for d in devices)
        print(f"webnet broker at {split_token(session.url)[0]} (%webnet url shows the link with its token)")
        print(f"{len(devices)} device(s) connected, {busy} busy; {len(fleet['jobs'])} job(s) in flight")
        if session.reach.kind == "ngrok":
            used, free = fleet["tunnel"] / 1e6, FREE_TIER_BYTES / 1e9
            print(f"through the ngrok tunnel: {used:.1f} MB so far (free tier: about {free:g} GB a month)")
        for job in fleet["jobs"]:
            print(f"  job {job['id']}: {job['done']}/{job['total']} done")

    def _devices(self, command: Command) -> None:
        print(table(self._session().devices()))

    def _url(self, command: Command) -> None:
        print(self._session().url)

    def _kernel(self, command: Command) -> None:
        """Define a custom kernel (an op from now on), and compile it on a device if one is connected."""
        try:
            custom = define(command.options["signature"], command.expression, command.options["workgroups"])
        except (KernelDefinitionError, ShapeError) as exc:
            raise UsageError(f"webnet: {exc}") from None
        previous = install(custom)
        session = sessions.current()
        usable = [r for r in session.records() if r.usable] if session else []
        if not usable:
            print(f"webnet: {custom.signature} defined; it compiles on first use (no device is connected)")
            return
        program = Program((), (), (), (), compile=(custom.kernel,))
        try:
            session.run(program, timeout=self.timeout)  # type: ignore[union-attr]
        except BaseException as exc:  # not compiled: the previous definition (if any) stays
            restore(custom.name, previous)
            if not isinstance(exc, WorkerError) or exc.kind != "compile":
                raise
            raise UsageError(f"webnet: {compile_error(custom, str(exc))}") from None
        print(f"webnet: {custom.signature} defined and compiled on {usable[0].id} ({usable[0].name})")

    def _load(self, command: Command) -> None:
        """Load a model (a path, or a notebook variable) and bind it; its summary is printed."""
        from ..models import ModelError, load_model

        source: Any = command.expression
        resolve = namespace_resolver(self._namespace, "in the notebook")
        try:
            if not os.path.exists(source) and source.isidentifier():
                source = resolve(source)
            example = resolve(command.options["example"]) if command.options.get("example") else None
            model = load_model(source, example)
        except (ModelError, DtypeError, ExpressionError) as exc:
            raise UsageError(f"webnet: {exc}") from None
        self._namespace[command.outputs[0]] = model
        print(f"webnet: {command.outputs[0]} = {model!r}")

    def _put(self, command: Command) -> None:
        session, resolve = self._session(), namespace_resolver(self._namespace, "in the notebook")
        try:
            for name in command.options["names"]:
                pinned = session.put(name, resolve(name))
                if not pinned.kept:
                    print(f"webnet: {name} ({pinned.nbytes / 1e3:.0f} KB) is small enough to go with every job")
                    continue
                kept = [d for d, ok in pinned.devices.items() if ok]
                refused = [d for d, ok in pinned.devices.items() if not ok]
                line = f"webnet: {name} ({pinned.nbytes / 1e6:.1f} MB) kept on {', '.join(kept) or 'no device yet'}"
                line += f"; not on {', '.join(refused)} (too large for its cache or limits)" if refused else ""
                print(line + ("" if refused else " and on devices that join later"))
        except (ExpressionError, DtypeError) as exc:
            raise UsageError(f"webnet: {exc}") from None

    def _free(self, command: Command) -> None:
        session = self._session()
        for name in command.options["names"]:
            try:
                session.free(name)
            except KeyError as exc:
                raise UsageError(f"webnet: {exc.args[0]}") from None
            print(f"webnet: devices may drop {name}")

    def _help(self, command: Command) -> None:
        print(command.options.get("text") or help_text())

    def _run(self, command: Command) -> Any:
        """Read the expression into a graph, run it as one job, then bind every output at once.

        With ``--bg`` the job's handle comes back at once and the outputs are bound (all at
        once, and only if the whole job succeeds) on the kernel's thread once it completes and no
        cell is running (see :mod:`~webnet_magic.client.binding`).
        """
        options, names = command.options, command.outputs
        launch = {
            "devices": options.get("devices"),
            "shard": options.get("shard", "auto"),
            "verify": options.get("verify", False),
            "wire": options.get("wire", "f32"),
        }
        try:
            nodes = self._results(command)
            if options.get("local"):
                results = sessions.run_local(nodes)
            elif options.get("bg"):
                bind = binding.binder(self.shell).later(names) if names else None
                return self._session().launch(nodes, bind=bind, **launch)
            else:
                timeout = options.get("timeout", self.timeout)
                session = self._session()
                results = session.run_graph(nodes, timeout=timeout, progress_after=self.progress_after, **launch)
        except (ExpressionError, ShapeError, DtypeError, DeviceLimitError, DeviceNotFound, ValueError) as exc:
            raise UsageError(f"webnet: {exc}") from None
        if not names:
            return results[0] if len(results) == 1 else tuple(results)
        self._binder(names)(results)
        return None

    def _binder(self, names: tuple[str, ...]) -> Callable[[list[Any]], None]:
        """Binds results to ``names`` in one update: a reader never sees some names new and some old."""
        namespace = self._namespace

        def bind(results: list[Any]) -> None:
            namespace.update(zip(names, results, strict=True))

        return bind

    def _results(self, command: Command) -> list[Node]:
        """The nodes to bring back: the final expression's, or the cell's names listed after ``->``."""
        bound = parse_program(command.expression, Graph(), namespace_resolver(self._namespace, "in the notebook"))
        final = bound.pop("", None)
        outputs = command.outputs
        if final is not None:
            if outputs and len(outputs) != len(final):
                raise ExpressionError(
                    f"the expression gives {len(final)} result(s) but {len(outputs)} name(s) follow '->'"
                )
            return final
        if not outputs:
            raise ExpressionError("name the results to bring back after '->', e.g. %%webnet -> H, Y")
        missing = [name for name in outputs if name not in bound]
        if missing:
            raise ExpressionError(f"{', '.join(missing)} is not assigned in the cell")
        return [bound[name] for name in outputs]

    # -- helpers -----------------------------------------------------------------------------

    @property
    def _namespace(self) -> dict[str, Any]:
        assert self.shell is not None, "the magics are registered with a shell"
        return self.shell.user_ns

    def _session(self) -> sessions.Session:
        session = sessions.current()
        if session is None:
            raise UsageError("webnet: no broker is running; start one with %webnet start")
        return session


def load(shell: InteractiveShell) -> None:
    shell.register_magics(WebnetMagics)
    if bodyless_cell not in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.append(bodyless_cell)


def unload(shell: InteractiveShell) -> None:
    sessions.stop()
    binding.detach(shell)
    if bodyless_cell in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.remove(bodyless_cell)
    if shell.magics_manager is not None:
        for kind in ("line", "cell"):
            shell.magics_manager.magics[kind].pop("webnet", None)


__all__ = ["WebnetMagics", "bodyless_cell", "load", "unload"]

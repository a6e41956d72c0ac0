"""Running a :class:`~webnet_magic.program.Program` on a local GPU through wgpu-py.

wgpu-py drives wgpu-native, which runs the same WGSL as the browser on Vulkan,
Metal or D3D12 (and on lavapipe, Mesa's CPU Vulkan, in tests).  This module is
the native twin of ``js/gpu.js``; keep the two in step.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..program import Buffer, Kernel, Program, Step, padded
from .cache import BufferCache
from .warm import SPIN, Warmer

#: Limits asked of the device at their adapter maximum, so large buffers fit; reported in hello.
RAISED_LIMITS = (
    "max-storage-buffer-binding-size",
    "max-buffer-size",
    "max-compute-workgroup-storage-size",
    "max-compute-invocations-per-workgroup",
    "max-compute-workgroups-per-dimension",
)
REPORTED_LIMITS = (
    *RAISED_LIMITS,
    "max-storage-buffers-per-shader-stage",
    "max-uniform-buffer-binding-size",
    "max-compute-workgroup-size-x",
    "max-compute-workgroup-size-y",
    "max-compute-workgroup-size-z",
)


class GpuJobError(Exception):
    """A job the device refused; ``kind`` goes on the wire (compile, validation, out-of-memory, ...)."""

    def __init__(self, kind: str, message: str, missing: list[str] | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.missing = missing or []  # for "missing-inputs": the keys the worker no longer holds


@dataclass
class Prepared:
    """A program whose buffers are uploaded and bind groups made; dispatch it any number of times."""

    program: Program
    buffers: list[Any]
    passes: list[tuple[Any, Any, tuple[int, int, int]]]
    timings: dict[str, float] = field(default_factory=dict)


def camel(name: str) -> str:
    """wgpu-py's ``max-buffer-size`` as WebGPU's JavaScript ``maxBufferSize`` (the wire uses JS names)."""
    head, *rest = name.split("-")
    return head + "".join(w.capitalize() for w in rest)


class WgpuExecutor:
    """One wgpu device, with each kernel compiled once (keyed by its hash)."""

    def __init__(
        self,
        power_preference: str = "high-performance",
        cache_bytes: int = 1 << 30,
        max_buffer_bytes: int | None = None,
    ) -> None:
        """``max_buffer_bytes`` caps the buffer limits this worker reports (and honours), like a phone's."""
        try:
            import wgpu
        except ImportError:
            raise RuntimeError("the native worker needs wgpu-py: pip install 'webnet-magic[native]'") from None
        self._wgpu = wgpu
        self._settings = (power_preference, cache_bytes, max_buffer_bytes)
        hint = "install a Vulkan driver (Debian: mesa-vulkan-drivers), or use Metal on macOS"
        try:
            adapter = wgpu.gpu.request_adapter_sync(power_preference=power_preference)
        except Exception as exc:  # wgpu-native's own error types, depending on the backend
            raise RuntimeError(f"no GPU adapter found ({str(exc).strip().splitlines()[-1]}); {hint}") from None
        if adapter is None:
            raise RuntimeError(f"no GPU adapter found; {hint}")
        self.adapter = adapter
        self.device = adapter.request_device_sync(
            required_limits={name: adapter.limits[name] for name in RAISED_LIMITS}
        )
        self._pipelines: dict[str, Any] = {}
        self._busy = threading.Lock()
        self.cache = BufferCache(cache_bytes, lambda buffer: buffer.destroy())
        self.max_buffer_bytes = max_buffer_bytes
        self.warmer = Warmer(self._prepare_spinner, self._spin, self._busy)
        self._spinner: Prepared | None = None

    def renewed(self) -> WgpuExecutor:
        """A new executor like this one, on a new device: after this one's device was lost (its buffers,
        cache and kernels went with it).  Raises RuntimeError when no device can be had."""
        self.warmer.arm(False)
        return WgpuExecutor(*self._settings)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The device to this thread alone, warming paused (see :mod:`.warm`)."""
        with self.warmer.paused(), self._busy:
            yield

    def _prepare_spinner(self) -> None:
        """The warming kernel, compiled and bound (wgpu-native's device may be used from several threads)."""
        buffers = (Buffer(16), Buffer(16, input=0, uniform=True))  # a sink, and the rounds
        step = Step(Kernel(SPIN), (0, 1), (1, 1, 1))
        self._spinner = self.prepare(Program((np.zeros(4, np.uint32),), buffers, (step,), ()))

    def _spin(self, rounds: int) -> float:
        """One warming dispatch of ``rounds`` rounds, waited for; its seconds (the warmer holds the lock)."""
        spinner = self._spinner
        assert spinner is not None
        self.device.queue.write_buffer(spinner.buffers[1], 0, np.array([rounds, 0, 0, 0], np.uint32))
        self.dispatch(spinner)
        return spinner.timings["kernel"] / 1e3

    def describe(self) -> dict[str, Any]:
        """The adapter, limits and features a worker reports in its hello."""
        info = self.adapter.info
        return {
            "adapter": {
                "vendor": info.get("vendor", ""),
                "architecture": info.get("architecture", ""),
                "device": info.get("device", ""),
                "description": info.get("description", ""),
                "backend": info.get("backend_type", ""),
                "type": info.get("adapter_type", ""),
            },
            # maxCachedBytes: what this worker keeps across jobs (a model's weights), for placing model stages
            "limits": {**{camel(n): self._limit(n) for n in REPORTED_LIMITS}, "maxCachedBytes": self.cache.budget},
            "features": sorted(str(f) for f in self.device.features),
        }

    def _limit(self, name: str) -> int:
        value = int(self.device.limits[name])
        if self.max_buffer_bytes is not None and name in ("max-storage-buffer-binding-size", "max-buffer-size"):
            return min(value, self.max_buffer_bytes)
        return value

    def run(self, program: Program) -> tuple[list[np.ndarray], dict[str, float]]:
        """Upload, dispatch and read back; returns the outputs and per-phase milliseconds.

        One program at a time: a job left running by a dropped connection finishes
        before the next connection's first job starts.
        """
        with self._exclusive():
            prepared = self.prepare(program)
            try:
                self.dispatch(prepared)
                outputs = self.read(prepared)
            finally:
                self.release(prepared)
        return outputs, prepared.timings

    def prepare(self, program: Program) -> Prepared:
        t0 = time.perf_counter()
        for kernel in program.compile:
            self._pipeline(kernel)
        pipelines = [self._pipeline(step.kernel) for step in program.steps]
        t1 = time.perf_counter()
        buffers: list[Any] = []
        prepared = Prepared(program, buffers, [])
        try:
            self._upload(program, buffers)
            prepared.passes = self._bind(program, pipelines, buffers)
            self._wait(buffers)
        except BaseException:
            self.release(prepared)
            raise
        t2 = time.perf_counter()
        prepared.timings.update(compile=(t1 - t0) * 1e3, upload=(t2 - t1) * 1e3)
        return prepared

    def _upload(self, program: Program, buffers: list[Any]) -> None:
        """Each buffer: from the cache (a keyed buffer sent without data), or made and filled."""
        missing = [b.key for b in program.buffers if b.input is None and b.key and self.cache.get(b.key) is None]
        if missing:
            raise GpuJobError("missing-inputs", f"{len(missing)} input(s) were no longer cached", missing)
        in_use = {b.key for b in program.buffers if b.key}
        with self._errors("out-of-memory"):
            for spec in program.buffers:
                if spec.input is None and spec.key:
                    buffers.append(self.cache.get(spec.key))
                    continue
                array = None if spec.input is None else program.inputs[spec.input]
                buf = self._buffer(spec.size, spec.uniform, array)
                buffers.append(buf)
                if spec.key and array is not None:
                    self.cache.keep(spec.key, buf, spec.size, protect=in_use)

    def drop(self, key: str) -> None:
        """Let go of a kept buffer (``%webnet free``), after any job that uses it has finished."""
        with self._exclusive():
            self.cache.drop(key)

    def store(self, key: str, array: np.ndarray, pin: bool) -> bool:
        """Keep ``array`` on the device under ``key`` (``%webnet put``); False if it does not fit."""
        with self._exclusive(), self._errors("out-of-memory"):
            existing = self.cache.get(key)
            if existing is not None:  # already held: only (re)pin it
                return self.cache.keep(key, existing, 0, pin=pin)
            buf = self._buffer(padded(array.nbytes), False, array)
            if not self.cache.keep(key, buf, buf.size, pin=pin):
                buf.destroy()
                return False
            return True

    def _buffer(self, size: int, uniform: bool, array: np.ndarray | None) -> Any:
        if self.max_buffer_bytes is not None and size > self.max_buffer_bytes:
            raise GpuJobError(
                "out-of-memory", f"a {size}-byte buffer is above this worker's limit of {self.max_buffer_bytes}"
            )
        wgpu = self._wgpu
        usage = (
            wgpu.BufferUsage.UNIFORM | wgpu.BufferUsage.COPY_DST
            if uniform
            else wgpu.BufferUsage.STORAGE | wgpu.BufferUsage.COPY_SRC | wgpu.BufferUsage.COPY_DST
        )
        buf = self.device.create_buffer(size=size, usage=usage)
        if array is not None and array.nbytes:
            data = np.asarray(array, order="C").data.cast("B")
            if len(data) % 4:  # queue writes are whole 4-byte words
                data = memoryview(bytes(data) + bytes(-len(data) % 4))
            self.device.queue.write_buffer(buf, 0, data)
        return buf

    def _bind(self, program: Program, pipelines: list[Any], buffers: list[Any]) -> list[Any]:
        passes = []
        with self._errors("validation"):
            for step, pipeline in zip(program.steps, pipelines, strict=True):
                layout = pipeline.get_bind_group_layout(0)
                group = self.device.create_bind_group(
                    layout=layout,
                    entries=[
                        {
                            "binding": i,
                            "resource": {"buffer": buffers[b]},
                        }
                        for i, b in enumerate(step.bindings)
                    ],
                )
                passes.append((pipeline, group, step.workgroups))
        return passes

    def dispatch(self, prepared: Prepared, repeat: int = 1) -> None:
        """Run every step ``repeat`` times in one submission and wait for the GPU.

        ``prepared.timings["kernel"]`` gets the milliseconds per repetition: a benchmark
        repeats so that the wait at the end (a small read-back) is spread thin.
        """
        t0 = time.perf_counter()
        with self._errors("validation"):
            encoder = self.device.create_command_encoder()
            compute = encoder.begin_compute_pass()
            for _ in range(repeat):
                for pipeline, group, workgroups in prepared.passes:
                    compute.set_pipeline(pipeline)
                    compute.set_bind_group(0, group)
                    compute.dispatch_workgroups(*workgroups)
            compute.end()
            self.device.queue.submit([encoder.finish()])
            self._wait(prepared.buffers)
        prepared.timings["kernel"] = (time.perf_counter() - t0) * 1e3 / repeat

    def read(self, prepared: Prepared) -> list[np.ndarray]:
        t0 = time.perf_counter()
        outputs = []
        with self._errors("validation"):
            for out in prepared.program.outputs:
                if out.nbytes == 0:
                    outputs.append(np.empty(out.shape, out.dtype))
                    continue
                # Copies must be multiples of 4 bytes; read the padded size and keep what was asked.
                raw = self.device.queue.read_buffer(prepared.buffers[out.buffer], 0, padded(out.nbytes))
                values = np.frombuffer(raw, dtype=out.dtype, count=math.prod(out.shape))
                outputs.append(values.reshape(out.shape))
        prepared.timings["download"] = (time.perf_counter() - t0) * 1e3
        return outputs

    def release(self, prepared: Prepared) -> None:
        """Destroy the job's buffers, except those the cache keeps for later jobs."""
        for buf in prepared.buffers:
            if not self.cache.owns(buf):
                buf.destroy()
        prepared.buffers.clear()

    def _wait(self, buffers: list[Any]) -> None:
        """Block until the queue's work is done, by reading back 4 bytes of a storage buffer.

        ``queue.on_submitted_work_done_sync`` would say it directly but is broken in
        wgpu-py 0.32; a 4-byte read-back costs tens of microseconds and is portable.
        """
        storage = next((b for b in buffers if b.usage & self._wgpu.BufferUsage.COPY_SRC), None)
        if storage is not None:
            self.device.queue.read_buffer(storage, 0, 4)

    def _pipeline(self, kernel: Kernel) -> Any:
        if kernel.hash not in self._pipelines:
            with self._errors("compile"):
                module = self.device.create_shader_module(code=kernel.source)
                self._pipelines[kernel.hash] = self.device.create_compute_pipeline(
                    layout="auto", compute={"module": module, "entry_point": kernel.entry}
                )
        return self._pipelines[kernel.hash]

    def _errors(self, kind: str) -> _Translate:
        return _Translate(self._wgpu, kind)


class _Translate:
    """Turns wgpu's exceptions into :class:`GpuJobError` with a wire ``kind``."""

    def __init__(self, wgpu: Any, kind: str) -> None:
        self._wgpu, self._kind = wgpu, kind

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, GpuJobError):
            return
        wgpu = self._wgpu
        # wgpu-py does not implement device.lost: a lost device shows only in the errors of every call on it.
        if isinstance(exc, wgpu.GPUError) and "device is lost" in str(exc).lower():
            raise GpuJobError("device-lost", str(exc).strip()) from exc
        if isinstance(exc, wgpu.GPUOutOfMemoryError | MemoryError):
            raise GpuJobError("out-of-memory", str(exc).strip()) from exc
        if isinstance(exc, wgpu.GPUError | wgpu.GPUPipelineError):
            raise GpuJobError(self._kind if self._kind != "out-of-memory" else "validation", str(exc).strip()) from exc

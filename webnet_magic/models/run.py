"""A model call as tasks on the fleet: one task, or the batch cut over devices by their speed.

Data parallelism needs a batch to cut: the inputs whose first dimension is symbolic
(``batch``) are sliced along it, each slice is lowered and compiled on its own, and
goes to the device it was sized for.  The outputs are joined back along their first
axis, which is checked to be the batch in every slice before the batch is cut
(otherwise the call runs as one task).  Each slice is a task of one job, so retries,
leases, ``--verify`` and cancel work as for any sharded job.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DeviceLimitError
from ..ops import Graph, Node, Plan, compile_graph
from ..ops.compiler import parallelism
from ..ops.graph import topological
from ..ops.split import buffer_limit, sized_for
from ..ops.verify import checker
from .lowering import Value

if TYPE_CHECKING:
    from ..client.jobs import Job
    from ..client.session import Session
    from .model import Model


def launch_model(
    session: Session,
    model: Model,
    bound: Mapping[str, np.ndarray],
    *,
    devices: str | Sequence[str] | None = None,
    shard: str | int = "auto",
    verify: bool = False,
    wire: str = "f32",
    bind: Any = None,
) -> Job:
    """Submit ``model`` on ``bound`` inputs; returns the job at once (its results are the model's outputs)."""
    from ..client.jobs import Job
    from ..client.session import AUTO_SHARD_BYTES, AUTO_SHARD_WORK, _device_set, _shard_count, _speed, warn_conversions

    allowed = _device_set(devices)
    fleet = [r for r in session.records() if r.ready and (allowed is None or r.id in allowed)]
    batch = _batch_size(model, bound)
    values = _values(model, bound)  # the whole batch, lowered once
    if len(fleet) > 1 and shard != "off":
        staged = _pipeline(session, model, bound, values, fleet, batch, wire, bind)
        if staged is not None:
            return staged
    ranked = sorted(fleet, key=_speed, reverse=True)
    fastest = ranked[0] if ranked else None
    whole = _compile(model, values, bound, wire, parallelism(fastest))
    count = 1
    if shard == "auto" and batch > 1 and whole[0] is not None:  # as for any job: only work worth a round trip
        program = whole[0].program
        count = len(fleet) if program.work >= AUTO_SHARD_WORK or program.output_bytes >= AUTO_SHARD_BYTES else 1
    elif shard != "off" and batch > 1:
        count = _shard_count(shard)
    count = max(1, min(count, batch))
    targets = [ranked[i % len(ranked)] for i in range(count)] if ranked else [None] * count
    pieces, sizes = [whole], [batch]
    if count > 1:
        sizes = _proportional(batch, [_speed(t) for t in targets])
        pieces = [_lower(model, {k: (a[s] if _batched(model, k) else a) for k, a in bound.items()}, wire,
                         parallelism(target)) for s, target in zip(_slices(sizes), targets, strict=True)]  # fmt: skip
        if not all(_batch_first(p, size) for p, size in zip(pieces, sizes, strict=True)):
            pieces, targets, count = [whole], [None], 1
    for plan, _ in pieces:
        warn_conversions(plan.note if plan else None)
    limit = min((buffer_limit(r.limits) for r in sized_for(fleet)), default=buffer_limit({}))
    job_id = session.broker.new_job_id()
    tasks = []
    for i, ((plan, _), target) in enumerate(zip(pieces, targets, strict=True), 1):
        if plan is None:
            continue
        _check_fits(model, plan, limit)
        tasks.append(
            session.broker.submit(
                plan.program,
                task_id=job_id if count == 1 else f"{job_id}.{i}",
                devices=allowed,
                prefer=target.id if target else None,
                check=checker(plan, wire) if verify else None,
                group=job_id,
                shards=count,
            )
        )

    def assemble(results: list[list[np.ndarray]]) -> list[np.ndarray]:
        done = iter(results)
        per_piece = []
        for plan, values in pieces:
            outputs = iter(plan.finish(next(done))) if plan is not None else iter(())
            per_piece.append([next(outputs) if isinstance(v, Node) else v.array for v in values])
        joined = [np.concatenate(parts) if len(parts) > 1 else parts[0] for parts in zip(*per_piece, strict=True)]
        return model.finish(joined)

    # (with no task, every output was known on the host: the job is done at once)
    return Job(session.broker, job_id, tasks, assemble, text=f"{model.name}(...)", bind=bind)


def _lower(model: Model, arrays: Mapping[str, np.ndarray], wire: str,
           workgroups: int) -> tuple[Plan | None, list[Value]]:  # fmt: skip
    return _compile(model, _values(model, arrays), arrays, wire, workgroups)


def _compile(model: Model, values: list[Value], arrays: Mapping[str, np.ndarray], wire: str,
             workgroups: int) -> tuple[Plan | None, list[Value]]:  # fmt: skip
    """The program for lowered ``values`` (None when every output is known here), and the values."""
    devices = [v for v in values if isinstance(v, Node)]
    keys = model.weight_keys(arrays.values())
    return (compile_graph(devices, wire, keys, workgroups) if devices else None), values


def _values(model: Model, arrays: Mapping[str, np.ndarray]) -> list[Value]:
    graph = Graph()
    return model.lower(graph, {name: graph.input(name, a) for name, a in arrays.items()})


def _pipeline(session: Session, model: Model, bound: Mapping[str, np.ndarray], values: list[Value],
              fleet: list[dict[str, Any]], batch: int, wire: str, bind: Any) -> Job | None:  # fmt: skip
    """The call as a pipeline over devices when no one device keeps all the weights (else None);
    ``values`` is the whole batch lowered."""
    from .pipeline import PipelineJob, capacity, cut

    outputs = [v for v in values if isinstance(v, Node)]
    weights = sum(n.leaf.array.nbytes for n in topological(outputs) if n.op == "input" and model.owns(n))  # type: ignore[union-attr]
    ranked = sorted(fleet, key=capacity, reverse=True)
    if not outputs or capacity(ranked[0]) >= weights:
        return None
    capacities = [capacity(d) for d in ranked]
    stages = cut(outputs, capacities, model.owns)
    count = max(1, min(batch, 2 * stages.count)) if batch else 1
    sizes = _proportional(batch, [1.0] * count) if count > 1 else [batch]
    slices = _slices(sizes) if count > 1 else [slice(None)]
    chunks = []
    for s in slices:
        part = (
            values if count == 1 else _values(model, {k: (a[s] if _batched(model, k) else a) for k, a in bound.items()})
        )
        chunks.append((cut([v for v in part if isinstance(v, Node)], capacities, model.owns), part))
    job_id = session.broker.new_job_id()
    devices = [d.id for d in ranked[: stages.count]]
    return PipelineJob(session, model, chunks, devices, wire=wire, job_id=job_id, bind=bind)


def _batched(model: Model, name: str) -> bool:
    spec = next(s for s in model.inputs if s.name == name)
    return bool(spec.shape) and isinstance(spec.shape[0], str)


def _batch_size(model: Model, bound: Mapping[str, np.ndarray]) -> int:
    """The symbolic first dimension shared by the batched inputs (0 when there is none)."""
    sizes = {bound[s.name].shape[0] for s in model.inputs if _batched(model, s.name)}
    return sizes.pop() if len(sizes) == 1 else 0


def _batch_first(piece: tuple[Plan | None, list[Value]], size: int) -> bool:
    _, values = piece
    return all(isinstance(v, Node) and v.shape and v.shape[0] == size for v in values)


def _proportional(total: int, speeds: Sequence[float]) -> list[int]:
    """``total`` items shared by speed, each share at least one (largest remainders get the rest)."""
    weights = [max(s, 1e-9) for s in speeds]
    exact = [total * w / sum(weights) for w in weights]
    sizes = [max(1, math.floor(e)) for e in exact]
    while sum(sizes) > total:
        sizes[sizes.index(max(sizes))] -= 1
    order = sorted(range(len(exact)), key=lambda i: exact[i] - sizes[i], reverse=True)
    for i in order[: total - sum(sizes)]:
        sizes[i] += 1
    return sizes


def _slices(sizes: Sequence[int]) -> list[slice]:
    starts = np.cumsum([0, *sizes])
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(starts)]


def _check_fits(model: Model, plan: Plan, limit: int) -> None:
    """Refuse a program with a buffer beyond the devices' limit, naming the tensor that needs it."""
    if plan.program.largest_buffer <= limit:
        return
    largest = max(topological(plan.nodes), key=lambda n: n.size * 4)
    raise DeviceLimitError(
        f"{model.name}: {largest.text} needs {largest.size * 4 / 1e6:.1f} MB in one buffer, above the devices' limit "
        f"of {limit / 1e6:.1f} MB; call it with a smaller batch (the batch is cut over devices when there are several)"
    )

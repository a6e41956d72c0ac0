"""A model too large for one device, split by layers over several: pipeline parallelism.

Each device keeps at most ``maxCachedBytes`` of arrays across jobs (its hello says how many).
When a model's weights do not fit the device that would run it, the lowered op graph is cut
into stages, in order, each holding no more weights than its device keeps; a stage's outputs
that later stages read come back to the notebook and go on to the next stage's device, as
that stage's inputs.  The batch is cut into micro-batches, so while stage 2 works on the first,
stage 1 already works on the second: every device is busy once the pipeline fills.

Each stage's tasks are pinned to its device, so its weights stay there and no other device's
cache is churned.  If that device leaves, the stage moves: its tasks in flight are cancelled
and sent again, with their inputs, to the surviving device that holds the fewest stages,
which is sent the stage's weights; the call still completes.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..broker.records import DeviceRecord
from ..client.jobs import Job
from ..errors import DeviceLimitError
from ..ops import Graph, Node, Plan, compile_graph
from ..ops.compiler import parallelism
from ..ops.graph import topological
from .lowering import Value

if TYPE_CHECKING:
    from ..broker.thread import TaskHandle
    from ..client.session import Session
    from .model import Model

#: What a device keeps across jobs when its hello does not say (the browser worker's default).
DEFAULT_KEPT = 256 << 20
#: Seconds between checks that every stage's device is still there.
POLL = 0.25


def capacity(device: DeviceRecord) -> int:
    """The bytes of arrays ``device`` keeps across jobs: how much of a model's weights it can hold."""
    kept = device.limits.get("maxCachedBytes", DEFAULT_KEPT)
    return int(kept) if isinstance(kept, int) and kept > 0 else DEFAULT_KEPT


@dataclass(frozen=True)
class Stages:
    """The op graph cut into stages: each node's stage, and what each stage must hand on."""

    order: list[Node]  # every node, each after its arguments
    stage: dict[int, int]  # id(node) -> its stage
    count: int
    outputs: list[list[Node]]  # per stage: its nodes that later stages or the caller read

    def nodes(self, k: int) -> list[Node]:
        return [n for n in self.order if self.stage[id(n)] == k]


def cut(outputs: Sequence[Node], capacities: Sequence[int], is_weight: Any) -> Stages:
    """Stages in graph order, each with at most ``capacities[k]`` bytes of weights (``is_weight(node)``).

    A weight larger than every capacity is refused, naming it; so is a model whose weights need more
    stages than there are devices.
    """
    order = topological(outputs)
    stage: dict[int, int] = {}
    k, held = 0, 0
    for node in order:
        if node.op == "input" and is_weight(node):
            size = node.leaf.array.nbytes  # type: ignore[union-attr]
            if held and held + size > capacities[k]:
                k, held = k + 1, 0
                if k >= len(capacities):
                    total = sum(n.leaf.array.nbytes for n in order if n.op == "input" and is_weight(n))  # type: ignore[union-attr]
                    raise DeviceLimitError(
                        f"the model's {total / 1e6:.1f} MB of weights do not fit the {len(capacities)} device(s) "
                        f"connected, which keep {sum(capacities) / 1e6:.1f} MB between them; connect more devices"
                    )
            if size > capacities[k]:
                raise DeviceLimitError(
                    f"weight {node.text} ({size / 1e6:.1f} MB) is larger than any connected device keeps "
                    f"({max(capacities) / 1e6:.1f} MB)"
                )
            held += size
        stage[id(node)] = k
    wanted = {id(n) for n in outputs}
    later = {id(a) for n in order for a in n.args if stage[id(a)] < stage[id(n)]}
    handed = [[n for n in order if stage[id(n)] == s and (id(n) in wanted or id(n) in later)
               and n.op not in ("input", "const")] for s in range(k + 1)]  # fmt: skip
    return Stages(order, stage, k + 1, handed)


def rebuild(stages: Stages, k: int, known: Mapping[int, np.ndarray]) -> tuple[list[Node], list[Node]]:
    """Stage ``k`` as a graph of its own: values of earlier stages (in ``known``) become its inputs.

    Returns the new graph's nodes for the stage's outputs, and the original nodes they stand for.
    """
    graph, made = Graph(), {}
    mine = stages.nodes(k)
    needed = {id(a) for n in mine for a in n.args}
    for node in stages.order:
        if id(node) in made or (stages.stage[id(node)] != k and id(node) not in needed):
            continue
        if stages.stage[id(node)] < k and node.op not in ("input", "const"):
            made[id(node)] = graph.input(f"{node.text} (from stage {stages.stage[id(node)] + 1})", known[id(node)])
        elif node.op == "input":
            made[id(node)] = graph.input(node.text, node.leaf.array)  # type: ignore[union-attr]
        elif node.op == "const":
            made[id(node)] = graph.cast(graph.const(node.value, node.text), node.dtype)
        elif stages.stage[id(node)] == k:
            made[id(node)] = graph.apply(node.op, [made[id(a)] for a in node.args], node.options, node.text)
    return [made[id(n)] for n in stages.outputs[k]], stages.outputs[k]


class PipelineJob(Job):
    """A model call over stages and micro-batches; the job's tasks grow as stages hand on their outputs."""

    def __init__(self, session: Session, model: Model, chunks: list[tuple[Stages, list[Value]]],
                 devices: list[str], *, wire: str, job_id: str, bind: Any = None) -> None:  # fmt: skip
        self._session, self._model, self._chunks, self._devices, self._wire = session, model, chunks, devices, wire
        self._done: queue.Queue[tuple[int, int, Plan, list[Node], TaskHandle]] = queue.Queue()
        self._flying: dict[str, tuple[int, int]] = {}  # task id -> (micro-batch, stage), until it ends
        self._moved: set[str] = set()  # tasks cancelled because their stage moved: not failures
        self.moves: list[str] = []  # "stage 2: d2 left, now on d1"
        super().__init__(session.broker, job_id, [], lambda results: results, text=f"{model.name}(...)", bind=bind)

    def _submit(self, i: int, k: int, known: dict[int, np.ndarray]) -> None:
        stages, _ = self._chunks[i]
        nodes, originals = rebuild(stages, k, known)
        own = [n.leaf.array for n in stages.order if n.op == "input" and not self._model.owns(n)]  # type: ignore[union-attr]
        device = next((d for d in self._session.records() if d.id == self._devices[k]), None)
        plan = compile_graph(nodes, self._wire, self._model.weight_keys([*own, *known.values()]), parallelism(device))
        attempt = sum(t.id.startswith(f"{self.id}.{i + 1}.{k + 1}") for t in self.tasks)
        task = self._session.broker.submit(
            plan.program,
            task_id=f"{self.id}.{i + 1}.{k + 1}" + (f"m{attempt}" if attempt else ""),
            devices=frozenset({self._devices[k]}),
            group=self.id,
            shards=len(self._chunks) * stages.count,
        )
        self.tasks.append(task)
        self._flying[task.id] = (i, k)
        task.future.add_done_callback(lambda _: self._done.put((i, k, plan, originals, task)))

    def _move_lost_stages(self, known: list[dict[int, np.ndarray]]) -> None:
        """Stages whose device left go to the survivor holding the fewest; their tasks in flight follow."""
        present = {r.id for r in self._session.records() if r.usable}
        for k, device in enumerate(self._devices):
            if device in present:
                continue
            survivors = [d for d in dict.fromkeys(self._devices) if d in present] or sorted(present)
            if not survivors:
                return  # nobody to move to: the tasks wait for a device, up to the call's timeout
            target = min(survivors, key=self._devices.count)
            self._devices[k] = target
            self.moves.append(f"stage {k + 1}: {device} left, now on {target}")
            for task_id, (i, stage) in list(self._flying.items()):
                if stage == k:
                    self._moved.add(task_id)
                    self._session.broker.cancel(task_id)
                    self._submit(i, k, known[i])

    def _follow(self) -> None:
        threading.Thread(target=self._collect, name=f"webnet-{self.id}", daemon=True).start()

    def _collect(self) -> None:
        """Stage 1 of every micro-batch at once (they queue on its device), then each next stage as the
        one before it hands over; the first failure cancels everything."""
        known: list[dict[int, np.ndarray]] = [{} for _ in self._chunks]
        try:
            for i in range(len(self._chunks)):
                self._submit(i, 0, known[i])
            remaining = sum(stages.count for stages, _ in self._chunks)
            while remaining:
                try:
                    i, k, plan, originals, task = self._done.get(timeout=POLL)
                except queue.Empty:
                    if not self.future.done():
                        self._move_lost_stages(known)
                    continue
                self._flying.pop(task.id, None)
                if self.future.done():  # cancelled: stop handing on
                    return
                if task.id in self._moved:  # replaced by the same work on the stage's new device
                    continue
                remaining -= 1
                if task.future.cancelled() or task.future.exception() is not None:
                    self._cancel_tasks()
                    self._fail(None if task.future.cancelled() else task.future.exception())
                    return
                for node, array in zip(originals, plan.finish(task.future.result()), strict=True):
                    known[i][id(node)] = array
                if k + 1 < self._chunks[i][0].count:
                    self._submit(i, k + 1, known[i])
            parts = [[known[i][id(v)] if isinstance(v, Node) else v.array for v in values]
                     for i, (_, values) in enumerate(self._chunks)]  # fmt: skip
            joined = [np.concatenate(p) if len(p) > 1 else p[0] for p in zip(*parts, strict=True)]
            self._succeed(self._model.finish(joined))
        except Exception as exc:  # a stage that cannot be built or compiled
            self._cancel_tasks()
            self._fail(exc)

"""Custom kernels: WGSL from a notebook cell, made an op usable in any expression.

::

    %%webnet kernel saxpy(x, y, a: f32) -> out[x.shape] --workgroups auto
    @group(0) @binding(0) var<storage, read> x: array<f32>;
    @group(0) @binding(1) var<storage, read> y: array<f32>;
    @group(0) @binding(2) var<storage, read_write> out: array<f32>;
    struct Params { a: f32 }
    @group(0) @binding(3) var<uniform> params: Params;
    @compute @workgroup_size(64)
    fn main(@builtin(global_invocation_id) id: vec3<u32>) {
        if (id.x < arrayLength(&out)) { out[id.x] = params.a * x[id.x] + y[id.x]; }
    }

then ``%webnet saxpy(X, Y, a=2.0) -> Z``.  The signature names the array inputs (bound
0, 1, ... in order, read-only: workers may keep them cached for later jobs), then scalar
options with their WGSL type (f32, i32, u32), passed as keywords and packed in that order
into a uniform buffer bound after the output.  The output's shape is a Python expression
of the inputs' shapes.  Dtypes come from the WGSL declarations (``array<f32>`` is
float32, ``array<i32>`` int32, ``array<u32>`` uint32): inputs are cast to them.
``--workgroups auto`` is one invocation per output element (workgroups of the kernel's
``@workgroup_size``, spread over x and y past 65535); ``--workgroups EXPR,EXPR,EXPR``
gives the counts as expressions of the inputs (``x.size``, ``x.shape[0]``) and ``ceil``.

Shape and count expressions are arithmetic on numbers and on the inputs' ``shape``, ``size``
and ``ndim`` (with ``ceil``, ``min``, ``max``, tuples and indexing), read by
:mod:`~webnet_magic.restricted`: checked when the kernel is defined, never given to ``eval``.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ShapeError, WebnetError
from ..program import Kernel
from ..restricted import Refused, Rules, evaluate, parse
from .compiler import MAX_GROUPS, Builder, Value
from .graph import OPS, Node, OpSpec, Typed, register

SCALARS = ("f32", "i32", "u32")
#: What shape and count expressions may call, and read of an input.
FUNCTIONS = {"ceil": math.ceil, "min": min, "max": max}
DIMS = ("shape", "size", "ndim")
DTYPES = {"f32": "float32", "i32": "int32", "u32": "uint32"}
_SIGNATURE = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*->\s*(\w+)\s*\[(.*)\]\s*$", re.S)
#: A group-0 binding: its number, its address space and access, and for arrays the element type.
_BINDING = re.compile(
    r"@group\(\s*0\s*\)\s*@binding\(\s*(\d+)\s*\)\s*var\s*<\s*([\w\s,]+)>\s*\w+\s*:\s*"
    r"(?:array\s*<\s*(?:vec[234]\s*<\s*)?(f32|i32|u32))?"
)


class KernelDefinitionError(WebnetError, ValueError):
    """A kernel cell whose line or WGSL does not fit together (bindings, names, shapes)."""


@dataclass(frozen=True)
class Shapes:
    """What shape and count expressions may use of an input: its shape, size and ndim."""

    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class CustomKernel:
    """A kernel cell, parsed and checked."""

    name: str
    inputs: tuple[str, ...]
    scalars: tuple[tuple[str, str], ...]  # (name, WGSL type)
    output: str
    shape: str  # a Python expression over the inputs
    dtypes: tuple[str, ...]  # of the inputs, then of the output, from the WGSL
    workgroups: str  # "auto" or three comma-separated expressions
    kernel: Kernel
    body_line: int  # the cell line the WGSL starts on, for messages

    @property
    def signature(self) -> str:
        params = [*self.inputs, *(f"{n}: {t}" for n, t in self.scalars)]
        return f"{self.name}({', '.join(params)}) -> {self.output}[{self.shape}]"

    def shape_of(self, shapes: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
        value = _evaluate(self.shape, self._scope(shapes), f"the shape of {self.output}")
        shape = (value,) if isinstance(value, int) else tuple(value) if isinstance(value, tuple | list) else None
        if shape is None or not all(type(d) is int and d >= 0 for d in shape):
            raise ShapeError(f"{self.name}: {self.shape!r} gave {value!r}, not a shape (a tuple of non-negative ints)")
        return shape

    def counts(self, shapes: Sequence[tuple[int, ...]], out_size: int) -> tuple[int, int, int]:
        if self.workgroups == "auto":
            groups = -(-out_size // math.prod(_workgroup_size(self.kernel)))
            if groups > MAX_GROUPS:  # the kernel indexes by global_invocation_id.x alone
                raise ShapeError(
                    f"{self.name}: --workgroups auto needs {groups} workgroups in x, above {MAX_GROUPS}; give "
                    f"--workgroups X,Y and index with global_invocation_id.y too, or a larger @workgroup_size"
                )
            return (max(1, groups), 1, 1)
        values = [_evaluate(part, self._scope(shapes), "--workgroups") for part in _split(self.workgroups)]
        if len(values) > 3 or not all(type(v) is int and v >= 1 for v in values):
            raise ShapeError(f"{self.name}: --workgroups gave {values}, not 1 to 3 positive integers")
        return tuple((*values, 1, 1)[:3])  # type: ignore[return-value]

    def _scope(self, shapes: Sequence[tuple[int, ...]]) -> dict[str, Any]:
        return {name: Shapes(tuple(shape)) for name, shape in zip(self.inputs, shapes, strict=True)}


def define(signature: str, source: str, workgroups: str = "auto", body_line: int = 2) -> CustomKernel:
    """Parse and check a kernel cell (``signature`` after ``kernel``, ``source`` the WGSL); see :func:`install`."""
    match = _SIGNATURE.match(signature)
    if match is None:
        raise KernelDefinitionError(
            "write the first line as: %%webnet kernel NAME(x, y, a: f32) -> out[x.shape] [--workgroups auto]"
        )
    name, params, output, shape_text = match.groups()
    if name in OPS and OPS[name].trusted:
        raise KernelDefinitionError(f"{name!r} is a built-in op; give the kernel another name")
    inputs, scalars = _params(params)
    for part in _split(shape_text):
        _check(part, inputs, f"the shape of {output}")
    if workgroups != "auto":
        for part in _split(workgroups):
            _check(part, inputs, "--workgroups")
    kernel = Kernel(source, _entry(source))
    dtypes = _check_bindings(kernel, inputs, output, bool(scalars))
    custom = CustomKernel(name, inputs, scalars, output, shape_text.strip(), dtypes, workgroups, kernel, body_line)
    if workgroups == "auto":
        _workgroup_size(kernel)
    return custom


def install(custom: CustomKernel) -> OpSpec | None:
    """Make ``custom`` an op; returns the custom kernel it replaces, if any (for :func:`restore`)."""
    previous = OPS.get(custom.name)
    register(
        OpSpec(
            custom.name, (len(custom.inputs),) * 2, "kernel", _Infer(custom), _no_reference(custom.name),
            _no_reference(custom.name), f"custom kernel: {custom.signature}",
            defaults={n: None for n, _ in custom.scalars}, emit=_Emit(custom), trusted=False,
        )
    )  # fmt: skip
    return previous


def restore(name: str, previous: OpSpec | None) -> None:
    """Undo :func:`install` (a kernel that did not compile): the earlier definition, or none."""
    if previous is None:
        OPS.pop(name, None)
    else:
        OPS[name] = previous


def _params(text: str) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    inputs: list[str] = []
    scalars: list[tuple[str, str]] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, kind = (s.strip() for s in part.partition(":"))
        if not name.isidentifier():
            raise KernelDefinitionError(f"{part!r} is not a parameter name")
        if not kind:
            if scalars:
                raise KernelDefinitionError("list the array inputs first, then the scalar options (a: f32)")
            inputs.append(name)
        elif kind in SCALARS:
            scalars.append((name, kind))
        else:
            raise KernelDefinitionError(f"{name}: {kind} is not a scalar type; use one of {', '.join(SCALARS)}")
    if not inputs:
        raise KernelDefinitionError("a kernel needs at least one array input")
    return tuple(inputs), tuple(scalars)


def _split(text: str) -> list[str]:
    """Top-level comma-separated parts of an expression (commas inside brackets stay)."""
    try:
        tree = ast.parse(f"({text},)", mode="eval").body
    except SyntaxError:
        raise KernelDefinitionError(f"{text!r} is not a Python expression") from None
    return [ast.unparse(e) for e in tree.elts]  # type: ignore[attr-defined]


def _entry(source: str) -> str:
    entries = re.findall(r"@compute[^;{]*?fn\s+(\w+)", source, re.S)
    if len(entries) != 1:
        raise KernelDefinitionError(f"the WGSL must have exactly one @compute entry point, not {len(entries)}")
    return entries[0]


def _workgroup_size(kernel: Kernel) -> tuple[int, ...]:
    match = re.search(r"@workgroup_size\(([^)]*)\)", _code(kernel.source))
    try:  # 64, 64u and 64i are all literals
        return tuple(int(v.strip().rstrip("ui")) for v in match.group(1).split(",") if v.strip()) if match else (1,)
    except ValueError:
        raise KernelDefinitionError(
            "--workgroups auto needs a literal @workgroup_size(N); give the counts with --workgroups"
        ) from None


def _code(source: str) -> str:
    """WGSL without its comments, so a commented-out declaration cannot pass the checks."""
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.S)
    return re.sub(r"//[^\n]*", "", source)


def _check_bindings(kernel: Kernel, inputs: Sequence[str], output: str, options: bool) -> tuple[str, ...]:
    """Inputs read-only, then the output read_write, then the options' uniform; the arrays' dtypes."""
    code = _code(kernel.source)
    found = _BINDING.findall(code)
    # Every binding must be declared in the one form checked here (@group(0) @binding(i) var<...>):
    # another spelling would slip a read_write input past the check.
    buffers = re.findall(r"\bvar\s*<\s*(?:storage|uniform)", code)
    if not len(found) == len(re.findall(r"@binding", code)) == len(buffers):
        raise KernelDefinitionError(
            "declare every binding as '@group(0) @binding(N) var<...> name: type;', in that order and in group 0"
        )
    declared = {int(i): (" ".join(kind.replace(",", " ").split()), element) for i, kind, element in found}
    expected = {i: "storage read" for i in range(len(inputs))}
    expected[len(inputs)] = "storage read_write"
    if options:
        expected[len(inputs) + 1] = "uniform"
    names = [*inputs, output, "the options"]
    for binding, kind in expected.items():
        if declared.get(binding, ("",))[0] != kind:
            has = f"var<{declared[binding][0].replace(' ', ', ')}>" if binding in declared else "nothing"
            raise KernelDefinitionError(
                f"binding {binding} ({names[binding]}) must be var<{kind.replace(' ', ', ')}>, but the WGSL has {has}"
            )
    extra = sorted(set(declared) - set(expected))
    if extra:
        raise KernelDefinitionError(f"the WGSL declares binding {extra[0]}, which the kernel line does not provide")
    arrays = range(len(inputs) + 1)
    untyped = [names[i] for i in arrays if not declared[i][1]]
    if untyped:
        raise KernelDefinitionError(f"{untyped[0]} must be declared as an array of f32, i32 or u32 (or their vec4)")
    return tuple(DTYPES[declared[i][1]] for i in arrays)


def _check(text: str, inputs: Sequence[str], what: str) -> None:
    """Refuse, when the kernel is defined, an expression that is more than arithmetic on the inputs' dims."""
    try:
        tree = parse(text, FUNCTIONS)
    except Refused as exc:
        raise KernelDefinitionError(f"{what} ({text!r}): {exc}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in inputs and node.id not in FUNCTIONS:
            raise KernelDefinitionError(
                f"{what} ({text!r}) uses {node.id!r}, which is not an input ({', '.join(inputs)})"
            )
        if isinstance(node, ast.Attribute) and node.attr not in DIMS:
            raise KernelDefinitionError(f"{what} ({text!r}) reads .{node.attr}; an input has {', '.join(DIMS)}")


def _evaluate(text: str, scope: Mapping[str, Any], what: str) -> Any:
    rules = Rules(scope, FUNCTIONS, lambda owner, name: isinstance(owner, Shapes) and name in DIMS)
    try:
        return evaluate(text, rules)
    except Refused as exc:
        raise ShapeError(f"cannot evaluate {what} ({text!r}): {exc}") from None
    except Exception as exc:
        raise ShapeError(f"cannot evaluate {what} ({text!r}): {type(exc).__name__}: {exc}") from None


class _Infer:
    def __init__(self, custom: CustomKernel) -> None:
        self.custom = custom

    def __call__(self, args: Sequence[Node], attrs: Mapping[str, Any]) -> Typed:
        c = self.custom
        missing = [n for n, _ in c.scalars if attrs.get(n) is None]
        if missing:
            raise ShapeError(f"{c.name} needs {', '.join(f'{n}=...' for n in missing)} (see {c.signature})")
        shape = c.shape_of([a.shape for a in args])
        c.counts([a.shape for a in args], math.prod(shape))  # checked now, before anything is sent
        return Typed(shape, c.dtypes[-1], c.dtypes[:-1])


class _Emit:
    def __init__(self, custom: CustomKernel) -> None:
        self.custom = custom

    def __call__(self, builder: Builder, args: Sequence[Value], out: Value, attrs: Mapping[str, Any]) -> None:
        c = self.custom
        bindings = [a.buffer for a in args] + [out.buffer]
        if c.scalars:
            words = [_scalar(attrs[n], t, n) for n, t in c.scalars]
            bindings.append(builder.uniform(*words))
        builder.dispatch(c.kernel, bindings, c.counts([a.shape for a in args], out.size))


def _scalar(value: Any, kind: str, name: str) -> int | float:
    if kind == "f32":
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ShapeError(f"{name}={value!r} is not a number")
        return float(value)
    if type(value) is not int or not (0 if kind == "u32" else -(2**31)) <= value < 2**32:
        raise ShapeError(f"{name}={value!r} is not a {kind}")
    return value & 0xFFFFFFFF


def _no_reference(name: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> np.ndarray:
        raise ShapeError(f"{name} is a custom kernel: it runs on devices only (no numpy reference for --local)")

    return refuse


_POSITIONS = (re.compile(r"wgsl:(\d+):(\d+)"), re.compile(r"line (\d+):(\d+)"))


def compile_error(custom: CustomKernel, message: str) -> str:
    """A worker's compiler message, pointed at the cell: the line, the column, the source and a caret."""
    for pattern in _POSITIONS:
        match = pattern.search(message)
        if match:
            break
    else:
        return f"kernel {custom.name} does not compile: {message[:2000]}"
    line, column = int(match.group(1)), int(match.group(2))
    source_lines = custom.kernel.source.splitlines()
    if not (0 < line <= len(source_lines) and 0 < column <= len(source_lines[line - 1]) + 1):
        # A position outside the source (the worker's numbers are not trusted): no caret line to build.
        return f"kernel {custom.name} does not compile: {_reason(message)[:2000]}"
    text = source_lines[line - 1]
    cell_line = custom.body_line + line - 1
    return (
        f"kernel {custom.name} does not compile, cell line {cell_line} column {column}: {_reason(message)[:2000]}\n"
        f"    {text}\n    {' ' * (column - 1)}^"
    )


def _reason(message: str) -> str:
    """The compiler's own words, without the wrappers (naga's 'Caused by', Tint's 'line 3:20:')."""
    for line in message.splitlines():
        line = line.strip()
        if "error:" in line and "Validation Error" not in line:
            return line.split("error:", 1)[1].strip()
        match = re.match(r".*?line \d+:\d+: (.*)", line)
        if match:
            return match.group(1)
    return message.strip().splitlines()[-1] if message.strip() else "unknown error"

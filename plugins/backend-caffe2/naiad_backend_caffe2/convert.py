"""NetDef -> ONNX, once at load time: the predict net becomes one ONNX graph onnxruntime runs.

Caffe2 blobs may be written more than once (``Relu`` in place: ``X -> X``); ONNX values are
written once, so each write of a blob gets a fresh value name and later readers see the newest.
The init net's blobs become initializers. Each supported operator type has a handler in
:mod:`.ops` that emits ONNX nodes through an :class:`Op`; any other type fails the load, naming
the operator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from naiad import ModelLoadError

from .caffe2_pb2 import Argument, OperatorDef
from .netdef import FILL_OPS, NetPair, run_fill

#: ONNX opset and IR version of the graphs built here (onnxruntime >= 1.17 runs them)
OPSET = 13
IR_VERSION = 8
#: constants up to this many elements take part in the shape inference of ranks
_SMALL = 64


@dataclass(frozen=True, slots=True)
class InputSpec:
    """A graph input: blob name, ONNX element type, dims (a str for the batch dimension)."""

    name: str
    elem_type: int
    dims: tuple[int | str, ...]


class Converter:
    """Builds the ONNX graph of one predict net."""

    def __init__(self, pair: NetPair, inputs: Sequence[InputSpec], outputs: Sequence[str]):
        self.pair = pair
        self.where = f"Caffe2 NetDef '{pair.path}'"
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.nodes: list = []
        #: ONNX initializers by value name
        self.constants: dict[str, np.ndarray] = {}
        #: blob -> the ONNX value holding its newest write
        self.current: dict[str, str] = {spec.name: spec.name for spec in inputs}
        self.taken: set[str] = set(self.current) | set(outputs)
        #: every blob some operator reads or the config asks for (secondary outputs no one reads
        #: are not computed)
        self.read = {name for op in pair.predict.op for name in op.input} | set(outputs)
        self._ranks: tuple[int, dict[str, int]] = (-1, {})

    # ------------------------------------------------------------------ names and values
    def fresh(self, blob: str) -> str:
        name, k = blob, 1
        while name in self.taken:
            name, k = f"{blob}__{k}", k + 1
        self.taken.add(name)
        return name

    def value(self, blob: str) -> str | None:
        """The ONNX value of a blob: written earlier, an input, or a weight (made on first use)."""
        if blob in self.current:
            return self.current[blob]
        if blob in self.pair.weights:
            name = self.fresh(blob)
            self.constants[name] = self.pair.weights[blob]
            self.current[blob] = name
            return name
        return None

    def const(self, array: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.constants[name] = np.asarray(array)
        return name

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), **attrs))

    def rank(self, value: str) -> int | None:
        """The rank of an ONNX value, by ONNX shape inference over the graph built so far."""
        if value in self.constants:
            return self.constants[value].ndim
        if self._ranks[0] != len(self.nodes):
            self._ranks = (len(self.nodes), self._infer_ranks())
        return self._ranks[1].get(value)

    def _infer_ranks(self) -> dict[str, int]:
        import onnx
        from onnx import helper, numpy_helper

        small = {n: a for n, a in self.constants.items() if a.size <= _SMALL}
        big = [
            helper.make_tensor_value_info(n, _elem(a.dtype), a.shape)
            for n, a in self.constants.items()
            if n not in small
        ]
        graph = helper.make_graph(
            self.nodes,
            "ranks",
            self._graph_inputs() + big,
            [],
            initializer=[numpy_helper.from_array(a, n) for n, a in small.items()],
        )
        model = self._model(graph)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # an inconsistent graph: the session will say where
            return {}
        ranks = {}
        for info in list(inferred.graph.value_info) + list(inferred.graph.input):
            tensor = info.type.tensor_type
            if tensor.HasField("shape"):
                ranks[info.name] = len(tensor.shape.dim)
        return ranks

    # ------------------------------------------------------------------ the whole net
    def convert(self):
        """The ONNX ModelProto: inputs as given, outputs the requested blobs."""
        from onnx import helper, numpy_helper

        from .ops import HANDLERS

        self._check_inputs()
        for index, op in enumerate(self.pair.predict.op):
            handler = HANDLERS.get(op.type)
            if handler is None:
                raise ModelLoadError(
                    f"{self.where}: operator {index} '{op.type}' "
                    f"({op.name or ', '.join(op.output)}) is not supported by naiad's caffe2 "
                    f"backend; supported operators: {', '.join(sorted(HANDLERS))}"
                )
            handler(Op(self, op, index))
        outputs = []
        for blob in self.outputs:
            value = self.current.get(blob)
            if value is None or blob in {spec.name for spec in self.inputs}:
                raise ModelLoadError(
                    f"{self.where}: configuration output '{blob}' is not produced by the predict "
                    f"net; its external_output: {list(self.pair.predict.external_output)}"
                )
            self.node("Identity", [value], [blob])
            outputs.append(blob)
        read = {name for node in self.nodes for name in node.input}
        graph = helper.make_graph(
            self.nodes,
            self.pair.predict.name or "netdef",
            self._graph_inputs(),
            [helper.make_empty_tensor_value_info(o) for o in outputs],
            initializer=[
                numpy_helper.from_array(np.ascontiguousarray(a), n)
                for n, a in self.constants.items()
                if n in read
            ],
        )
        return self._typed_outputs(self._model(graph))

    def _check_inputs(self) -> None:
        """Every configuration input is a blob of the predict net. One the init net fills too
        (some Caffe2 init nets hold a placeholder for the data blob) is fed from the request:
        :meth:`value` finds inputs before weights."""
        net = self.pair.predict
        known = {name for op in net.op for name in op.input} | set(net.external_input)
        candidates = [b for b in net.external_input if b not in self.pair.weights]
        for spec in self.inputs:
            if spec.name not in known:
                raise ModelLoadError(
                    f"{self.where}: configuration input '{spec.name}' is not a blob of the "
                    f"predict net; its inputs (external_input less the init net's blobs) are "
                    f"{candidates}"
                )

    def _graph_inputs(self) -> list:
        from onnx import helper

        return [
            helper.make_tensor_value_info(s.name, s.elem_type, list(s.dims)) for s in self.inputs
        ]

    def _model(self, graph):
        from onnx import helper

        model = helper.make_model(
            graph,
            producer_name="naiad-backend-caffe2",
            opset_imports=[helper.make_opsetid("", OPSET)],
        )
        model.ir_version = IR_VERSION
        return model

    def _typed_outputs(self, model):
        """Outputs with the types and shapes ONNX shape inference finds (what the config is
        checked against); an output it cannot type keeps no shape and fails later, by name."""
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
        except Exception as exc:
            raise ModelLoadError(
                f"{self.where}: the converted graph is inconsistent (wrong "
                f"weight shapes or operator arguments?): {exc}"
            ) from exc
        for out, typed in zip(model.graph.output, inferred.graph.output, strict=True):
            if typed.type.tensor_type.elem_type:
                out.CopyFrom(typed)
        return model


class Op:
    """One operator being converted: its arguments, inputs and outputs, for the handlers."""

    def __init__(self, conv: Converter, op: OperatorDef, index: int):
        self.conv, self.op, self.index = conv, op, index
        self.args: dict[str, Argument] = {a.name: a for a in op.arg}

    def fail(self, why: str) -> ModelLoadError:
        return ModelLoadError(
            f"{self.conv.where}: operator {self.index} '{self.op.type}' "
            f"({self.op.name or ', '.join(self.op.output)}): {why}"
        )

    # arguments
    def i(self, name: str, default: int = 0) -> int:
        return int(self.args[name].i) if name in self.args else default

    def f(self, name: str, default: float = 0.0) -> float:
        arg = self.args.get(name)
        if arg is None:
            return default
        return float(arg.f if arg.HasField("f") else arg.i)

    def s(self, name: str, default: str = "") -> str:
        return self.args[name].s.decode() if name in self.args else default

    def ints(self, name: str) -> list[int] | None:
        return [int(v) for v in self.args[name].ints] if name in self.args else None

    # blobs
    @property
    def n_in(self) -> int:
        return len(self.op.input)

    def x(self, i: int = 0) -> str:
        blob = self.op.input[i] if i < self.n_in else None
        if blob is None:
            raise self.fail(f"needs at least {i + 1} inputs, has {self.n_in}")
        value = self.conv.value(blob)
        if value is None:
            raise self.fail(
                f"input blob '{blob}' is neither a configuration input, nor filled "
                "by the init net, nor written by an earlier operator"
            )
        return value

    def weight(self, i: int) -> np.ndarray | None:
        """Input ``i`` as an array when it is a constant (a weight), else None."""
        return self.conv.constants.get(self.x(i))

    def y(self, i: int = 0) -> str:
        """A fresh ONNX value for output ``i``, which later readers of the blob then see."""
        if i >= len(self.op.output):
            raise self.fail(f"needs at least {i + 1} outputs, has {len(self.op.output)}")
        blob = self.op.output[i]
        value = self.conv.fresh(blob)
        self.conv.current[blob] = value
        return value

    def wants(self, i: int) -> bool:
        """Output ``i`` exists and some later operator (or the config) reads it."""
        return i < len(self.op.output) and self.op.output[i] in self.conv.read

    def node(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs) -> None:
        self.conv.node(op_type, inputs, outputs, **attrs)

    def const(self, array, dtype=None) -> str:
        hint = f"{self.op.output[0] if self.op.output else self.op.type}_const"
        return self.conv.const(np.asarray(array, dtype=dtype), hint)

    def tmp(self, what: str) -> str:
        return self.conv.fresh(f"{self.op.output[0] if self.op.output else self.op.type}_{what}")

    def rank(self, value: str) -> int | None:
        return self.conv.rank(value)

    def fill(self) -> None:
        """A fill operator in the predict net: evaluated now, its blobs become constants."""
        for blob, array in run_fill(self.op, self.conv.where):
            name = self.conv.fresh(blob)
            self.conv.constants[name] = array
            self.conv.current[blob] = name


def _elem(dtype: np.dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def to_onnx(pair: NetPair, inputs: Sequence[InputSpec], outputs: Sequence[str]):
    """The ONNX ModelProto computing ``outputs`` of ``pair`` from ``inputs``."""
    return Converter(pair, inputs, outputs).convert()


__all__ = ["FILL_OPS", "IR_VERSION", "OPSET", "Converter", "InputSpec", "Op", "to_onnx"]

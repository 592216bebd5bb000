"""How config tensor names map onto a PyTorch model's arguments and results.

Triton's pytorch backend rules, which this module reproduces (no torch needed here):

Inputs, first rule that fits every input name wins:

1. *forward argument*: every name is an argument name of ``forward`` -> bound by name;
2. *named index*: every name looks like ``<name>__<index>`` (``INPUT__0``) -> argument ``index``;
3. *config order*: otherwise the i-th configured input is the i-th argument (a warning is logged).

A ``forward`` taking one ``Dict[str, Tensor]`` gets every input in that dict, keyed by name.

Outputs: a dict result is read by key (naiad extension; Triton has no dict outputs); a tuple or
list result by index, the index coming from ``<name>__<index>`` when every output name has one,
else from the order of the configured outputs; a single tensor is index 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from naiad import InternalError, ModelLoadError

log = logging.getLogger("naiad_backend_pytorch")


def named_index(name: str) -> int | None:
    """``3`` for ``"INPUT__3"``, None when ``name`` does not follow ``<name>__<index>``.

    As in Triton, the index is what follows the first ``__``, and must be all digits.
    """
    _, sep, rest = name.partition("__")
    return int(rest) if sep and rest.isdigit() else None


@dataclass(frozen=True, slots=True)
class InputBinding:
    """Where each configured input goes in the call to the model."""

    #: ``"forward argument"``, ``"named index"``, ``"config order"`` or ``"dict"``
    convention: str
    #: config name -> argument position (empty for ``dict``)
    positions: dict[str, int]
    #: number of positional arguments to pass
    arity: int

    @property
    def is_dict(self) -> bool:
        return self.convention == "dict"


def bind_inputs(
    model: str, names: Sequence[str], arg_names: Sequence[str] | None, dict_input: bool = False
) -> InputBinding:
    """Bind configured input ``names`` (in config order, including the inputs the scheduler
    feeds) to ``forward``'s arguments ``arg_names`` (None when the model does not say, e.g. an
    AOTInductor package). Raises :class:`ModelLoadError` when counts or indices do not fit."""
    if not names:
        raise ModelLoadError(
            f"model '{model}': the configuration must list at least one input for a PyTorch model "
            "(PyTorch models do not describe their inputs, so naiad cannot fill them in)"
        )
    if dict_input:
        return InputBinding("dict", {}, 0)
    if arg_names and all(n in arg_names for n in names):
        convention = "forward argument"
        positions = {n: list(arg_names).index(n) for n in names}
    elif all(named_index(n) is not None for n in names):
        convention = "named index"
        positions = {n: named_index(n) or 0 for n in names}
    else:
        convention = "config order"
        positions = {n: i for i, n in enumerate(names)}
        log.warning(
            "model '%s': inputs %s are neither all arguments of forward() %s nor all named "
            "<name>__<index>; binding them in configuration order",
            model,
            list(names),
            list(arg_names or []),
        )
    arity = len(arg_names) if arg_names is not None else len(names)
    if arg_names is not None and len(names) != arity:
        raise ModelLoadError(
            f"model '{model}': the configuration gives {len(names)} inputs {list(names)} but "
            f"forward() takes {arity} {list(arg_names)}"
        )
    used = sorted(positions.values())
    if used != list(range(arity)):
        raise ModelLoadError(
            f"model '{model}': input indices {positions} ({convention}) must be 0..{arity - 1}, "
            "each once"
        )
    return InputBinding(convention, positions, arity)


def bind_outputs(model: str, names: Sequence[str]) -> dict[str, int]:
    """Config output name -> index into a tuple/list result (``__<index>`` or config order)."""
    if not names:
        raise ModelLoadError(
            f"model '{model}': the configuration must list at least one output for a PyTorch model"
        )
    indices = [named_index(n) for n in names]
    if all(i is not None for i in indices):
        return {n: i for n, i in zip(names, indices, strict=True) if i is not None}
    return {n: i for i, n in enumerate(names)}


def pick_output(model: str, result: object, name: str, index: int) -> object:
    """Output ``name`` of a model ``result`` (dict by key, tuple/list by index, a tensor as 0);
    :class:`naiad.InternalError` when the result has no such entry."""
    if isinstance(result, dict):
        if name not in result:
            raise InternalError(
                f"model '{model}' returned a dict with keys {sorted(result)} but the "
                f"configuration asks for output '{name}'"
            )
        return result[name]
    if isinstance(result, (tuple, list)) and not _is_string_list(result):
        if not 0 <= index < len(result):
            raise InternalError(
                f"output '{name}' of model '{model}' refers to result index {index}, but the "
                f"model returned {len(result)} values"
            )
        return result[index]
    if index != 0:
        raise InternalError(
            f"output '{name}' of model '{model}' refers to result index {index}, but the model "
            "returned a single value"
        )
    return result


def _is_string_list(value: Sequence[object]) -> bool:
    """A ``List[str]`` result is one BYTES output, not several outputs."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], str)

"""Checks on ``input``, ``output``, ``batch_input`` and ``batch_output``.

Triton's ``ValidateModelIOConfig``.

Messages keep Triton's wording and end with ``for <model>`` as Triton's do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from .errors import ConfigError
from .model_config_pb2 import (
    BatchInput,
    BatchOutput,
    DataType,
    ModelConfig,
    ModelInput,
    ModelOutput,
)

WILDCARD_DIM = -1
TENSORRT_PLATFORM = "tensorrt_plan"


def validate_io(config: ModelConfig) -> None:
    """Validate every input, output, batch input and batch output of ``config``."""
    problem = next(_io_problems(config), None)
    if problem:
        raise ConfigError(f"{problem} for {config.name}")


def _io_problems(config: ModelConfig) -> Iterator[str]:
    """Every problem found, in Triton's order (lazily: callers take the first)."""
    max_batch_size, platform = config.max_batch_size, config.platform
    for model_input in config.input:
        yield from _some(_input_problem(model_input, max_batch_size, platform))
    for model_output in config.output:
        yield from _some(_output_problem(model_output, max_batch_size, platform))
    yield from _some(_duplicate_problem("model input", (t.name for t in config.input)))
    yield from _some(_duplicate_problem("model output", (t.name for t in config.output)))
    yield from _some(_batch_io_problem(config))


def _some(problem: str | None) -> Iterator[str]:
    if problem:
        yield problem


def _input_problem(tensor: ModelInput, max_batch_size: int, platform: str) -> str | None:
    problem = _shape_problem(tensor, max_batch_size, "model input ")
    if problem:
        return problem
    image_formats = (ModelInput.FORMAT_NHWC, ModelInput.FORMAT_NCHW)
    if tensor.format in image_formats and len(tensor.dims) != 3:
        return f"model input '{tensor.name}' NHWC/NCHW require 3 dims"
    return _tensorrt_only_problem(tensor, platform, "input")


def _output_problem(tensor: ModelOutput, max_batch_size: int, platform: str) -> str | None:
    problem = _shape_problem(tensor, max_batch_size, "model output ")
    return problem or _tensorrt_only_problem(tensor, platform, "output")


def _tensorrt_only_problem(
    tensor: ModelInput | ModelOutput, platform: str, io_type: str
) -> str | None:
    if platform == TENSORRT_PLATFORM:
        if tensor.is_non_linear_format_io and len(tensor.dims) != 3:
            return f"Non-linear IO format {io_type} requires 3 dims"
        return None
    if tensor.is_shape_tensor:
        return (
            f"model {io_type} '{tensor.name}': shape tensors are only supported for TensorRT "
            "platform"
        )
    if tensor.is_non_linear_format_io:
        return (
            f"model {io_type} '{tensor.name}': Non-linear IO format is only supported for the "
            "TensorRT platform"
        )
    return None


def _shape_problem(
    tensor: ModelInput | ModelOutput, max_batch_size: int, prefix: str
) -> str | None:
    """Triton's ``ValidateIOShape``: name, data_type, dims and reshape."""
    if not tensor.name:
        return f"{prefix}must specify 'name'"
    prefix = f"{prefix}'{tensor.name}' "
    if tensor.data_type == DataType.TYPE_INVALID:
        return f"{prefix}must specify 'data_type'"
    if not tensor.dims:
        return f"{prefix}must specify 'dims'"
    has_reshape = tensor.HasField("reshape")
    if has_reshape and not tensor.reshape.shape and max_batch_size == 0:
        return (
            f"{prefix}cannot have empty reshape for non-batching model as scalar tensors are "
            "not supported"
        )
    if _bad_dims(tensor.dims):
        return (
            f"{prefix}dimension must be integer >= 1, or -1 to indicate a variable-size dimension"
        )
    if not has_reshape:
        return None
    if _bad_dims(tensor.reshape.shape):
        return (
            f"{prefix}reshape dimensions must be integer >= 1, or -1 to indicate a variable-size "
            "dimension"
        )
    return _reshape_problem(tensor.dims, tensor.reshape.shape, prefix)


def _bad_dims(dims: Iterable[int]) -> bool:
    return any(d < 1 and d != WILDCARD_DIM for d in dims)


def element_count(dims: Sequence[int]) -> int:
    """Elements in a tensor of shape ``dims``: -1 if any is variable, 0 for ``[]`` (as Triton)."""
    if any(d == WILDCARD_DIM for d in dims):
        return -1
    if not dims:
        return 0
    count = 1
    for d in dims:
        count *= d
    return count


def _reshape_problem(dims: Sequence[int], shape: Sequence[int], prefix: str) -> str | None:
    dims_size, reshape_size = element_count(dims), element_count(shape)
    # An empty reshape (a scalar per batch item) needs dims holding exactly one element.
    if dims_size != reshape_size and (reshape_size != 0 or dims_size != 1):
        return f"{prefix}has different size for dims and reshape"
    if dims_size == -1:
        # Compare the fixed runs between variable dims: [2, 4, -1, 6] -> [8, -1, 1, 6] is fine.
        dims_runs, shape_runs = _fixed_runs(dims), _fixed_runs(shape)
        if len(dims_runs) != len(shape_runs):
            return f"{prefix}has different number of variable-size dimensions for dims and reshape"
        if dims_runs != shape_runs:
            return f"{prefix}has different size for dims and reshape"
    return None


def _fixed_runs(dims: Sequence[int]) -> list[int]:
    runs, current = [], 1
    for d in dims:
        if d == WILDCARD_DIM:
            runs.append(current)
            current = 1
        else:
            current *= d
    runs.append(current)
    return runs


def _duplicate_problem(what: str, names: Iterable[str]) -> str | None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return f"{what} '{name}' is specified more than once"
        seen.add(name)
    return None


def _batch_io_problem(config: ModelConfig) -> str | None:
    """Triton's ``ValidateBatchIO``."""
    input_names = {t.name for t in config.input}
    output_names = {t.name for t in config.output}
    for batch_input in config.batch_input:
        problem = _batch_input_problem(batch_input, input_names)
        if problem:
            return problem
    for batch_output in config.batch_output:
        problem = _batch_output_problem(batch_output, input_names, output_names)
        if problem:
            return problem
    return None


def _batch_input_problem(batch_input: BatchInput, input_names: set[str]) -> str | None:
    kind = BatchInput.Kind.Name(batch_input.kind)
    if len(batch_input.source_input) != 1:
        count = len(batch_input.source_input)
        return f"batch input kind '{kind}' expects 1 source input, got {count}"
    if batch_input.data_type not in (DataType.TYPE_INT32, DataType.TYPE_FP32):
        return "batch input data type must be TYPE_INT32 or TYPE_FP32"
    return _unknown_source_problem(batch_input.source_input, input_names)


def _batch_output_problem(
    batch_output: BatchOutput, input_names: set[str], output_names: set[str]
) -> str | None:
    kind = BatchOutput.Kind.Name(batch_output.kind)
    if len(batch_output.source_input) != 1:
        return (
            f"batch output kind '{kind}' expects 1 source input, got "
            f"{len(batch_output.source_input)}"
        )
    problem = _unknown_source_problem(batch_output.source_input, input_names)
    if problem:
        return problem
    targets: set[str] = set()
    for target in batch_output.target_name:
        if target not in output_names:
            return f"unknown target output name '{target}'"
        if target in targets:
            return f"target output name '{target}' can only be specified once"
        targets.add(target)
    return None


def _unknown_source_problem(sources: Iterable[str], input_names: set[str]) -> str | None:
    for source in sources:
        if source not in input_names:
            return f"unknown source input name '{source}'"
    return None

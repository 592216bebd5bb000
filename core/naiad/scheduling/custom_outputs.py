"""What a custom backend returned, checked against the model's config before it leaves.

An :class:`naiad.InferenceBackend` output goes through the batch splitter, which converts it; a
:class:`naiad.CustomInstance` builds each request's outputs itself, so they are checked here, once,
on the instance thread: every wanted output present, converted to the config's data type, with the
request's batch size first and the config's dims after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InternalError
from ..inference import InferRequest
from ..signature import Signature, TensorSpec


def check_custom_outputs(
    signature: Signature,
    request: InferRequest,
    produced: Mapping[str, object],
    extra_outputs: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """The outputs ``request`` wants, as arrays of the config's types and shapes.

    Outputs the request did not ask for (or the config does not list) are dropped, except
    ``extra_outputs`` (outputs outside the signature a scheduler needs, e.g. implicit state),
    which pass through unconverted. Raises :class:`InternalError` naming the model and the
    output when one is missing or has a shape the config does not allow.
    """
    wanted = [o.name for o in request.outputs] if request.outputs else list(signature.outputs)
    outputs: dict[str, np.ndarray] = {}
    for name in [*wanted, *extra_outputs]:
        if name not in produced:
            raise InternalError(
                f"custom backend of model '{signature.model_name}' did not produce output '{name}'"
            )
        spec = signature.outputs.get(name)
        array = np.asarray(produced[name])
        outputs[name] = array if spec is None else _conform(signature, spec, request, array)
    return outputs


def _conform(
    signature: Signature, spec: TensorSpec, request: InferRequest, array: np.ndarray
) -> np.ndarray:
    model = signature.model_name
    if spec.datatype == "BYTES":
        if array.dtype != np.object_:
            array = array.astype(np.object_)
    elif array.dtype != spec.numpy_dtype:
        try:
            array = array.astype(spec.numpy_dtype)
        except (TypeError, ValueError) as exc:
            raise InternalError(
                f"custom backend of model '{model}' produced output '{spec.name}' of type "
                f"{array.dtype}, which does not convert to {spec.datatype}: {exc}"
            ) from exc
    lead: tuple[int, ...] = (request.batch_size,) if signature.max_batch_size > 0 else ()
    if spec.reshape is not None and -1 not in spec.dims and _fits(array.shape, lead + spec.reshape):
        return array.reshape(lead + spec.dims)
    if not _fits(array.shape, lead + spec.dims):
        expected = list(lead + spec.dims)
        raise InternalError(
            f"custom backend of model '{model}' produced output '{spec.name}' with shape "
            f"{list(array.shape)}, but the config expects {expected} (-1: any size)"
        )
    return array


def _fits(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    if shape == dims:
        return True
    return len(shape) == len(dims) and all(d in (-1, s) for s, d in zip(shape, dims, strict=True))

"""naiad-custom-example: TRTIS's ``image_preprocess`` custom backend as a naiad CustomInstance.

Entry point ``image_preprocess`` of group ``naiad.backends``. A model selects it with
``backend: "image_preprocess"``. It turns encoded images (JPEG, PNG, anything Pillow reads) into
the tensor an image classifier wants, as the seed's ``src/custom/image_preprocess`` did with
OpenCV:

- one input, ``TYPE_STRING`` with ``dims: [ 1 ]``: one encoded image per batch item;
- one output with three dims (C,H,W for NCHW, H,W,C for NHWC; C is 1 or 3) of type ``TYPE_UINT8``,
  ``TYPE_INT8``, ``TYPE_UINT16``, ``TYPE_INT16``, ``TYPE_INT32``, ``TYPE_FP32`` or ``TYPE_FP64``:
  the target size and data type;
- ``parameters``: ``format`` (``"NHWC"``, anything else NCHW) and ``scaling`` (``"VGG"``: subtract
  104, 117, 123 from channels 0, 1, 2 — 128 for one channel; ``"INCEPTION"``: x / 128 - 1;
  anything else: none).

Each image is decoded, converted to RGB (3 channels) or grey (1 channel), resized to the output's
H x W when it differs (bilinear), converted to the output type, scaled, and laid out as NCHW or
NHWC. See README.md for where the numbers can differ from OpenCV's.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import naiad
import numpy as np
from naiad import CustomInstance, InvalidArgument, ModelLoadError
from naiad.config import DataType

if TYPE_CHECKING:
    from naiad.plugins import BackendRegistry

__all__ = ["ImagePreprocess", "naiad_register_backends", "preprocess_image"]

#: config data type -> numpy type of the output
OUTPUT_TYPES: dict[str, np.dtype] = {
    "TYPE_UINT8": np.dtype(np.uint8),
    "TYPE_INT8": np.dtype(np.int8),
    "TYPE_UINT16": np.dtype(np.uint16),
    "TYPE_INT16": np.dtype(np.int16),
    "TYPE_INT32": np.dtype(np.int32),
    "TYPE_FP32": np.dtype(np.float32),
    "TYPE_FP64": np.dtype(np.float64),
}
#: what VGG scaling subtracts from channels 0, 1, 2 (after the conversion to RGB), or from grey
VGG_MEANS = (104.0, 117.0, 123.0)
VGG_GREY_MEAN = 128.0


class ImagePreprocess(CustomInstance):
    """Decode, convert, resize and scale a batch of encoded images into one tensor."""

    name = "image_preprocess"

    def initialize(self) -> None:
        """Check the config as the seed's ``Context::Init`` did and read the parameters."""
        try:
            from PIL import Image
        except ImportError as exc:  # pragma: no cover - Pillow is a dependency
            raise ModelLoadError(f"image_preprocess needs Pillow: {exc}") from exc
        self._image = Image
        config = self.config
        model = config.name
        inputs = list(config.input)
        if (
            len(inputs) != 1
            or list(inputs[0].dims) != [1]
            or _type_name(inputs[0]) != "TYPE_STRING"
        ):
            raise ModelLoadError(f"model '{model}': expected single input, 1 STRING element")
        outputs = list(config.output)
        if len(outputs) != 1 or len(outputs[0].dims) != 3 or min(outputs[0].dims) < 1:
            raise ModelLoadError(
                f"model '{model}': expected single output with 3 dimensions, each dimension >= 1"
            )
        output = outputs[0]
        dtype = OUTPUT_TYPES.get(_type_name(output))
        if dtype is None:
            raise ModelLoadError(
                f"model '{model}': output '{output.name}' has unsupported data type "
                f"{_type_name(output)}; expected one of {', '.join(OUTPUT_TYPES)}"
            )
        params = self.parameters
        self.nhwc = params.get("format", "").strip().upper() == "NHWC"
        self.scaling = params.get("scaling", "").strip().upper()
        dims = tuple(output.dims)
        height, width, channels = dims if self.nhwc else (dims[1], dims[2], dims[0])
        if channels not in (1, 3):
            raise ModelLoadError(
                f"model '{model}': output '{output.name}' must have 1 or 3 channels, got "
                f"{channels} (format {'NHWC' if self.nhwc else 'NCHW'})"
            )
        self.size = (width, height)
        self.channels = channels
        self.dtype = dtype
        self.input_name = inputs[0].name
        self.output_name = output.name
        self.batching = config.max_batch_size > 0

    def execute(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> Mapping[str, np.ndarray]:
        """One request: every image of its batch, stacked."""
        data = inputs[self.input_name]
        images = []
        for index, blob in enumerate(data.reshape(-1)):
            images.append(self._one(blob, index))
        tensor = np.stack(images) if self.batching else images[0]
        return {self.output_name: tensor}

    def _one(self, blob: Any, index: int) -> np.ndarray:
        try:
            raw = blob if isinstance(blob, bytes | bytearray | memoryview) else bytes(blob)
            with self._image.open(io.BytesIO(raw)) as image:
                image.load()
                return preprocess_image(
                    image, self.size, self.channels, self.dtype, self.scaling, self.nhwc
                )
        except (OSError, ValueError, SyntaxError) as exc:
            raise InvalidArgument(
                f"model '{self.config.name}' cannot decode image {index} of input "
                f"'{self.input_name}': {exc}"
            ) from exc


def preprocess_image(
    image: Any,
    size: tuple[int, int],
    channels: int,
    dtype: np.dtype,
    scaling: str = "",
    nhwc: bool = False,
) -> np.ndarray:
    """One decoded Pillow image -> the output tensor of one batch item.

    :param size: ``(width, height)`` of the output.
    :param channels: 3 (RGB) or 1 (grey).
    :param dtype: the output's numpy type; integer types saturate, as OpenCV's conversions do.
    :param scaling: ``"VGG"``, ``"INCEPTION"`` or anything else for none.
    :param nhwc: lay out H, W, C (else C, H, W).
    """
    from PIL import Image

    image = image.convert("RGB" if channels == 3 else "L")
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    # float32 outputs are computed in float32 (as OpenCV does), everything else in float64
    work = np.float32 if dtype == np.float32 else np.float64
    x = pixels.astype(work)
    if scaling == "INCEPTION":
        x = x * work(1.0 / 128.0) - work(1.0)
    elif scaling == "VGG":
        means = VGG_MEANS if channels == 3 else (VGG_GREY_MEAN,)
        x = x - np.asarray(means, dtype=work)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = np.clip(np.rint(x), info.min, info.max)
    out = x.astype(dtype)
    return np.ascontiguousarray(out if nhwc else out.transpose(2, 0, 1))


def _type_name(tensor: Any) -> str:
    return DataType.Name(tensor.data_type)


@naiad.hookimpl
def naiad_register_backends(registry: BackendRegistry) -> None:
    """Backend ``image_preprocess``."""
    registry.register(ImagePreprocess)

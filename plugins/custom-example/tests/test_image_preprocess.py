"""image_preprocess against the same preprocessing done directly with Pillow and numpy.

The backend object is driven in-process (as the server's instance thread would), with images the
tests encode themselves; the plugin is also found through its installed entry point.
"""

from __future__ import annotations

import io
from pathlib import Path

import naiad
import numpy as np
import pytest
from naiad.backend import InstanceContext
from naiad.config import parse_model_config
from naiad.plugins import build_backend_registry
from naiad_custom_example import ImagePreprocess
from PIL import Image


def config_text(
    dims, dtype="TYPE_FP32", fmt="NCHW", scaling="INCEPTION", max_batch_size=8, extra_input=""
):
    return f"""
name: "pre"
backend: "image_preprocess"
max_batch_size: {max_batch_size}
input [ {{ name: "INPUT" data_type: TYPE_STRING dims: [ 1 ] }} {extra_input} ]
output [ {{ name: "OUTPUT" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }} ]
parameters [
  {{ key: "format" value: {{ string_value: "{fmt}" }} }},
  {{ key: "scaling" value: {{ string_value: "{scaling}" }} }}
]
"""


def make_backend(tmp_path: Path, text: str) -> ImagePreprocess:
    config = parse_model_config(text, model_name="pre")
    backend = ImagePreprocess(
        config, tmp_path, tmp_path / "1", InstanceContext("pre_0", "KIND_CPU")
    )
    backend.load()
    return backend


def encode(pixels: np.ndarray, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def picture(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth gradient plus noise: something JPEG and resizing have work to do on."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    noise = np.random.default_rng(seed).integers(0, 40, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def by_hand(blob: bytes, size, mode="RGB") -> np.ndarray:
    """Decode + convert + resize exactly as documented, returning H x W x C uint8 pixels."""
    image = Image.open(io.BytesIO(blob)).convert(mode)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def request(blobs, batched=True) -> naiad.InferRequest:
    data = np.array(blobs, dtype=object)
    data = data.reshape(len(blobs), 1) if batched else data.reshape(1)
    return naiad.InferRequest("pre", inputs={"INPUT": data}, batch_size=len(blobs))


def run_one(backend, blobs, batched=True):
    (response,) = backend.execute_requests([request(blobs, batched)])
    if isinstance(response, Exception):
        raise response
    return response.outputs["OUTPUT"]


def test_found_through_its_entry_point():
    registry = build_backend_registry()
    entries = {name: source for name, _, source in registry.entries()}
    assert "image_preprocess" in entries
    assert "naiad-custom-example" in entries["image_preprocess"]
    assert registry.find("", "image_preprocess") is ImagePreprocess


def test_nchw_inception_at_target_size_is_exact(tmp_path):
    backend = make_backend(tmp_path, config_text([3, 32, 48]))
    pixels = picture(32, 48, 0)
    out = run_one(backend, [encode(pixels)])
    expected = (pixels.astype(np.float32) * np.float32(1 / 128) - np.float32(1)).transpose(2, 0, 1)
    assert out.shape == (1, 3, 32, 48) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], expected)


def test_jpeg_resized_batch_matches_direct_preprocessing(tmp_path):
    backend = make_backend(tmp_path, config_text([3, 224, 224]))
    blobs = [encode(picture(180 + 10 * i, 240 - 20 * i, i), "JPEG", quality=90) for i in range(3)]
    out = run_one(backend, blobs)
    assert out.shape == (3, 3, 224, 224)
    for i, blob in enumerate(blobs):
        x = by_hand(blob, (224, 224)).astype(np.float32)
        np.testing.assert_allclose(out[i], (x / 128 - 1).transpose(2, 0, 1), atol=1e-6)


def test_nhwc_vgg_uint8_saturates(tmp_path):
    backend = make_backend(tmp_path, config_text([20, 30, 3], "TYPE_UINT8", "NHWC", "VGG"))
    pixels = picture(40, 60, 5)
    blob = encode(pixels)
    out = run_one(backend, [blob])
    x = by_hand(blob, (30, 20)).astype(np.float64) - np.array([104, 117, 123])
    assert out.shape == (1, 20, 30, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0], np.clip(np.rint(x), 0, 255).astype(np.uint8))
    assert (out[0][..., 0] == 0).any()  # below the mean: saturated, not wrapped


def test_grey_output_from_rgba_png(tmp_path):
    backend = make_backend(tmp_path, config_text([1, 16, 16], "TYPE_FP64", "NCHW", "none"))
    rgba = np.dstack([picture(16, 16, 2), np.full((16, 16), 200, np.uint8)])
    blob = encode(rgba)
    out = run_one(backend, [blob])
    expected = by_hand(blob, (16, 16), "L").astype(np.float64).transpose(2, 0, 1)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[0], expected)


def test_without_batching_one_image_per_request(tmp_path):
    backend = make_backend(tmp_path, config_text([3, 8, 8], max_batch_size=0))
    out = run_one(backend, [encode(picture(8, 8, 3))], batched=False)
    assert out.shape == (3, 8, 8)


def test_a_bad_image_fails_its_request_only(tmp_path):
    backend = make_backend(tmp_path, config_text([3, 8, 8]))
    good = request([encode(picture(8, 8, 1))])
    bad = request([encode(picture(8, 8, 1)), b"this is not an image"])
    ok, failed = backend.execute_requests([good, bad])
    assert ok.outputs["OUTPUT"].shape == (1, 3, 8, 8)
    assert isinstance(failed, naiad.InvalidArgument)
    assert "model 'pre'" in str(failed) and "image 1" in str(failed)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            config_text(
                [3, 8, 8], extra_input=', { name: "X" data_type: TYPE_STRING dims: [ 1 ] }'
            ),
            "expected single input, 1 STRING element",
        ),
        (config_text([8, 8]), "expected single output with 3 dimensions"),
        (config_text([3, 0, 8]), "expected single output with 3 dimensions"),
        (config_text([3, 8, 8], "TYPE_FP16"), "unsupported data type TYPE_FP16"),
        (config_text([4, 8, 8]), "must have 1 or 3 channels"),
    ],
)
def test_config_is_checked_at_load(tmp_path, text, message):
    with pytest.raises(naiad.ModelLoadError, match=message):
        make_backend(tmp_path, text)

"""Images of every mode Pillow opens reach the models as a viewer shows them (both jobs open
images through ``shared.images.open_image``): 16-bit and floating-point pixels scaled, not
clipped to white; transparency over white; CMYK and LAB converted; pixels with no agreed
appearance refused with the reason, naming the file (and, in a benchmark, the record)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from shared.editbench.data import prepare_benchmark
from shared.images import ImageFileError, open_image

SIZE = (6, 4)


def grey16(value: int, mode: str) -> Image.Image:
    dtype = ">u2" if mode == "I;16B" else "<u2"
    return Image.frombytes(mode, SIZE, np.full(SIZE[::-1], value, dtype).tobytes())


def palette_with_transparent_index() -> Image.Image:
    img = Image.new("P", SIZE, 1)
    img.putpalette([0, 0, 0, 0, 0, 255])  # index 0 black (transparent), 1 blue
    img.putpixel((0, 0), 0)
    img.info["transparency"] = 0
    return img


def grey_with_transparent_value() -> Image.Image:
    img = Image.new("L", SIZE, 40)
    img.putpixel((0, 0), 0)
    img.info["transparency"] = 0
    return img


# name -> (the image, the format it is saved in, the (0, 0) pixel a viewer shows)
SHOWN: dict[str, tuple[Callable[[], Image.Image], str, tuple[int, int, int]]] = {
    "16-bit-grey-png": (lambda: grey16(12_850, "I;16"), "PNG", (50, 50, 50)),
    "16-bit-big-endian-tiff": (lambda: grey16(51_400, "I;16B"), "TIFF", (200, 200, 200)),
    "16-bit-black-and-full": (lambda: grey16(65_535, "I;16"), "PNG", (255, 255, 255)),
    "32-bit-integer-tiff": (lambda: Image.fromarray(np.full(SIZE[::-1], 25_700, np.int32)), "TIFF",
                            (100, 100, 100)),
    "float-tiff": (lambda: Image.fromarray(np.full(SIZE[::-1], 0.25, np.float32)), "TIFF", (64, 64, 64)),
    "palette-transparent-index": (palette_with_transparent_index, "PNG", (255, 255, 255)),
    "grey-transparent-value": (grey_with_transparent_value, "PNG", (255, 255, 255)),
    "grey-alpha": (lambda: Image.new("LA", SIZE, (0, 0)), "PNG", (255, 255, 255)),
    "half-transparent-red": (lambda: Image.new("RGBA", SIZE, (255, 0, 0, 128)), "PNG", (255, 127, 127)),
    "one-bit": (lambda: Image.new("1", SIZE, 1), "PNG", (255, 255, 255)),
    "cmyk-tiff-cyan": (lambda: Image.new("CMYK", SIZE, (255, 0, 0, 0)), "TIFF", (0, 255, 255)),
    "lab-white": (lambda: Image.new("LAB", SIZE, (255, 128, 128)), "TIFF", (255, 255, 255)),
    "lab-black": (lambda: Image.new("LAB", SIZE, (0, 128, 128)), "TIFF", (0, 0, 0)),
}


def saved(tmp_path: Path, img: Image.Image, fmt: str) -> Path:
    path = tmp_path / f"image.{fmt.lower()}"
    img.save(path, format=fmt)
    return path


@pytest.mark.parametrize("case", list(SHOWN))
def test_every_mode_is_shown_as_a_viewer_shows_it(tmp_path, case):
    make, fmt, expected = SHOWN[case]
    path = saved(tmp_path, make(), fmt)
    shown = open_image(path)
    assert shown.mode == "RGB" and shown.size == SIZE
    assert np.abs(np.subtract(shown.getpixel((0, 0)), expected)).max() <= 2, shown.getpixel((0, 0))


def test_a_16_bit_gradient_keeps_its_gradient(tmp_path):
    ramp = np.linspace(0, 65_535, 256).astype(np.uint16).reshape(16, 16)
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    grey = np.asarray(open_image(path))[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and len(np.unique(grey)) > 200


UNSHOWABLE = {
    "float-beyond-one": (lambda: Image.fromarray(np.full(SIZE[::-1], 200.0, np.float32)), "0-1"),
    "float-nan": (lambda: Image.fromarray(np.full(SIZE[::-1], np.nan, np.float32)), "0-1"),
    "32-bit-beyond-16": (lambda: Image.fromarray(np.full(SIZE[::-1], 100_000, np.int32)), "0-65535"),
    "32-bit-negative": (lambda: Image.fromarray(np.full(SIZE[::-1], -5, np.int32)), "0-65535"),
}


@pytest.mark.parametrize("case", list(UNSHOWABLE))
def test_pixels_with_no_agreed_appearance_are_refused_naming_the_file(tmp_path, case):
    make, words = UNSHOWABLE[case]
    path = saved(tmp_path, make(), "TIFF")
    with pytest.raises(ImageFileError) as info:
        open_image(path)
    assert str(path) in str(info.value) and "cannot be shown" in str(info.value) and words in str(info.value)


def test_a_benchmark_pair_with_such_an_image_fails_alone_at_registration(tmp_path):
    buf = io.BytesIO()
    UNSHOWABLE["float-beyond-one"][0]().save(buf, format="TIFF")
    good = io.BytesIO()
    grey16(30_000, "I;16").save(good, format="PNG")
    pair = {"original_description": "grey", "edit_instruction": "make it red"}
    benchmark = tmp_path / "bench.json"
    benchmark.write_text(json.dumps({"c": [
        {**pair, "pair_id": "float", "original_image_b64": base64.b64encode(buf.getvalue()).decode()},
        {**pair, "pair_id": "sixteen", "original_image_b64": base64.b64encode(good.getvalue()).decode()}]}))
    prepared = prepare_benchmark(benchmark)
    assert [p.pair_id for p in prepared.pairs] == ["sixteen"]
    [reason] = prepared.failures.values()
    assert "pair_id float" in reason and "original_image_b64" in reason and "cannot be shown" in reason

"""glide.images: conversions, grids, atomic PNGs, editing inputs; inference without the data package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

import glide.data.transforms as transforms
from glide import images
from glide.images import (
    grid_columns,
    image_grid,
    image_to_tensor,
    load_mask,
    load_rgb,
    make_grid,
    save_png,
    tensor_to_image,
)


def test_inference_does_not_import_the_training_data_package():
    code = ("import sys, glide.pipelines, glide.guidance, glide.images, glide.devices; "
            "print([m for m in sys.modules if m == 'webdataset' or m.startswith(('glide.data', 'glide.training'))])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_data_package_uses_the_one_copy_of_the_image_helpers():
    for name in ("to_rgb", "resize_center_crop", "image_to_tensor"):
        assert getattr(transforms, name) is getattr(images, name)


def test_tensor_image_round_trip():
    x = torch.randint(0, 256, (3, 5, 7)).float() / 127.5 - 1
    back = image_to_tensor(tensor_to_image(x))
    torch.testing.assert_close(back, x, atol=1e-6, rtol=0)
    assert tensor_to_image(torch.full((3, 2, 2), 5.0)).getpixel((0, 0)) == (255, 255, 255)  # clamped


@pytest.mark.parametrize("count", range(1, 40))
def test_default_grid_is_the_smallest_square_that_holds_the_images(count):
    columns = grid_columns(count)
    assert columns * columns >= count > (columns - 1) * (columns - 1)


def test_image_grid_places_images_row_by_row():
    colours = [(i * 40, 0, 0) for i in range(5)]
    grid = image_grid([Image.new("RGB", (4, 3), c) for c in colours])
    assert grid.size == (3 * 4, 2 * 3)
    for i, colour in enumerate(colours):
        assert grid.getpixel(((i % 3) * 4 + 1, (i // 3) * 3 + 1)) == colour
    assert grid.getpixel((2 * 4 + 1, 3 + 1)) == (255, 255, 255)  # the empty cell stays white
    with pytest.raises(ValueError, match="no images"):
        image_grid([])


def test_make_grid_pads_with_white():
    batch = -torch.ones(3, 3, 4, 4)
    grid = make_grid(batch, columns=2, padding=1)
    assert grid.shape == (3, 2 * 5 + 1, 2 * 5 + 1)
    assert (grid[:, 1:5, 1:5] == -1).all() and (grid[:, 0] == 1).all() and (grid[:, 6:10, 6:10] == 1).all()


def test_save_png_is_atomic_and_keeps_metadata(tmp_path):
    path = save_png(Image.new("RGB", (2, 2)), tmp_path / "a.png", {"glide": {"seed": 3}, "note": "hi"})
    with Image.open(path) as image:
        assert json.loads(image.text["glide"]) == {"seed": 3} and image.text["note"] == "hi"
    with pytest.raises(OSError):
        save_png(Image.new("RGB", (2, 2)), tmp_path / "missing" / "b.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary file left


def test_editing_inputs(tmp_path):
    with pytest.raises(ValueError, match="image file not found"):
        load_rgb(tmp_path / "nope.png", 8)
    with pytest.raises(ValueError, match="mask file not found"):
        load_mask(tmp_path / "nope.png", 8)
    Image.new("RGB", (20, 10), (255, 0, 0)).save(tmp_path / "red.png")
    x = load_rgb(tmp_path / "red.png", 8)
    assert x.shape == (1, 3, 8, 8) and torch.allclose(x[0, :, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    mask = Image.new("L", (8, 8), 0)
    mask.paste(255, (4, 0, 8, 8))
    keep = load_mask(mask, 8)
    assert keep.shape == (1, 1, 8, 8) and keep[..., :4].all() and not keep[..., 4:].any()

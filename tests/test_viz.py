"""Kept-token overlays highlight exactly the kept cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visprune.adapters import Selection
from visprune.viz import overlay


def flat_image(size=(40, 30), colour=(200, 120, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


def record(kept, grid=(3, 4), frame=None) -> Selection:
    kept = torch.tensor(kept)
    return Selection(0, 0, frame, kept, grid[0] * grid[1], grid, kept + 10)


def cell_centre(index, grid, size):
    rows, cols = grid
    row, col = divmod(index, cols)
    return (int((col + 0.5) * size[0] / cols), int((row + 0.5) * size[1] / rows))


def test_kept_cells_keep_their_pixels_and_dropped_cells_are_dimmed():
    image, grid = flat_image(), (3, 4)
    picture = overlay(image, record([0, 5, 11], grid), dim=0.25)
    for index in range(12):
        pixel = picture.getpixel(cell_centre(index, grid, image.size))
        if index in (0, 5, 11):
            assert pixel == (200, 120, 40)
        else:
            assert pixel == (50, 30, 10)


def test_grid_lines_are_drawn_between_cells():
    picture = np.asarray(overlay(flat_image((40, 30)), record([0], (3, 4)), line=(0, 255, 0)))
    assert (picture[:, 10] == (0, 255, 0)).all()  # column edge at x = 40 / 4
    assert (picture[10, :] == (0, 255, 0)).all()  # row edge at y = 30 / 3
    assert not (picture[:, 5] == (0, 255, 0)).all()


def test_one_picture_per_frame():
    frames = [flat_image(colour=(10 * i, 0, 0)) for i in range(1, 4)]
    records = [record([i], frame=i) for i in range(3)]
    pictures = overlay(frames, records)
    assert len(pictures) == 3
    for i, picture in enumerate(pictures):
        assert picture.getpixel(cell_centre(i, (3, 4), (40, 30))) == (10 * (i + 1), 0, 0)


def test_plain_indices_with_an_explicit_grid():
    picture = overlay(flat_image(), [1, 2], grid=(3, 4), dim=0.0)
    assert picture.getpixel(cell_centre(1, (3, 4), (40, 30))) == (200, 120, 40)
    assert picture.getpixel(cell_centre(0, (3, 4), (40, 30))) == (0, 0, 0)


def test_a_record_without_a_grid_raises():
    no_grid = Selection(0, 0, None, torch.tensor([0]), 14, None, torch.tensor([3]))
    with pytest.raises(ValueError, match="no single token grid"):
        overlay(flat_image(), no_grid)


def test_mismatched_counts_and_bad_values_raise():
    with pytest.raises(ValueError, match="2 images for 3"):
        overlay([flat_image(), flat_image()], [record([0]), record([1]), record([2])])
    with pytest.raises(ValueError, match="outside"):
        overlay(flat_image(), record([12]))
    with pytest.raises(ValueError, match="dim"):
        overlay(flat_image(), record([0]), dim=1.5)


def test_model_view_crops_only_where_the_processor_centre_crops():
    from types import SimpleNamespace

    from visprune.viz import model_view

    photo = Image.new("RGB", (600, 100))
    clip = SimpleNamespace(
        size={"shortest_edge": 50}, crop_size={"height": 50, "width": 50}, do_center_crop=True
    )
    assert model_view(SimpleNamespace(image_processor=clip), photo).size == (50, 50)
    # Qwen-VL: "shortest_edge" is a pixel count and nothing is cropped
    qwen = SimpleNamespace(size={"shortest_edge": 3136, "longest_edge": 12845056}, crop_size=None)
    assert model_view(qwen, photo).size == (600, 100)


@pytest.mark.parametrize(
    "size,expected",
    [
        ((64, 64), (384, 384)),
        ((6000, 4000), (1024, 683)),
        ((500, 400), (500, 400)),
        ((100, 30), (1000, 300)),
    ],
)
def test_kept_token_pictures_are_scaled_to_a_readable_size(size, expected):
    from visprune.viz import readable

    assert readable(Image.new("RGB", size)).size == expected

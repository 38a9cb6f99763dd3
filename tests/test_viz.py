"""Kept-token pictures: dropped cells masked, kept cells untouched, labels whole and unclipped."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from visprune.adapters import Selection
from visprune.viz import (
    MASK_NOTE,
    FramesRun,
    Panel,
    answer_line,
    frames_sheet,
    kept_picture,
    overlay,
    readable,
    stack,
    table,
)
from visprune.viz.overlay import LEVEL
from visprune.viz.sheet import MARGIN
from visprune.viz.text import RIGHT, WRONG, block_size, font, text_width, wrap


def flat_image(size=(40, 30), colour=(200, 120, 40)) -> Image.Image:
    return Image.new("RGB", size, colour)


def noise_image(size=(64, 64), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def record(kept, grid=(3, 4), frame=None) -> Selection:
    kept = torch.tensor(kept)
    return Selection(0, 0, frame, kept, grid[0] * grid[1], grid, kept + 10)


def cell_boxes(grid, size):
    """Pixel box ``(left, top, right, bottom)`` of every cell, in raster order."""
    rows, cols = grid
    xs = [round(i * size[0] / cols) for i in range(cols + 1)]
    ys = [round(i * size[1] / rows) for i in range(rows + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def pixels(image, box=None) -> np.ndarray:
    return np.asarray(image.crop(box) if box else image).astype(int)


def locate(picture: Image.Image, part: Image.Image) -> tuple[int, int]:
    """Top-left corner of the one place where ``part`` appears whole in ``picture``."""
    big, small = pixels(picture), pixels(part)
    h, w = small.shape[:2]
    found = [
        (x, y)
        for y in range(big.shape[0] - h + 1)
        if (big[y, :, :] == small[0, 0]).all(-1).any()
        for x in np.flatnonzero((big[y, : big.shape[1] - w + 1] == small[0, 0]).all(-1))
        if (big[y : y + h, x : x + w] == small).all()
    ]
    assert len(found) == 1, f"found {len(found)} places"
    return found[0]


def ink_box(picture: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box of everything that is not white."""
    ink = (pixels(picture) != 255).any(-1)
    ys, xs = np.nonzero(ink)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


# -- overlay: the masking ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,grid", [((40, 30), (3, 4)), ((41, 31), (3, 4)), ((192, 192), (8, 8))]
)
def test_kept_cells_are_bit_identical_and_dropped_cells_masked(size, grid):
    image, kept = noise_image(size), [0, 5, 11]
    picture = overlay(image, record(kept, grid), dim=0.25, line=(1, 2, 3), hatch=5)
    assert picture.size == image.size and picture.mode == "RGB"
    for index, box in enumerate(cell_boxes(grid, size)):
        before, after = pixels(image, box), pixels(picture, box)
        if index in kept:
            assert (after == before).all(), index
        else:
            marked = (after == (1, 2, 3)).all(-1)
            dimmed = np.floor(before * 0.25 / LEVEL) * LEVEL
            assert (after[~marked] == dimmed[~marked]).all(), index  # the rest only dimmed
            assert marked[0].all() and marked[:, 0].all()  # outlined on its top and left edge
            assert marked[1:, 1:].any()  # and hatched inside


def test_without_hatching_a_dropped_cell_is_only_dimmed_inside_its_outline():
    picture = overlay(flat_image((40, 30)), record([0], (3, 4)), dim=0.5, hatch=0)
    inside = pixels(picture, (11, 11, 20, 20))  # cell 5 without its top and left edge
    assert (inside == (96, 56, 16)).all()  # (200, 120, 40) / 2 in steps of 8


def test_one_picture_per_frame():
    frames = [flat_image(colour=(10 * i, 0, 0)) for i in range(1, 4)]
    records = [record([i], frame=i) for i in range(3)]
    pictures = overlay(frames, records)
    assert len(pictures) == 3
    for i, picture in enumerate(pictures):
        box = cell_boxes((3, 4), (40, 30))[i]
        assert (pixels(picture, box) == (10 * (i + 1), 0, 0)).all()


def test_plain_indices_with_an_explicit_grid():
    picture = overlay(flat_image(), [1, 2], grid=(3, 4), dim=0.0, hatch=0)
    boxes = cell_boxes((3, 4), (40, 30))
    assert (pixels(picture, boxes[1]) == (200, 120, 40)).all()
    assert (pixels(picture, (1, 1, 10, 10)) == 0).all()  # cell 0 inside its outline


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
    with pytest.raises(ValueError, match="hatch"):
        overlay(flat_image(), record([0]), hatch=-1)


# -- the view the model saw, at a readable size ------------------------------------------------


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
    # Gemma 3: squeezed to a fixed size, nothing cropped
    gemma = SimpleNamespace(size={"height": 40, "width": 40}, do_resize=True)
    assert model_view(gemma, photo).size == (40, 40)


def test_model_view_pads_to_a_square_where_llava_pads():
    from types import SimpleNamespace

    from visprune.viz import model_view

    photo = Image.new("RGB", (60, 20), (0, 0, 255))
    llava = SimpleNamespace(
        size={"shortest_edge": 30},
        crop_size={"height": 30, "width": 30},
        do_center_crop=True,
        do_pad=True,
        pad_to_square=None,
        image_mean=(0.5, 0.5, 0.5),
    )
    view = model_view(llava, photo)
    assert view.size == (30, 30)
    assert view.getpixel((15, 1)) == (127, 127, 127)  # the mean-colour padding above
    assert view.getpixel((15, 15)) == (0, 0, 255) and view.getpixel((0, 15)) == (0, 0, 255)


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
    assert readable(Image.new("RGB", size)).size == expected


def test_small_views_are_enlarged_with_sharp_pixels():
    view = noise_image((64, 64))
    big = pixels(readable(view))
    assert (big[::6, ::6] == pixels(view)).all()  # each pixel a 6 x 6 block, nearest-neighbour
    assert (big[5::6, 5::6] == pixels(view)).all()


# -- labels -----------------------------------------------------------------------------------


def test_wrap_breaks_long_text_and_keeps_every_word():
    text = "what colour is the object just to the left of the large shiny cylinder ?"
    lines = wrap(text, 150)
    assert len(lines) > 1 and " ".join(lines) == text
    assert all(text_width(line) <= 150 for line in lines)
    word = "pneumonoultramicroscopicsilicovolcanoconiosis"
    assert wrap(word, 50) == [word]  # a word wider than the width is not cut
    assert block_size([(word, (0, 0, 0))], 50)[0] == text_width(word) > 50


@pytest.mark.parametrize(
    "answer,expected,words,colour",
    [
        ("cyan", "cyan", "right", RIGHT),
        (" Cyan ", "cyan", "right", RIGHT),
        ("red", "cyan", "wrong", WRONG),
    ],
)
def test_the_answer_is_marked_right_or_wrong(answer, expected, words, colour):
    text, ink = answer_line(answer, expected)
    assert text.endswith(words) and ink == colour


def test_an_answer_without_a_right_answer_is_not_marked():
    text, ink = answer_line("cyan", None)
    assert text == "model's answer: cyan" and ink not in (RIGHT, WRONG)


def _picture(question="what shape is the blue object ?", answer="diamond", expected="diamond"):
    return kept_picture(
        noise_image((64, 64)),
        record([0, 9, 63], (8, 8)),
        question=question,
        method="divprune",
        answer=answer,
        expected=expected,
    )


def test_kept_picture_holds_the_enlarged_overlay_untouched_under_its_labels():
    view = noise_image((64, 64))
    picture = _picture()
    enlarged = overlay(readable(view), record([0, 9, 63], (8, 8)))
    left, top = locate(picture, enlarged)
    assert left >= MARGIN and top > MARGIN + 4 * 15  # question, answer, note, method above
    assert picture.width >= enlarged.width + 2 * MARGIN
    labels = pixels(picture, (0, 0, picture.width, top - 4))
    assert (labels != 255).any(-1).sum() > 500  # text was drawn above the image


def test_kept_picture_frames_the_image_in_the_colour_of_its_verdict():
    for answer, colour in (("diamond", RIGHT), ("circle", WRONG)):
        picture = _picture(answer=answer)
        left, top = locate(picture, overlay(readable(noise_image()), record([0, 9, 63], (8, 8))))
        assert picture.getpixel((left - 2, top + 100)) == colour
        assert picture.getpixel((left + 100, top - 2)) == colour
    unknown = _picture(expected=None)
    left, top = locate(unknown, overlay(readable(noise_image()), record([0, 9, 63], (8, 8))))
    assert unknown.getpixel((left - 2, top + 100)) == (255, 255, 255)


@pytest.mark.parametrize("long_word", [False, True])
def test_no_label_is_clipped_however_long(long_word):
    question = " ".join(["what colour is the small rubber sphere behind the cube ?"] * 4)
    word = "a" * 80
    short = _picture()
    picture = _picture(question=f"{question} {word}" if long_word else question)
    if long_word:  # the canvas grows to the longest word
        assert picture.width >= text_width(word) + 2 * MARGIN > short.width
    else:  # the question wraps to the picture's width, which stays the image's
        assert picture.width == short.width
        assert picture.height >= short.height + 3 * 15
    left, top, right, bottom = ink_box(picture)  # nothing touches the edge
    assert left >= MARGIN // 2 and top >= MARGIN // 2
    assert right <= picture.width - MARGIN // 2 and bottom <= picture.height - MARGIN // 2


def test_table_lays_panels_out_with_their_heads_and_reports_their_boxes():
    images = [[noise_image((48, 48), seed=3 * r + c) for c in range(3)] for r in range(2)]
    panels = [[Panel(im, [answer_line("yes", "yes", "")], RIGHT) for im in row] for row in images]
    heads = [[("question one is long enough to wrap", (0, 0, 0))]] * 3
    rows = [[("unpruned", (0, 0, 0))], [("divprune", (0, 0, 0))]]
    sheet = table(panels, title=[(MASK_NOTE, (0, 0, 0))], column_heads=heads, row_heads=rows)
    assert [len(row) for row in sheet.boxes] == [3, 3]
    for row, boxes in zip(images, sheet.boxes, strict=True):
        for image, box in zip(row, boxes, strict=True):
            assert (pixels(sheet.picture, box) == pixels(image)).all()
    lefts = [box[0] for box in sheet.boxes[0]]
    assert lefts == sorted(lefts) and sheet.boxes[0][0][1] < sheet.boxes[1][0][1]
    # row heads sit left of the first column, nothing overlaps, nothing is clipped
    assert lefts[0] >= MARGIN + text_width("divprune", font())
    assert sheet.boxes[0][1][0] - sheet.boxes[0][0][2] >= 8  # panels apart, not touching
    right, bottom = ink_box(sheet.picture)[2:]
    assert right <= sheet.picture.width - MARGIN // 2
    assert bottom <= sheet.picture.height - MARGIN // 2


def test_table_refuses_ragged_rows_and_wrong_head_counts():
    panel = Panel(flat_image())
    with pytest.raises(ValueError, match="same count"):
        table([[panel, panel], [panel]])
    with pytest.raises(ValueError, match="1 column heads for 2"):
        table([[panel, panel]], column_heads=[[("a", (0, 0, 0))]])


# -- video: frames as separate, numbered tiles ---------------------------------------------------


def _frames_sheet(frames=5, answers=("red", "blue")):
    clip = [noise_image((32, 32), seed=f) for f in range(frames)]
    runs = [
        FramesRun("unpruned", None, answers[0]),
        FramesRun("divprune", [[f, 15] for f in range(frames)], answers[1], tokens=2),
    ]
    sheet = frames_sheet(
        clip, runs, question="what colour moved ?", expected="red", grid=(4, 4), targets=[(1, 5)]
    )
    return clip, sheet


def test_frames_sheet_has_one_separate_tile_per_frame_in_every_row():
    clip, sheet = _frames_sheet(frames=5)
    assert [len(row) for row in sheet.boxes] == [5, 5]
    for row in sheet.boxes:
        for a, b in itertools.pairwise(row):
            assert b[0] - a[2] >= 8  # a white gap between frames: tiles, not a strip
            assert (pixels(sheet.picture, (a[2], a[1], b[0], a[3])) == 255).all()
    for f, box in enumerate(sheet.boxes[1]):  # pruned row: frame f kept cells f and 15
        tile = clip[f].resize((96, 96), Image.NEAREST)
        expected = overlay(tile, [f, 15], grid=(4, 4))
        assert (pixels(sheet.picture, box) == pixels(expected)).all()
        kept = cell_boxes((4, 4), (96, 96))[f]
        assert (pixels(expected, kept) == pixels(tile, kept)).all()
    target = sheet.boxes[0][1]  # the answer's cell 5 of frame 2 outlined in the unpruned row
    assert sheet.picture.getpixel((target[0] + 24, target[1] + 30)) == (230, 0, 0)


def test_frames_sheet_numbers_the_frames_and_names_the_answers():
    _, five = _frames_sheet(frames=5)
    _, eight = _frames_sheet(frames=8)
    assert eight.picture.width - five.picture.width >= 3 * 96
    head = five.boxes[0][0][1]
    above = pixels(five.picture, (five.boxes[0][0][0], head - 24, five.boxes[0][-1][2], head))
    assert (above != 255).any()  # the frame numbers over the tiles


def test_frames_sheet_marks_each_method_right_or_wrong():
    for answers, colours in ((("red", "blue"), (RIGHT, WRONG)), (("blue", "red"), (WRONG, RIGHT))):
        _, sheet = _frames_sheet(answers=answers)
        for row, colour in zip(sheet.boxes, colours, strict=True):
            heads = pixels(sheet.picture, (0, row[0][1], row[0][0], row[0][3]))
            assert (heads == colour).all(-1).any()
            other = WRONG if colour == RIGHT else RIGHT
            assert not (heads == other).all(-1).any()


def test_frames_sheet_refuses_a_run_with_the_wrong_frame_count():
    clip = [noise_image((32, 32))] * 3
    run = FramesRun("divprune", [[0], [1]], "red", tokens=1)
    with pytest.raises(ValueError, match="2 frame selections for 3 frames"):
        frames_sheet(clip, [run], question="q", expected="red", grid=(4, 4))


def test_stack_puts_sheets_one_under_the_other():
    a, b = flat_image((50, 20), (1, 1, 1)), flat_image((30, 40), (2, 2, 2))
    out = stack([a, b])
    assert out.width == 50 and out.height > 60
    assert out.getpixel((0, 0)) == (1, 1, 1) and out.getpixel((0, out.height - 1)) == (2, 2, 2)

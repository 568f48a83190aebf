"""Outpainting canvases, masks and the pixel helpers of the modes."""

import numpy as np
import pytest
from PIL import Image

from kcli.errors import KandinskyError
from kcli.pipelines import canvas
from kcli.pipelines.files import load_image
from kcli.pipelines.masks import paste_original, repaint_mask


@pytest.mark.parametrize("spec,want", [
    ("top=128", {"top": 128, "bottom": 0, "left": 0, "right": 0}),
    ("bottom=64px", {"top": 0, "bottom": 64, "left": 0, "right": 0}),
    ("left=25%", {"top": 0, "bottom": 0, "left": 100, "right": 0}),
    ("right=50%,top=10", {"top": 10, "bottom": 0, "left": 0, "right": 200}),
    ("all=10%", {"top": 30, "bottom": 30, "left": 40, "right": 40}),
    ("all=16, left=0", {"top": 16, "bottom": 16, "left": 0, "right": 16}),
])
def test_parse_expand_in_pixels_and_percent(spec, want):
    assert canvas.parse_expand(spec, 400, 300) == want


@pytest.mark.parametrize("spec", ["all=0", "top=0,left=0", "", "middle=4", "top=-3", "top=abc"])
def test_bad_expand_is_refused(spec):
    with pytest.raises(KandinskyError):
        canvas.parse_expand(spec, 400, 300)


@pytest.mark.parametrize("grow,size,pos", [
    ({"top": 128, "bottom": 0, "left": 0, "right": 0}, (512, 640), (0, 128)),
    ({"top": 0, "bottom": 100, "left": 0, "right": 0}, (512, 640), (0, 0)),
    ({"top": 0, "bottom": 0, "left": 10, "right": 0}, (576, 512), (64, 0)),
    ({"top": 0, "bottom": 0, "left": 0, "right": 10}, (576, 512), (0, 0)),
    ({"top": 20, "bottom": 20, "left": 0, "right": 0}, (512, 576), (0, 32)),
])
def test_canvas_rounds_growing_axes_to_the_grid(grow, size, pos):
    c = canvas.fit_canvas(512, 512, grow, 64)
    assert (c.width, c.height) == size and (c.left, c.top) == pos


def test_canvas_leaves_a_still_axis_alone_and_mask_marks_only_the_new_area():
    picture = Image.fromarray(np.arange(50 * 70 * 3, dtype=np.uint8).reshape(50, 70, 3))
    c = canvas.fit_canvas(70, 50, {"top": 0, "bottom": 0, "left": 5, "right": 0}, 64)
    assert (c.width, c.height, c.left) == (128, 50, 58)
    board, repaint = canvas.build(picture, c)
    assert board.size == (128, 50) and repaint.shape == (50, 128)
    assert repaint[:, :58].all() and not repaint[:, 58:].any()
    assert np.array_equal(np.asarray(board)[:, 58:], np.asarray(picture))
    assert np.array_equal(np.asarray(board)[:, 0], np.asarray(picture)[:, 0])  # edge repeated into the new area


def test_paste_keeps_outside_exactly_and_feathers_inside():
    rng = np.random.default_rng(1)
    original, generated = (rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(2))
    repaint = np.zeros((40, 40), bool)
    repaint[10:30, 10:30] = True
    out = paste_original(original, generated, repaint, feather=3)
    assert np.array_equal(out[~repaint], original[~repaint])
    assert np.array_equal(out[20, 20], generated[20, 20])  # deep inside: the generated pixel
    assert not np.array_equal(out[10, 20], generated[10, 20])  # at the edge: a blend


def test_mask_alpha_means_transparent_repaints_and_masks_are_resized():
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:10, :, 3] = 0  # transparent top half
    repaint = repaint_mask(Image.fromarray(rgba, "RGBA"), 60, 40)
    assert repaint.shape == (40, 60) and repaint[:18].all() and not repaint[22:].any()
    assert (repaint_mask(Image.fromarray(rgba, "RGBA"), 60, 40, invert=True) == ~repaint).all()


def test_exif_rotation_is_honoured(tmp_path):
    wide = Image.new("RGB", (40, 20), "red")
    exif = wide.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    wide.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)

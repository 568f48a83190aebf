"""Tiled MoVQ decoding: exact when one tile covers the picture, seamless and close otherwise."""

import torch

from kcli.models.movq import load_movq
from kcli.pipelines import tiling


def to8(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round()


def test_coarse_fine_split_is_the_whole_decode(decoder22):
    movq = load_movq(decoder22 / "movq")
    z = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(movq.decode_fine(movq.decode_coarse(z), z), movq.decode(z))
        torch.testing.assert_close(tiling.decode(movq, z, tile=64), movq.decode(z))  # one tile: exact


def test_tiled_decode_is_close_and_has_no_seams(decoder22):
    movq = load_movq(decoder22 / "movq")
    z = torch.randn(1, 4, 64, 96, generator=torch.Generator().manual_seed(1))  # a 512x768 picture
    with torch.no_grad():
        whole, tiles = to8(movq.decode(z)), to8(tiling.decode(movq, z, tile=40, overlap=12))
    diff = (whole - tiles).abs().mean(dim=(0, 1))  # (H, W)
    assert diff.mean() < 3, diff.mean()  # group norms see a tile, not the picture: close, not equal
    # no seam: no column or row stands out (a hard cut between tiles shows ~20/255 along it)
    worst = max(diff.mean(dim=0).max(), diff.mean(dim=1).max())
    assert worst < 3 * diff.mean() + 2, (worst, diff.mean())

    with torch.no_grad():
        cut = to8(tiling.tiled(movq.decode, z, movq.scale_factor, 40, 0))  # no overlap: the check must see it
    hard = (whole - cut).abs().mean(dim=(0, 1))
    assert max(hard.mean(dim=0).max(), hard.mean(dim=1).max()) > 3 * hard.mean() + 2

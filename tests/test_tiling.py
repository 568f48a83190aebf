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


def _smooth_picture():
    """A 128x192 picture with structure (three smooth waves) and a little noise, in [-1, 1]."""
    g = torch.Generator().manual_seed(2)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 128), torch.linspace(-1, 1, 192), indexing="ij")
    waves = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None]
    return (waves * 0.8 + 0.1 * torch.randn(1, 3, 128, 192, generator=g)).clamp(-1, 1)


def test_tiled_encode_is_exact_in_one_tile_and_close_in_many(decoder22):
    movq = load_movq(decoder22 / "movq")
    x = _smooth_picture()
    with torch.no_grad():
        whole = movq.encode(x)
        torch.testing.assert_close(tiling.encode(movq, x, tile=256), whole, atol=1e-5, rtol=1e-5)  # one tile
        tiles = tiling.encode(movq, x, tile=96, overlap=48)  # 6 tiles, statistics from a half-size copy
        assert tiles.shape == whole.shape
        assert (tiles - whole).abs().mean() < 0.2 * whole.abs().mean()
        # judged as the decode is: in pixels, after decoding both
        ref = to8(movq.decode(whole))
        diff = (to8(movq.decode(tiles)) - ref).abs().mean()
        assert diff < 4, diff
        # tiles that each see only themselves (their own group norms, their own attention) are far off:
        naive = to8(movq.decode(tiling.tiled(movq.encode, x, 1 / movq.scale_factor, 96, 48)))
        assert (naive - ref).abs().mean() > 2 * diff

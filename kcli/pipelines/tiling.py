"""MoVQ decode (and encode) in overlapping tiles, for pictures whose full-size activations do not fit.

Decoding: the coarse part of the decoder (its attention levels, at latent resolution, where activations
are small) runs on the whole picture, so attention still sees everything. The high-resolution rest,
which holds the memory, runs in tiles that overlap by ``overlap`` latent pixels, blended with linear
ramps so no seam shows. The only difference from a whole decode is that each tile's group norms take
their statistics from the tile. Encoding is tiled whole (encoder attention then sees the tile).
Both are used automatically from ``AUTO_TILE_LATENT`` latent pixels per side on (1024 px for the real models).

Tile sizes: the fine part's activations scale with the tile's area, so a tile must be well below the
picture to save anything. 32 latent pixels (256 px) with an overlap of 8 take the fp32 decode's peak from
4.0 GiB whole (1.3 in 64-pixel tiles) to 0.5 GiB at 1024 px, and from 1.0 to 0.3 GiB at 512 px, where a
64-pixel tile covers the whole latent and saves nothing; the fine part's compute about doubles
(figures from memtrack, as tests/test_memtrack.py measures them).
"""

from __future__ import annotations

import torch

AUTO_TILE_LATENT = 128


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _ramp(n: int, overlap: int, first: bool, last: bool, device) -> torch.Tensor:
    """Blend weights along one axis of a tile: rising over the overlap unless at the picture's edge."""
    w = torch.ones(n, device=device)
    r = torch.linspace(0, 1, overlap + 2, device=device)[1:-1] if overlap else torch.ones(0, device=device)
    if not first and overlap:
        w[:overlap] = r
    if not last and overlap:
        w[-overlap:] = r.flip(0)
    return w


def tiled(fn, x: torch.Tensor, scale: float, tile: int, overlap: int) -> torch.Tensor:
    """Apply ``fn`` (which maps a (B, C, h, w) tile to (B, C', h*scale, w*scale)) tile by tile and blend."""
    B, _, H, W = x.shape
    ys, xs = _starts(H, tile, overlap), _starts(W, tile, overlap)
    out = weight = None
    for yi, y in enumerate(ys):
        for xi, x0 in enumerate(xs):
            piece = fn(x[:, :, y:y + tile, x0:x0 + tile]).float()
            ph, pw = piece.shape[-2:]
            o = round(overlap * scale)
            wy = _ramp(ph, o, yi == 0, yi == len(ys) - 1, piece.device)
            wx = _ramp(pw, o, xi == 0, xi == len(xs) - 1, piece.device)
            w = wy[:, None] * wx[None, :]
            if out is None:
                out = torch.zeros(B, piece.shape[1], round(H * scale), round(W * scale), device=piece.device)
                weight = torch.zeros(round(H * scale), round(W * scale), device=piece.device)
            Y, X = round(y * scale), round(x0 * scale)
            out[:, :, Y:Y + ph, X:X + pw] += piece * w
            weight[Y:Y + ph, X:X + pw] += w
    return out / weight


def decode(movq, z: torch.Tensor, tile: int = 32, overlap: int = 8) -> torch.Tensor:
    """``movq.decode`` with its high-resolution part in tiles of ``tile`` latent pixels."""
    h = movq.decode_coarse(z)  # (B, C, r*h, r*w): whole
    r = h.shape[-1] // z.shape[-1]
    zq_h = torch.nn.functional.interpolate(z, size=h.shape[-2:], mode="nearest")  # z, one value per h pixel

    def fine(piece: torch.Tensor) -> torch.Tensor:  # piece: h and z stacked on channels
        return movq.decode_fine(piece[:, :h.shape[1]], piece[:, h.shape[1]:][..., ::r, ::r])

    both = torch.cat([h, zq_h.to(h.dtype)], dim=1)
    return tiled(fine, both, movq.scale_factor / r, tile * r, overlap * r).to(z.dtype)


def encode(movq, x: torch.Tensor, tile: int = 512, overlap: int = 128) -> torch.Tensor:
    """``movq.encode`` in tiles of ``tile`` pixels (multiples of the MoVQ factor)."""
    return tiled(movq.encode, x, 1 / movq.scale_factor, tile, overlap).to(x.dtype)

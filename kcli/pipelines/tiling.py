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


def encode(movq, x: torch.Tensor, tile: int = 256, overlap: int = 128) -> torch.Tensor:
    """``movq.encode`` with its high-resolution part in tiles of ``tile`` pixels (multiples of the MoVQ factor).

    As in ``decode``, the part with attention (at latent resolution) runs on the whole picture. The tiles'
    group norms use statistics of the whole picture, taken once from a copy shrunk to about one tile (so that
    pass costs what a tile does), not each tile's own."""
    enc = movq.encoder
    split = next((i for i, b in enumerate(enc.down_blocks) if b.attentions is not None), len(enc.down_blocks))
    factor = 2 ** min(split, len(enc.down_blocks) - 1)

    def fine(pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, H/factor, W/factor)
        h = enc.conv_in(pixels.to(movq.dtype))
        for block in enc.down_blocks[:split]:
            h = block(h)
        return h

    shrink = min(1.0, tile / max(x.shape[-2:]))
    small = torch.nn.functional.interpolate(x, scale_factor=shrink, mode="area") if shrink < 1 else x
    with _WholeNorms(enc.down_blocks[:split]) as norms:
        fine(small)
        norms.apply()
        h = tiled(fine, x, 1 / factor, tile, overlap)
    h = h.to(movq.dtype)
    for block in enc.down_blocks[split:]:
        h = block(h)
    h = enc.conv_out(torch.nn.functional.silu(enc.conv_norm_out(enc.mid_block(h))))
    return movq.quant_conv(h).to(x.dtype)


class _WholeNorms:
    """The group norms of ``modules``: first recording each one's statistics (per sample and group) on one
    pass, then (``apply``) normalising with them whatever they see, e.g. a tile of that picture."""

    def __init__(self, modules):
        self.norms = [m for m in torch.nn.ModuleList(modules).modules() if isinstance(m, torch.nn.GroupNorm)]
        self.stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recording = True

    def __enter__(self):
        for i, norm in enumerate(self.norms):
            norm.forward = self._forward(norm, i)
        return self

    def apply(self) -> None:
        self.recording = False

    def _forward(self, norm: torch.nn.GroupNorm, i: int):
        def forward(h: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
            groups = h.float().reshape(h.shape[0], norm.num_groups, -1)
            if self.recording:
                self.stats[i] = (groups.mean(-1, keepdim=True), groups.var(-1, unbiased=False, keepdim=True))
            mean, var = self.stats[i]
            out = ((groups - mean) * torch.rsqrt(var + norm.eps)).reshape(h.shape)
            return (out * norm.weight[:, None, None] + norm.bias[:, None, None]).to(h.dtype)

        return forward

    def __exit__(self, *exc):
        for norm in self.norms:
            del norm.forward

"""The ControlNet hint encoder of the Kandinsky 2.2 depth decoder (``add_embedding.input_hint_block``).

A 3-channel picture at the output size, values in [0, 1], goes through eight 3x3 convolutions with SiLU
between them; three of them have stride 2, so the result is 4 channels at 1/8 of the size: the latent size.
The UNet puts these 4 channels after the 4 latent channels, so its first convolution takes 8.

Module indices (0, 2, ..., 14, the activations in between) equal the checkpoint keys.
Reference: diffusers ``ImageHintTimeEmbedding`` (``models/embeddings.py``).
"""

from __future__ import annotations

import torch
from torch import nn

# (channels in, channels out, stride) of each convolution, in order
LAYERS = ((3, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 96, 2), (96, 96, 1), (96, 256, 2), (256, 4, 1))
DOWNSCALE = 8  # 2 ** (number of stride-2 layers)
FEATURES = LAYERS[-1][1]  # channels added to the UNet input


class HintEncoder(nn.Sequential):
    def __init__(self):
        layers: list[nn.Module] = []
        for i, (c_in, c_out, stride) in enumerate(LAYERS):
            if i:
                layers.append(nn.SiLU())
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1))
        super().__init__(*layers)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 4, H/8, W/8)."""
        return super().forward(hint)

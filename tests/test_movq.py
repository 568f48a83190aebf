"""MoVQ (kcli.models.movq) against diffusers' VQModel: same state dict, same encode/decode numbers."""

from __future__ import annotations

import json
import shutil

import oracle
import pytest
import torch
from conftest import CONFIGS

from kcli.errors import CheckpointError
from kcli.models.movq import MoVQ, MoVQConfig, load_movq


@pytest.fixture(scope="module")
def models(decoder22):
    from diffusers import VQModel

    folder = decoder22 / "movq"
    return load_movq(folder), VQModel.from_pretrained(folder).eval()


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (2, 4, 8, 16)])
def test_decode_matches_diffusers(models, shape):
    ours, ref = models
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = ours.decode(z)
        expected = ref.decode(z, force_not_quantize=True).sample
    assert out.shape == (shape[0], 3, shape[2] * ours.scale_factor, shape[3] * ours.scale_factor)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size", [(64, 64), (64, 128)])
def test_encode_matches_diffusers(models, size):
    ours, ref = models
    x = torch.rand((2, 3, *size), generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        out = ours.encode(x)
        expected = ref.encode(x).latents
    assert out.shape == (2, 4, size[0] // 8, size[1] // 8)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_real_config_state_dict_matches_diffusers():
    from diffusers import VQModel

    config = json.loads((CONFIGS / "movq.json").read_text())
    with torch.device("meta"):
        ours = MoVQ(MoVQConfig.from_dict(config))
        ref = VQModel.from_config(config)
    oracle.assert_same_structure(ours, ref, 67_832_495)
    assert ours.scale_factor == 8


def _copy_with_config(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_config_that_does_not_fit_weights(decoder22, tmp_path):
    folder = _copy_with_config(decoder22 / "movq", tmp_path / "movq", layers_per_block=2)
    with pytest.raises(CheckpointError, match="does not fit its config: missing"):
        load_movq(folder)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"norm_type": "group"}, "norm_type"),
        ({"up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "UpBlock2D", "UpDecoderBlock2D"]},
         "up_block_types"),
        ({"vq_embed_dim": 8}, "vq_embed_dim"),
        ({"layers_per_block": "2"}, "layers_per_block"),
    ],
)
def test_unsupported_config_is_rejected(decoder22, tmp_path, changes, key):
    folder = _copy_with_config(decoder22 / "movq", tmp_path / "movq", **changes)
    with pytest.raises(CheckpointError, match=key) as info:
        load_movq(folder)
    assert "\n" not in str(info.value)


def test_missing_norm_type_means_group_and_is_rejected():
    config = json.loads((CONFIGS / "movq.json").read_text())
    del config["norm_type"]  # diffusers' default is "group": a plain VQGAN, not a MoVQ
    with pytest.raises(CheckpointError, match="norm_type"):
        MoVQConfig.from_dict(config)


def test_bf16_decode_close_to_fp32(decoder22, models):
    ours32, _ = models
    ours16 = load_movq(decoder22 / "movq", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in ours16.parameters())
    z = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out16, out32 = ours16.decode(z), ours32.decode(z)
    assert out16.dtype == torch.bfloat16 and torch.isfinite(out16).all()
    torch.testing.assert_close(out16.float(), out32, atol=0.05 * out32.abs().max().item(), rtol=0.05)

"""The native decoder UNet against diffusers' UNet2DConditionModel: structure on the real configs,
numbers on a tiny checkpoint."""

import json
import shutil

import oracle
import pytest
import torch
from conftest import CONFIGS

from kcli.errors import CheckpointError
from kcli.models.unet import UNet, UNetConfig, load_unet

REAL = {
    "kandinsky-2-2-decoder.unet.json": 1_253_057_288,
    "kandinsky-2-2-decoder-inpaint.unet.json": 1_253_074_568,
    "kandinsky-2-1.unet.json": 1_228_661_768,
    "kandinsky-2-1-inpaint.unet.json": 1_228_679_048,
    "kandinsky-2-2-controlnet-depth.unet.json": 1_253_429_212,  # the decoder's, 4 more input channels, the hint encoder
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_structure_equals_diffusers_on_real_config(name):
    from diffusers import UNet2DConditionModel

    config = json.loads((CONFIGS / name).read_text())
    with torch.device("meta"):
        ours = UNet(UNetConfig.from_dict(config))
        ref = UNet2DConditionModel.from_config(config)
    oracle.assert_same_structure(ours, ref, REAL[name])


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (1, 4, 8, 16)])
def test_forward_equals_diffusers(decoder22, shape):
    from diffusers import UNet2DConditionModel

    ours = load_unet(decoder22 / "unet")
    ref = UNet2DConditionModel.from_pretrained(decoder22 / "unet").eval()
    g = torch.Generator().manual_seed(sum(shape))
    x, emb = torch.randn(shape, generator=g), torch.randn(shape[0], 32, generator=g)
    for t in (999, 500, 1):
        with torch.no_grad():
            got = ours(x, torch.tensor(t), emb)
            want = ref(x, torch.tensor(t), encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb}).sample
        assert got.shape == (shape[0], 8, *shape[2:])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_text_image_conditioning_equals_diffusers():
    """The 2.1 conditioning path (pooled text + image added, 10 image tokens + text tokens as context)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    ref = UNet2DConditionModel(
        in_channels=4, out_channels=8, addition_embed_type="text_image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=24, encoder_hid_dim_type="text_image_proj", cross_attention_dim=32,
        attention_head_dim=4, resnet_time_scale_shift="scale_shift", norm_num_groups=8,
    ).eval()
    with torch.device("meta"):
        ours = UNet(UNetConfig.from_dict(dict(ref.config)))
    ours.load_state_dict(ref.state_dict(), assign=True)
    g = torch.Generator().manual_seed(1)
    x, img, txt, hid = (torch.randn(s, generator=g) for s in [(2, 4, 8, 8), (2, 32), (2, 32), (2, 77, 24)])
    with torch.no_grad():
        got = ours(x, torch.tensor(400), img, text_embeds=txt, text_hidden=hid)
        want = ref(x, torch.tensor(400), encoder_hidden_states=hid,
                   added_cond_kwargs={"image_embeds": img, "text_embeds": txt}).sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_real_controlnet_has_the_hint_encoder_on_the_meta_device():
    config = json.loads((CONFIGS / "kandinsky-2-2-controlnet-depth.unet.json").read_text())
    with torch.device("meta"):
        unet = UNet(UNetConfig.from_dict(config))
    hint = sum(p.numel() for p in unet.add_embedding.input_hint_block.parameters())
    assert unet.config.takes_hint and unet.config.version == "2.2" and unet.config.image_embed_dim == 1280
    assert hint == 358_100 and unet.conv_in.in_channels == 8  # 1_253_057_288 + 358_100 + 4 * 384 * 9 = the total


@pytest.mark.parametrize("shape", [(2, 4, 8, 8), (1, 4, 8, 16)])
def test_controlnet_forward_equals_diffusers(shape):
    """The hint (3 channels at 8x the latent size) is encoded and joins the latents, as diffusers does."""
    import tiny

    ref = tiny.tiny_controlnet_unet_22().eval()
    with torch.device("meta"):
        ours = UNet(UNetConfig.from_dict(dict(ref.config)))
    ours.load_state_dict(ref.state_dict(), assign=True)
    g = torch.Generator().manual_seed(sum(shape))
    x, emb = torch.randn(shape, generator=g), torch.randn(shape[0], 32, generator=g)
    hint = torch.rand(shape[0], 3, shape[2] * 8, shape[3] * 8, generator=g)
    for t in (999, 500, 1):
        with torch.no_grad():
            got = ours(x, torch.tensor(t), emb, hint=hint)
            want = ref(x, torch.tensor(t), encoder_hidden_states=None,
                       added_cond_kwargs={"image_embeds": emb, "hint": hint}).sample
        assert got.shape == (shape[0], 8, *shape[2:])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the hint matters
        assert not torch.allclose(ours(x, torch.tensor(500), emb, hint=1 - hint), got)
    with pytest.raises(ValueError, match="needs a hint"):
        ours(x, torch.tensor(1), emb)


def test_unsupported_config_is_a_checkpoint_error():
    config = json.loads((CONFIGS / "kandinsky-2-2-decoder.unet.json").read_text())
    with pytest.raises(CheckpointError, match="mid_block_type"):
        UNetConfig.from_dict({**config, "mid_block_type": "UNetMidBlock2DCrossAttn"})
    with pytest.raises(CheckpointError, match="addition_embed_type"):
        UNetConfig.from_dict({**config, "addition_embed_type": "text_time"})


def test_weights_that_do_not_fit_the_config_are_named(decoder22, tmp_path):
    folder = tmp_path / "unet"
    shutil.copytree(decoder22 / "unet", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "layers_per_block": 2}))
    with pytest.raises(CheckpointError, match="does not fit its config: missing"):
        load_unet(folder)


def test_loading_onto_a_missing_device_is_not_called_corruption(decoder22):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(Exception) as raised:
        load_unet(decoder22 / "unet", device="cuda")
    assert "corrupt" not in str(raised.value)

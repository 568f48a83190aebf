"""The public checkpoints as the hub stores them (written in 2023 by older transformers), not as today's
libraries write them: the fixtures carry every known quirk, the loader accepts exactly those, and the modes
that the other test files do not already compare with diffusers are compared here, on the same files."""

import json
import shutil

import numpy as np
import oracle
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_cli import run

from kcli.loading.errors import CheckpointError
from kcli.loading.keys import LEFTOVER_BUFFERS
from kcli.loading.weights import read_tensors
from kcli.models.clip import CLIPText

STEPS = ["--steps", 4, "--prior-steps", 2, "--device", "cpu"]


def gen(seed):
    return torch.Generator("cpu").manual_seed(seed)


def png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def stored(path) -> dict:
    """name -> (dtype, shape) as the file stores it."""
    with safe_open(str(path), "pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


# ---- the fixtures look like the hub's files -------------------------------------------------------------

def test_fixtures_carry_the_hub_quirks(prior22, prior21, decoder21):
    text = stored(prior22 / "text_encoder" / "model.safetensors")
    image = stored(prior22 / "image_encoder" / "model.safetensors")
    assert text["text_model.embeddings.position_ids"] == ("I64", (1, 77))
    assert image["vision_model.embeddings.position_ids"] == ("I64", (1, (224 // 14) ** 2 + 1))
    assert {d for k, (d, _) in image.items() if "position_ids" not in k} == {"F16"}  # image encoder in fp16
    assert {d for k, (d, _) in text.items() if "position_ids" not in k} == {"F32"}  # beside an fp32 text encoder
    mclip = stored(decoder21 / "text_encoder" / "model.safetensors")
    assert mclip["transformer.embeddings.position_ids"][0] == "I64"

    for prior, pad in ((prior22, "<|endoftext|>"), (prior21, "!")):
        tok = prior / "tokenizer"
        assert sorted(p.name for p in tok.iterdir()) == [
            "merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
        config = json.loads((tok / "tokenizer_config.json").read_text())
        assert config["bos_token"]["__type"] == "AddedToken" and config["pad_token"] == pad
        processor = json.loads((prior / "image_processor" / "preprocessor_config.json").read_text())
        assert processor["size"] == 224 and processor["crop_size"] == 224
        assert processor["feature_extractor_type"] == "CLIPFeatureExtractor"


# ---- strict loading with one named tolerance -----------------------------------------------------------

@pytest.fixture
def text_copy(prior22, tmp_path):
    """A writable copy of the 2.2 prior's tokenizer and text encoder."""
    for sub in ("tokenizer", "text_encoder"):
        shutil.copytree(prior22 / sub, tmp_path / sub)
    return tmp_path


def _resave(folder, change):
    path = folder / "text_encoder" / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_leftover_buffers_are_the_only_tolerance():
    assert LEFTOVER_BUFFERS == ("embeddings.position_ids", "embeddings.token_type_ids")


def test_a_file_with_or_without_position_ids_gives_the_same_encoder(prior22, text_copy):
    with_ids = CLIPText.load(prior22)([" a red cat"])
    _resave(text_copy, lambda t: t.pop("text_model.embeddings.position_ids"))  # as today's transformers write
    without = CLIPText.load(text_copy)([" a red cat"])
    for a, b in zip(with_ids, without):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("change,message", [
    (lambda t: t.__setitem__("text_model.embeddings.position_ids", torch.arange(76)[None]),
     "text_model.embeddings.position_ids has shape (1, 76), the config needs (1, 77)"),
    (lambda t: t.__setitem__("text_model.embeddings.token_type_ids", torch.zeros(1, 77, dtype=torch.long)),
     "1 unexpected, e.g. text_model.embeddings.token_type_ids"),  # CLIP has no token types
    (lambda t: t.__setitem__("text_model.embeddings.extra", torch.zeros(3)),
     "1 unexpected, e.g. text_model.embeddings.extra"),
    (lambda t: t.pop("text_projection.weight"), "missing 1 tensor(s), e.g. text_projection.weight"),
])
def test_anything_else_is_refused_in_one_line(text_copy, change, message):
    _resave(text_copy, change)
    with pytest.raises(CheckpointError) as e:
        CLIPText.load(text_copy)
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- pickles stay harmless -----------------------------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (print, ("this ran",))


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pickled_weights_load_through_the_safe_unpickler(tmp_path, zip_format):
    state = {"a.weight": torch.randn(3, 2), "b.ids": torch.arange(4)}
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    got = read_tensors(tmp_path / "pytorch_model.bin", dtype=torch.float16)
    assert got["a.weight"].dtype == torch.float16 and got["b.ids"].dtype == torch.int64
    torch.testing.assert_close(got["a.weight"], state["a.weight"].half())


@pytest.mark.parametrize("zip_format,kind", [(True, "is a PyTorch pickle"), (False, "legacy (non-zip)")])
def test_a_pickle_with_code_is_refused_without_running_it(tmp_path, capfd, zip_format, kind):
    torch.save({"a": Payload()}, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    with pytest.raises(CheckpointError) as e:
        read_tensors(tmp_path / "pytorch_model.bin")
    message = str(e.value)
    assert kind in message and "does not unpickle code" in message and "\n" not in message
    assert "weights_only=False" not in message and "corrupt" not in message  # never advise turning safety off
    assert "this ran" not in capfd.readouterr().out


# ---- the modes the other files do not compare, on these files ------------------------------------------

def _edge_canvas(picture, right):
    """A picture grown to the right by repeating its last column, and the repaint mask (white = new area)."""
    px = png(picture)
    board = np.pad(px, ((0, 0), (0, right), (0, 0)), mode="edge")
    mask = np.zeros(board.shape[:2], np.uint8)
    mask[:, px.shape[1]:] = 255
    return Image.fromarray(board), Image.fromarray(mask)


@pytest.mark.parametrize("version", ["2.2", "2.1"])
def test_outpaint_equals_diffusers_inpaint_of_the_canvas(request, pictures, tmp_path, version):
    prior, decoder = (request.getfixturevalue(f"{n}{version.replace('.', '')}") for n in ("prior", "inpaint"))
    proc = run("outpaint", "sky", "--image", pictures["picture"], "--expand", "right=64", "--seed", 8,
               "--prior", prior, "--decoder", decoder, *STEPS, "--no-paste-back", "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    board, mask = _edge_canvas(pictures["picture"], 64)
    ref = (oracle.combined_22(prior, decoder, kind="KandinskyV22InpaintCombinedPipeline") if version == "2.2"
           else oracle.combined_21(prior, decoder, kind="KandinskyInpaintCombinedPipeline"))
    want = ref("sky", image=board, mask_image=mask, width=192, height=64, num_inference_steps=4,
               prior_num_inference_steps=2, generator=gen(8), output_type="np").images
    oracle.assert_images_match(png(tmp_path / "out.png"), oracle.as_uint8(want)[0])


def _interpolate_then_decode_21(prior, decoder, items, weights, seed, width, height):
    """The 2.1 reference for fuse/vary: the prior's interpolate, then the decoder with the empty text."""
    from diffusers import KandinskyPipeline

    combined = oracle.combined_21(prior, decoder)
    pipe = KandinskyPipeline(text_encoder=combined.text_encoder, tokenizer=combined.tokenizer, unet=combined.unet,
                             scheduler=combined.scheduler, movq=combined.movq)
    pipe.set_progress_bar_config(disable=True)
    g = gen(seed)
    mix = combined.prior_pipe.interpolate(items, weights, num_inference_steps=2, generator=g)
    out = pipe("", image_embeds=mix.image_embeds, negative_image_embeds=mix.negative_image_embeds, width=width,
               height=height, num_inference_steps=4, generator=g, output_type="np").images
    return oracle.as_uint8(out)[0]


def test_fuse_21_equals_diffusers(prior21, decoder21, pictures, tmp_path):
    proc = run("fuse", "красный кот", pictures["picture"], "--weights", "1,3", "--seed", 5, "-W", 128, "-H", 64,
               "--prior", prior21, "--decoder", decoder21, *STEPS, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    want = _interpolate_then_decode_21(prior21, decoder21, ["красный кот", Image.open(pictures["picture"])],
                                       [0.25, 0.75], 5, 128, 64)
    oracle.assert_images_match(png(tmp_path / "out.png"), want)


def test_vary_21_equals_diffusers(prior21, decoder21, pictures, tmp_path):
    proc = run("vary", pictures["square"], "--seed", 6, "--prior", prior21, "--decoder", decoder21, *STEPS,
               "-W", 64, "-H", 64, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    want = _interpolate_then_decode_21(prior21, decoder21, [Image.open(pictures["square"])], [1.0], 6, 64, 64)
    oracle.assert_images_match(png(tmp_path / "out.png"), want)

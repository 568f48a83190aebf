"""Tiny random Kandinsky checkpoints in the real diffusers on-disk layout, written with diffusers' own classes.

The hub cannot be reached here, so the tests make their own checkpoints: the same folders, file names and
config keys as ``kandinsky-community/kandinsky-2-2-prior`` and ``-decoder``, with layers a few channels wide.
Our loaders read them through exactly the code path they use for the real files, and diffusers (the oracle)
reads the same files back from disk.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


# The 256 byte characters of byte-level BPE, in the order GPT-2/CLIP define them.
def _byte_chars() -> list[str]:
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + n)
            n += 1
    return [chr(c) for c in codes]


def _added_token(content: str, lstrip: bool = False) -> dict:
    """A special token as tokenizer_config.json files of 2023 spell it (transformers < 4.30)."""
    return {"content": content, "single_word": False, "lstrip": lstrip, "rstrip": False, "normalized": True,
            "__type": "AddedToken"}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> None:
    """A CLIP BPE tokenizer over the 256 byte characters, no merges: every character is a token.

    Written as the hub's prior repositories hold theirs: ``vocab.json`` + ``merges.txt`` with the old
    ``tokenizer_config.json`` (AddedToken dicts carrying ``"__type"``) and ``special_tokens_map.json``, and no
    ``tokenizer.json`` (today's transformers writes only that).
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = 512
    vocab["<|endoftext|>"] = 513  # the largest id, as in the real vocab: pooling takes the first argmax
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    specials = {"bos_token": _added_token("<|startoftext|>"), "eos_token": _added_token("<|endoftext|>"),
                "unk_token": _added_token("<|endoftext|>"), "pad_token": pad_token}
    _write_json(folder / "tokenizer_config.json", {
        **specials, "add_prefix_space": False, "errors": "replace", "do_lower_case": True,
        "model_max_length": 77, "name_or_path": "openai/clip-vit-large-patch14",
        "special_tokens_map_file": "./special_tokens_map.json", "tokenizer_class": "CLIPTokenizer",
    })
    _write_json(folder / "special_tokens_map.json", {
        k: {f: x for f, x in v.items() if f != "__type"} if isinstance(v, dict) else v for k, v in specials.items()
    })


OLD_PREPROCESSOR = {  # image_processor/preprocessor_config.json of both priors: flat sizes, the old class name
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224,
}


def as_hub_file(folder: Path, dtype: torch.dtype | None = None, token_type_ids: bool = False) -> None:
    """Re-save a transformers component (``text_encoder/``, ``image_encoder/``) as the 2023 hub files are:
    with the int64 ``position_ids`` buffer (1, n) of every embeddings module (and ``token_type_ids`` when
    asked), floating tensors in ``dtype`` (the 2.2 image encoder is fp16), and an old ``config.json``."""
    import re

    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    for key, value in list(tensors.items()):
        m = re.fullmatch(r"(.*embeddings)\.position_embeddings?\.weight", key)
        if m:
            n = value.shape[0]
            tensors[f"{m[1]}.position_ids"] = torch.arange(n, dtype=torch.long)[None]
            if token_type_ids:
                tensors[f"{m[1]}.token_type_ids"] = torch.zeros(1, n, dtype=torch.long)
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, path, metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config["transformers_version"] = "4.30.0.dev0"
    if dtype is not None:
        config["torch_dtype"] = str(dtype).removeprefix("torch.")
    config.pop("dtype", None)
    _write_json(folder / "config.json", config)


PRIOR_PARTS = {  # model_index.json of the kandinsky-2-x-prior repos
    "prior": ("diffusers", "PriorTransformer"),
    "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "image_processor": ("transformers", "CLIPImageProcessor"),
    "scheduler": ("diffusers", "UnCLIPScheduler"),
}
DECODER_22_PARTS = {
    "unet": ("diffusers", "UNet2DConditionModel"),
    "movq": ("diffusers", "VQModel"),
    "scheduler": ("diffusers", "DDPMScheduler"),
}


def _model_index(folder: Path, class_name: str, parts: dict[str, tuple[str, str]]) -> None:
    index = {"_class_name": class_name, "_diffusers_version": "0.42.1"}
    index.update({k: list(v) for k, v in parts.items()})
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def make_prior_22(folder: Path, seed: int = 0, embed_dim: int = 32) -> Path:
    """A tiny ``kandinsky-2-2-prior``: prior, CLIP text and image encoders, tokenizer, image processor, scheduler."""
    from diffusers import PriorTransformer, UnCLIPScheduler
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    folder = Path(folder)
    torch.manual_seed(seed)
    prior = PriorTransformer(
        num_attention_heads=2, attention_head_dim=12, embedding_dim=embed_dim, num_layers=2
    )
    with torch.no_grad():  # diffusers inits clip_std to zeros, which would make every output clip_mean
        prior.clip_mean.copy_(0.1 * torch.randn_like(prior.clip_mean))
        prior.clip_std.copy_(1.0 + 0.1 * torch.randn_like(prior.clip_std))
    prior.save_pretrained(folder / "prior")

    text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=embed_dim, projection_dim=embed_dim,
            intermediate_size=37, layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=3,
            vocab_size=1000, hidden_act="gelu", max_position_embeddings=77,
        )
    )
    text.save_pretrained(folder / "text_encoder")
    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=embed_dim, image_size=224, projection_dim=embed_dim, intermediate_size=37,
            num_attention_heads=4, num_channels=3, num_hidden_layers=3, patch_size=14, hidden_act="gelu",
        )
    )
    vision.save_pretrained(folder / "image_encoder")
    write_clip_tokenizer(folder / "tokenizer")
    _write_json(folder / "image_processor" / "preprocessor_config.json", OLD_PREPROCESSOR)
    as_hub_file(folder / "text_encoder")
    as_hub_file(folder / "image_encoder", dtype=torch.float16)  # stored fp16 beside an fp32 text encoder
    UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="sample", num_train_timesteps=1000,
        clip_sample=True, clip_sample_range=10.0,
    ).save_pretrained(folder / "scheduler")
    _model_index(folder, "KandinskyV22PriorPipeline", PRIOR_PARTS)
    return folder


def tiny_unet_22(embed_dim: int = 32, in_channels: int = 4, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        in_channels=in_channels, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=embed_dim, encoder_hid_dim_type="image_proj", cross_attention_dim=32,
        attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=8,
    )


def tiny_movq(seed: int = 0):
    """Four levels like the real MoVQ, so latents are 1/8 of the image and sizes round to 64 px."""
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(
        block_out_channels=[32, 32, 64, 64],
        down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3,
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        norm_type="spatial", num_vq_embeddings=12, vq_embed_dim=4,
    )


def ddpm_scheduler_config(clip_sample: bool = True) -> dict:
    # As on the hub's kandinsky-2-2-decoder (clip_sample edited to true there; see shared/reference).
    return {
        "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
        "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": clip_sample, "set_alpha_to_one": False,
        "steps_offset": 1, "prediction_type": "epsilon", "thresholding": False,
    }


def make_decoder_22(folder: Path, seed: int = 0, embed_dim: int = 32, in_channels: int = 4,
                    scheduler: dict | None = None) -> Path:
    """A tiny ``kandinsky-2-2-decoder`` (``in_channels=9`` gives the inpainting decoder)."""
    folder = Path(folder)
    tiny_unet_22(embed_dim, in_channels, seed).save_pretrained(folder / "unet")
    tiny_movq(seed + 1).save_pretrained(folder / "movq")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(scheduler or ddpm_scheduler_config(), indent=2)
    )
    name = "KandinskyV22InpaintPipeline" if in_channels == 9 else "KandinskyV22Pipeline"
    _model_index(folder, name, DECODER_22_PARTS)
    return folder


# ---- Kandinsky 2.1 --------------------------------------------------------------------------------------

SENTENCES = [
    "a corgi gliding on the wave", "a red cat, 4k photo", "a lighthouse at dusk", "portrait of a woman",
    "корги скользит по волне", "красный кот, фотография", "маяк в сумерках", "портрет женщины в шляпе",
    "ein Hund auf dem Meer", "eine rote Katze im Garten", "a castle in the mountains", "rain over the city",
]


def write_xlmr_tokenizer(folder: Path) -> None:
    """An XLM-R tokenizer whose sentencepiece model is trained in a second on a few sentences (Latin and
    Cyrillic), saved like the hub's ``kandinsky-2-1/tokenizer``."""
    import io

    import sentencepiece as spm
    from transformers import XLMRobertaTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 4), model_writer=model, vocab_size=120, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
    )
    (folder / "sentencepiece.bpe.model").write_bytes(model.getvalue())
    tok = XLMRobertaTokenizer.from_pretrained(str(folder))  # converts the sentencepiece model
    tok.model_max_length = 512
    tok.save_pretrained(folder)  # tokenizer.json, as on the hub; the configs below are the hub's old ones
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                "pad_token": "<pad>", "cls_token": "<s>", "mask_token": _added_token("<mask>", lstrip=True)}
    _write_json(folder / "tokenizer_config.json", {
        **specials, "model_max_length": 512, "name_or_path": "M-CLIP/XLM-Roberta-Large-Vit-L-14",
        "special_tokens_map_file": None, "tokenizer_class": "XLMRobertaTokenizer",
    })
    specials["mask_token"] = {k: v for k, v in specials["mask_token"].items() if k != "__type"}
    _write_json(folder / "special_tokens_map.json", specials)


def make_prior_21(folder: Path, seed: int = 0, embed_dim: int = 24) -> Path:
    """A tiny ``kandinsky-2-1-prior``: as the 2.2 one, with CLIP ViT-L's quick_gelu and '!' padding."""
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    folder = make_prior_22(folder, seed, embed_dim)
    for sub, cls in (("text_encoder", CLIPTextModelWithProjection), ("image_encoder", CLIPVisionModelWithProjection)):
        config = json.loads((folder / sub / "config.json").read_text())
        inner = config.get("text_config") or config
        inner["hidden_act"] = "quick_gelu"
        config["hidden_act"] = "quick_gelu"
        config.pop("torch_dtype", None)
        torch.manual_seed(seed + 5)
        model = cls(cls.config_class.from_dict(config))
        model.save_pretrained(folder / sub)
        as_hub_file(folder / sub)  # the 2.1 prior's encoders are fp32 with their position_ids
    import shutil

    shutil.rmtree(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer", pad_token="!")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "KandinskyPriorPipeline"
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def ddim_scheduler_config() -> dict:
    # kandinsky-2-1/scheduler/scheduler_config.json
    return {
        "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "linear",
        "beta_start": 0.00085, "beta_end": 0.012, "clip_sample": False, "set_alpha_to_one": False,
        "steps_offset": 1, "prediction_type": "epsilon", "thresholding": False,
    }


def make_decoder_21(folder: Path, seed: int = 0, embed_dim: int = 24, in_channels: int = 4) -> Path:
    """A tiny ``kandinsky-2-1`` (``in_channels=9``: ``-inpaint``): M-CLIP text encoder, XLM-R tokenizer,
    text+image conditioned UNet, MoVQ, DDIM."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.kandinsky.text_encoder import MCLIPConfig, MultilingualCLIP

    folder = Path(folder)
    torch.manual_seed(seed)
    UNet2DConditionModel(
        in_channels=in_channels, out_channels=8, addition_embed_type="text_image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=20, encoder_hid_dim_type="text_image_proj", cross_attention_dim=embed_dim,
        attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=8,
    ).save_pretrained(folder / "unet")
    tiny_movq(seed + 1).save_pretrained(folder / "movq")
    torch.manual_seed(seed + 2)
    MultilingualCLIP(MCLIPConfig(
        numDims=embed_dim, transformerDimensions=20, hidden_size=20, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=200, max_position_embeddings=100,
    )).save_pretrained(folder / "text_encoder")
    as_hub_file(folder / "text_encoder")  # transformer.embeddings.position_ids (1, n), as in the hub's file
    write_xlmr_tokenizer(folder / "tokenizer")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(ddim_scheduler_config(), indent=2))
    _model_index(
        folder, "KandinskyInpaintPipeline" if in_channels == 9 else "KandinskyPipeline",
        {
            "text_encoder": ("kandinsky", "MultilingualCLIP"),
            "tokenizer": ("transformers", "XLMRobertaTokenizer"),
            "unet": ("diffusers", "UNet2DConditionModel"),
            "movq": ("diffusers", "VQModel"),
            "scheduler": ("diffusers", "DDIMScheduler"),
        },
    )
    return folder


OPEN_CLIP_CONFIG = {  # a ViT CLIP of open_clip's own kind, a few channels wide (the real ViT-L-14 is 1024 wide)
    "model_cfg": {
        "embed_dim": 16, "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                       "interpolation": "bicubic", "resize_mode": "shortest"},
}


def make_open_clip(folder: Path, seed: int = 0, pickle_too: bool = False) -> Path:
    """A random open_clip model in its hub layout: ``open_clip_config.json`` + ``open_clip_model.safetensors``
    (and, like the real repositories, a pickled copy when asked)."""
    import logging

    import open_clip
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CONFIG, indent=1))
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # "no weights found, initialized randomly": that is the point
    try:
        model = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
    finally:
        logging.disable(logging.NOTSET)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "open_clip_model.safetensors")
    if pickle_too:
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    return folder


# ---- Kandinsky 2.2 depth ControlNet ---------------------------------------------------------------------

def tiny_controlnet_unet_22(embed_dim: int = 32, seed: int = 0):
    """The 2.2 decoder UNet with the hint encoder (``addition_embed_type "image_hint"``, 4 + 4 input channels)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=8, out_channels=8, addition_embed_type="image_hint",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        encoder_hid_dim=embed_dim, encoder_hid_dim_type="image_proj", cross_attention_dim=32,
        attention_head_dim=4, resnet_time_scale_shift="scale_shift", class_embed_type=None, norm_num_groups=8,
    )
    with torch.no_grad():  # at the default init eight convolutions shrink the hint to ~1e-2: nothing a test could
        for layer in unet.add_embedding.input_hint_block:  # see. Three times the weights make features of std ~2
            if isinstance(layer, torch.nn.Conv2d):
                layer.weight.mul_(3.0)
    return unet


def make_controlnet_22(folder: Path, seed: int = 0, embed_dim: int = 32, scheduler: dict | None = None) -> Path:
    """A tiny ``kandinsky-2-2-controlnet-depth``: hint UNet, MoVQ (latents 1/8, as the hint encoder needs), DDPM."""
    folder = Path(folder)
    tiny_controlnet_unet_22(embed_dim, seed).save_pretrained(folder / "unet")
    tiny_movq(seed + 1).save_pretrained(folder / "movq")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(scheduler or ddpm_scheduler_config(), indent=2)
    )
    _model_index(folder, "KandinskyV22ControlnetPipeline", DECODER_22_PARTS)
    return folder


def make_depth_model(folder: Path, seed: int = 0) -> Path:
    """A random DPT depth estimator a few channels wide, saved by transformers like ``Intel/dpt-large``
    (config.json, preprocessor_config.json, model.safetensors)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    folder = Path(folder)
    torch.manual_seed(seed)
    DPTForDepthEstimation(DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=37, image_size=64,
        patch_size=16, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
    )).save_pretrained(folder)
    DPTImageProcessor(size={"height": 64, "width": 64}, keep_aspect_ratio=False).save_pretrained(folder)
    return folder

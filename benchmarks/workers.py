"""What runs in each child process: one measurement, returned as a JSON-able dict."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from common import OFFLOAD_MODES, PROMPT
from fixtures import build_checkpoints


def _torch_setup(spec: dict):
    """(device, dtype, sync) of a worker's spec; sync waits for queued GPU work (a no-op on the CPU)."""
    import torch

    device = torch.device(spec["device"])
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec["dtype"]]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return device, dtype, sync


def _median_time(fn, repeat: int, sync) -> dict:
    """One warm-up call, then ``repeat`` timed ones."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(times), "times": times}


def worker_build(spec: dict) -> dict:
    build_checkpoints(Path(spec["root"]), spec["tiny"])
    return {}


def worker_load(spec: dict) -> dict:
    _, _, sync = _torch_setup(spec)
    if spec["impl"] == "ours":
        from kcli.pipelines import Kandinsky

        t0 = time.perf_counter()
        Kandinsky.open(prior=spec["prior"], decoder=spec["decoder"], device=spec["device"], dtype=spec["dtype"])
    else:
        from diffusers_generate import load_pipeline

        t0 = time.perf_counter()
        load_pipeline(spec["prior"], spec["decoder"], spec["dtype"], spec["device"])
    sync()
    return {"seconds": time.perf_counter() - t0}


def worker_unet(spec: dict) -> dict:
    """One CFG step: batch 2 latents at size/8, image embeddings, one timestep."""
    import torch

    device, dtype, sync = _torch_setup(spec)
    decoder = Path(spec["decoder"])
    movq_cfg = json.loads((decoder / "movq" / "config.json").read_text())
    unet_cfg = json.loads((decoder / "unet" / "config.json").read_text())
    side = spec["size"] // 2 ** (len(movq_cfg["block_out_channels"]) - 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, movq_cfg["latent_channels"], side, side, generator=g).to(device, dtype)
    emb = torch.randn(2, unet_cfg["encoder_hid_dim"], generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)
    with torch.inference_mode():
        if spec["impl"] == "ours":
            from kcli.pipelines.decoder import DecoderStage
            from kcli.pipelines.placement import Placement

            unet = DecoderStage.load(decoder, dtype=dtype, placement=Placement("none", device)).unet
            return _median_time(lambda: unet(x, t, image_embeds=emb), spec["repeat"], sync)
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(decoder / "unet", torch_dtype=dtype).to(device)
        return _median_time(lambda: unet(x, t, encoder_hidden_states=None, added_cond_kwargs={"image_embeds": emb},
                                         return_dict=False), spec["repeat"], sync)


def worker_prior(spec: dict) -> dict:
    """One CFG prior step: batch 2, 77 text tokens (10 of them real), one timestep."""
    import torch

    device, dtype, sync = _torch_setup(spec)
    folder = Path(spec["prior"]) / "prior"
    cfg = json.loads((folder / "config.json").read_text())
    d, tokens = cfg["embedding_dim"], cfg["num_embeddings"]
    g = torch.Generator().manual_seed(0)
    x, proj = (torch.randn(2, d, generator=g).to(device, dtype) for _ in range(2))
    hidden = torch.randn(2, tokens, d, generator=g).to(device, dtype)
    mask = (torch.arange(tokens) < 10).expand(2, tokens).to(device)
    with torch.inference_mode():
        if spec["impl"] == "ours":
            from kcli.models.prior import load_prior

            prior = load_prior(folder, dtype=dtype, device=device)  # as PriorStage.load does
            return _median_time(lambda: prior(x, 500, proj, hidden, mask), spec["repeat"], sync)
        from diffusers import PriorTransformer

        prior = PriorTransformer.from_pretrained(folder, torch_dtype=dtype).to(device)
        return _median_time(lambda: prior(x, timestep=500, proj_embedding=proj, encoder_hidden_states=hidden,
                                          attention_mask=mask), spec["repeat"], sync)


def worker_movq(spec: dict) -> dict:
    """One MoVQ decode of a (1, 4, size/8, size/8) latent, in the dtype each pipeline decodes in."""
    import torch

    device, dtype, sync = _torch_setup(spec)
    decoder = Path(spec["decoder"])
    cfg = json.loads((decoder / "movq" / "config.json").read_text())
    side = spec["size"] // 2 ** (len(cfg["block_out_channels"]) - 1)
    z = torch.randn(1, cfg["latent_channels"], side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        if spec["impl"] == "ours":
            from kcli.pipelines.decoder import DecoderStage
            from kcli.pipelines.placement import Placement

            movq = DecoderStage.load(decoder, dtype=dtype, placement=Placement("none", device)).movq
            z = z.to(device, movq.dtype)
            return _median_time(lambda: movq.decode(z), spec["repeat"], sync)
        from diffusers import VQModel

        movq = VQModel.from_pretrained(decoder / "movq", torch_dtype=dtype).to(device)
        z = z.to(device, dtype)
        return _median_time(lambda: movq.decode(z, force_not_quantize=True, return_dict=False), spec["repeat"], sync)


def worker_offload(spec: dict) -> dict:
    """CUDA only: seconds for one image (the second of two) and peak VRAM over the whole run, per offload mode."""
    import torch

    device, _, sync = _torch_setup(spec)
    mode, size = spec["mode"], spec["size"]
    if spec["impl"] == "ours":
        from kcli.pipelines import Kandinsky, TextToImage

        k = Kandinsky.open(prior=spec["prior"], decoder=spec["decoder"], device=spec["device"], dtype=spec["dtype"],
                           offload=mode)
        request = TextToImage(PROMPT, seed=0, width=size, height=size, steps=spec["steps"],
                              prior_steps=spec["prior_steps"])

        def image():
            return next(k.run(request)).image
    else:
        from diffusers_generate import generate, load_pipeline

        pipe = load_pipeline(spec["prior"], spec["decoder"], spec["dtype"], device=None)
        if mode == "none":
            pipe.to(device)
        else:
            getattr(pipe, OFFLOAD_MODES[mode])(device=device)

        def image():
            return generate(pipe, PROMPT, steps=spec["steps"], prior_steps=spec["prior_steps"], width=size,
                            height=size, seed=0)
    image()  # warm-up: CUDA kernels chosen, our zero embedding cached, offload order learned
    sync()
    t0 = time.perf_counter()
    image()
    sync()
    return {"seconds": time.perf_counter() - t0, "peak_vram": torch.cuda.max_memory_allocated(device)}


def worker_batched(spec: dict) -> dict:
    """Ours only: ``-n 4`` made 4 images per UNet call (``--batch 4``) and one at a time (``--batch 1``, what 4
    single runs do), alternating, after a warm-up of each; seconds for the 4 images, the median of ``repeat``."""
    from kcli.pipelines import Kandinsky, TextToImage

    _, _, sync = _torch_setup(spec)
    k = Kandinsky.open(prior=spec["prior"], decoder=spec["decoder"], device=spec["device"], dtype=spec["dtype"])
    size = spec["size"]
    request = TextToImage(PROMPT, seed=0, width=size, height=size, steps=spec["steps"],
                          prior_steps=spec["prior_steps"], num_images=4)
    for batch in (4, 1):  # warm-up: each batch size's kernels are chosen (oneDNN) before anything is timed
        k.batch = batch
        list(k.run(TextToImage(PROMPT, seed=0, width=size, height=size, steps=1, prior_steps=2, num_images=4)))
    times: dict = {4: [], 1: []}
    for _ in range(spec["repeat"]):
        for batch in (4, 1):
            k.batch = batch
            sync()
            t0 = time.perf_counter()
            images = [r.image for r in k.run(request)]
            sync()
            times[batch].append(time.perf_counter() - t0)
            assert len(images) == 4
    return {"seconds": statistics.median(times[4]), "batched": statistics.median(times[4]),
            "single": statistics.median(times[1]), "times": {str(b): t for b, t in times.items()}}


WORKERS = {"build": worker_build, "load": worker_load, "unet": worker_unet, "prior": worker_prior,
           "movq": worker_movq, "offload": worker_offload, "batched": worker_batched}

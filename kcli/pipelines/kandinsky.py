"""The Kandinsky object: opens a model once, then runs requests of every kind.

    from kcli.pipelines import Kandinsky, TextToImage
    k = Kandinsky.open("2.2", device="cuda", memory="auto")
    for result in k.run(TextToImage("a corgi gliding on the wave", seed=7, num_images=2)):
        result.image.save(f"corgi-{result.seed}.png")

``open`` takes a model of the registry, hub ids or folders (``prior=``, ``decoder=``) and every setting of
``kcli.pipelines.settings.Loading``; it fetches what the cache lacks, picks the memory level for the device,
and loads. ``run`` takes a request of ``kcli.pipelines.requests`` and yields one ``Result`` per image, as soon
as it is done. Seeds: image i uses seed S+i and is exactly the image a single run with that seed makes; with
``best_of`` N, candidates S+iN .. S+iN+N-1 are made and the best kept. Each image draws from one CPU
generator, prior first, then decoder, in the reference's order, so a seed gives the same picture on any
device and equals diffusers' combined pipelines with ``generator=torch.Generator("cpu").manual_seed(S)``.
The library never prints: it reports to ``events`` (see ``kcli.pipelines.events``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from kcli.errors import KandinskyError
from kcli.pipelines.decoder import DecoderStage, NotFinite, check_decoder_hint
from kcli.pipelines.devices import resolve_device, resolve_dtype
from kcli.pipelines.events import Relay
from kcli.pipelines.memory import choose_memory
from kcli.pipelines.modes import recipe
from kcli.pipelines.placement import Offload, Placement, recovering
from kcli.pipelines.prior import PriorStage
from kcli.pipelines.requests import Request
from kcli.pipelines.settings import Loading, record
from kcli.samplers import decoder_sampler
from kcli.samplers.noise import cpu_generator

SAMPLER_OF = {"DDPMScheduler": "ddpm", "DDIMScheduler": "ddim"}  # the checkpoint's own, by our names
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class Result:
    image: Image.Image
    seed: int
    request: Request  # as made: this image's seed, the final size
    timings: dict[str, float] = field(default_factory=dict)
    score: float | None = None  # CLIP similarity to the prompt, when chosen among candidates (best_of)
    candidates: list[tuple[int, float]] | None = None  # (seed, score) of every candidate, the kept one included
    metadata: dict = field(default_factory=dict)  # how it was made: what an image file records


class Kandinsky:
    def __init__(self, prior: PriorStage, decoder: DecoderStage, placement: Placement, dtype: torch.dtype,
                 load: Loading | None = None, scorer=None, events=None):
        if prior.prior.config.embedding_dim != decoder.embed_dim:
            raise KandinskyError(
                f"the prior makes {prior.prior.config.embedding_dim}-d embeddings but the decoder takes "
                f"{decoder.embed_dim}-d ones: they are not from the same Kandinsky version")
        self.prior, self.decoder, self.placement, self.dtype = prior, decoder, placement, dtype
        self.device = placement.device
        self.load = load or Loading()
        self.scorer = scorer  # what ranks best_of candidates: None is the prior's own CLIP
        self.events = Relay(events)
        self.folders = {"prior": prior.folder, "decoder": decoder.folder}
        self._linear_priors: dict = {}
        self.depth_pictures: dict = {}  # (photo sha256, depth model) -> the depth picture estimated from it
        if scorer is not None:
            placement.attach(scorer.clip.model, streamed=False)  # its attention reads weights directly

    # ---- opening ------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, model: str | None = None, *, events=None, inpainting: bool = False, hinted: bool | None = None,
             **settings) -> Kandinsky:
        """Open ``model`` (a registry name; ``prior=``/``decoder=`` take folders or hub ids) with the settings
        of ``Loading`` (device, dtype, memory, offload, offline, compile, tile, scorer, clip_model).
        ``inpainting`` loads the inpainting decoder first (inpaint and outpaint need it; ``run`` swaps
        decoders when a request needs the other one). ``hinted``: whether the requests to come give hint
        pictures; True picks model 2.2-depth when neither a model nor a decoder is named, and either way the
        decoder is checked against it before any weights load (None: each request is checked when it runs)."""
        if hinted and model is None and settings.get("decoder") is None:
            from kcli.loading.hub import DEPTH_MODEL

            model = DEPTH_MODEL  # a hint picks the depth ControlNet
        load = Loading(model=model, **settings)
        relay = Relay(events)
        device = resolve_device(load.device)
        dtype = resolve_dtype(load.dtype, device)
        memory = choose_memory(load.memory, device)
        if device.type == "cuda" and load.offload is None:
            relay.note(memory.describe())
        offload = Offload.parse(load.offload or memory.offload)
        if load.compile and offload is Offload.SEQUENTIAL:  # the streamer's hooks swap weights under the graph
            raise KandinskyError("--compile does not combine with sequential offload")
        if load.tile is None and memory.tile is not None:
            load = dataclasses.replace(load, tile=memory.tile)
        scorer = _open_scorer(load, device, dtype, offload, relay)
        prior_dir, decoder_dir = _folders(load, inpainting, relay)
        if hinted is not None:
            check_decoder_hint(decoder_dir, hinted)
        placement = Placement(offload, device)
        relay.progress("load", 0, 2)
        prior = PriorStage.load(prior_dir, dtype=dtype, placement=placement)
        relay.progress("load", 1, 2)
        decoder = _load_decoder(decoder_dir, dtype, placement, load)
        relay.progress("load", 2, 2)
        return cls(prior, decoder, placement, dtype, load, scorer, events)

    def _decoder_for(self, request: Request) -> None:
        """Swap in the decoder a request needs (the inpainting one, or not) when the model names one."""
        if request.inpainting == self.decoder.is_inpainting or self.load.decoder is not None:
            return  # a decoder named by the user is used as is (the stage says when it does not fit)
        folder = _folders(self.load, request.inpainting, self.events)[1]
        for model in (self.decoder.unet, self.decoder.movq, self.decoder.text.model if self.decoder.text else None):
            self.placement.release(model)
        self.decoder = None
        self.events.progress("load", 0, 1)
        self.decoder = _load_decoder(folder, self.dtype, self.placement, self.load)
        self.folders["decoder"] = folder
        self.events.progress("load", 1, 1)

    def sibling(self, decoder: str | None = None) -> Kandinsky:
        """This model with its other decoder (the inpainting one, or back) or with ``decoder`` (a folder or hub
        id), sharing the prior, scorer and placement: a server keeps both decoders loaded instead of swapping
        them for every request."""
        load = self.load if decoder is None else dataclasses.replace(self.load, decoder=decoder)
        folder = _folders(load, not self.decoder.is_inpainting, self.events)[1]
        self.events.progress("load", 0, 1)
        stage = _load_decoder(folder, self.dtype, self.placement, load)
        self.events.progress("load", 1, 1)
        other = Kandinsky(self.prior, stage, self.placement, self.dtype, load, None, self.events.listener)
        other.scorer, other._linear_priors, other.depth_pictures = self.scorer, self._linear_priors, self.depth_pictures
        other.folders = {"prior": self.folders["prior"], "decoder": folder}
        return other

    # ---- running ------------------------------------------------------------------------------------------

    @recovering
    def run(self, request: Request, events=None) -> Iterator[Result]:
        """One ``Result`` per image of ``request``, each as soon as it is done. Out of device memory, it ends
        with ``OutOfDeviceMemory`` (images made before it were yielded) and the next request can run."""
        events = Relay(events) if events is not None else self.events
        request.check()
        if request.seed is None:
            request = request.seeded()
            events.note(f"seed: {request.seed}")
        self._decoder_for(request)
        # the step counts this checkpoint's schedules can take, before any work
        decoder_sampler(self.decoder.scheduler_config, request.sampler).timesteps(request.steps)
        how = recipe(self, request, events)
        if how.size.note():
            events.note(how.size.note())
        request, n = how.request, request.best_of
        for i in range(request.num_images):
            if n == 1:
                seed = request.seed + i
                events.image(i + 1, request.num_images, seed, None)
                yield self._image(how, dataclasses.replace(request, seed=seed, num_images=1), events)
                continue
            tries = []
            for j in range(n):
                seed = request.seed + i * n + j
                events.image(i + 1, request.num_images, seed, (j + 1, n))
                tries.append(self._image(how, dataclasses.replace(request, seed=seed, num_images=1, best_of=1),
                                         events))
            events.progress("score", 0, n)
            scores = [self._score(r.image, request.label) for r in tries]
            events.progress("score", n, n)
            best = tries[max(range(n), key=scores.__getitem__)]
            best.score, best.candidates = max(scores), [(r.seed, sc) for r, sc in zip(tries, scores)]
            best.request = dataclasses.replace(best.request, best_of=n)
            best.metadata = self._record(best)
            yield best

    def _image(self, how, s: Request, events) -> Result:
        """One image: a fresh CPU generator from its seed, the recipe's latents, decode, finish."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            latents = how.make(s, cpu_generator(s.seed), events.progress)
            t1 = time.perf_counter()
            events.progress("decode", 0, 1)
            try:
                pixels = how.finish(self.decoder.decode(latents, tile=self.load.tile)[0])
            except NotFinite as e:
                raise KandinskyError(f"{e}: {self.verify_hint}") from None
            events.progress("decode", 1, 1)
        del latents
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # give the next image (or the next program) the memory back
        result = Result(Image.fromarray(pixels), s.seed, s, {"sample": t1 - t0, "decode": time.perf_counter() - t1})
        result.metadata = self._record(result)
        return result

    def _score(self, image, prompt: str) -> float:
        if self.scorer is None:
            return self.prior.clip_score(image, prompt)
        with self.placement.on(self.scorer.clip.model):
            return self.scorer(image, prompt)

    def linear_prior(self, s: Request):
        """The fitted linear prior a request names, read once and kept."""
        if s.prior_mode != "linear":
            return None
        if s.linear_prior not in self._linear_priors:
            from kcli.pipelines.linear_prior import LinearPrior

            self._linear_priors[s.linear_prior] = LinearPrior.load(Path(s.linear_prior))
        return self._linear_priors[s.linear_prior]

    # ---- what an image records ----------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        if self.load.model:
            return self.load.model
        return "custom" if self.load.prior or self.load.decoder else _registry_default()

    @property
    def verify_hint(self) -> str:
        """What to run when the weights seem damaged."""
        if self.load.prior or self.load.decoder:
            return ("check the checkpoint folders (`kandinsky models verify NAME` checks a model in the cache "
                    "against its checksums)")
        return f"run `kandinsky models verify {self.model_name}` (it removes damaged files; pull fetches them again)"

    @property
    def scored_by(self) -> str:
        return f"open_clip {self.scorer.name}" if self.scorer is not None else "the prior's CLIP"

    def _record(self, result: Result) -> dict:
        import kcli

        s = result.request
        named = self.load.model or (None if self.load.prior or self.load.decoder else _registry_default())
        load = {"model": named, "prior": self.load.prior, "decoder": self.load.decoder, "dtype": DTYPE_NAMES.get(self.dtype)}
        meta = {
            "mode": s.mode, **record(s), "load": {k: v for k, v in load.items() if v is not None},
            "model": self.model_name,
            "checkpoints": {"prior": self.load.prior, "decoder": self.load.decoder,
                            "prior_path": str(self.folders["prior"]), "decoder_path": str(self.folders["decoder"]),
                            "version": self.decoder.version},
            "sampler": s.sampler or SAMPLER_OF.get(self.decoder.scheduler_config.get("_class_name"), "default"),
            "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
            "offload": self.placement.mode.value,
            "versions": {"kandinsky": kcli.__version__, "torch": torch.__version__},
            "timings": {k: round(v, 3) for k, v in result.timings.items()},
        }
        if result.score is not None:
            meta["score"] = {"clip": round(result.score, 5), "by": self.scored_by, "best_of": len(result.candidates),
                             "candidates": [[seed, round(sc, 5)] for seed, sc in result.candidates]}
        return meta


def _registry_default() -> str:
    from kcli.loading.registry import load_registry

    return load_registry().default


def _folders(load: Loading, inpainting: bool, events) -> tuple[Path, Path]:
    from kcli.loading.hub import resolve_checkpoints

    return resolve_checkpoints(load.model, load.prior, load.decoder, inpainting=inpainting, offline=load.offline,
                               progress=events)


def _load_decoder(folder: Path, dtype: torch.dtype, placement: Placement, load: Loading) -> DecoderStage:
    decoder = DecoderStage.load(folder, dtype=dtype, placement=placement)
    if load.compile:
        decoder.unet = torch.compile(decoder.unet)
    return decoder


def _open_scorer(load: Loading, device: torch.device, dtype: torch.dtype, offload: Offload, events):
    """The open_clip scorer (``scorer="openclip"``), fetched and built before the big models load, so a bad name
    fails at once; under offload it waits in CPU memory and visits the device only to score."""
    if load.scorer not in ("prior", "openclip"):
        raise KandinskyError(f"unknown scorer {load.scorer!r}: use prior or openclip")
    if load.scorer == "prior":
        return None
    from kcli.models.openclip import DEFAULT
    from kcli.pipelines.scoring import Scorer

    where = device if offload is Offload.NONE else torch.device("cpu")
    return Scorer.load(load.clip_model or DEFAULT, device=where, dtype=dtype, offline=load.offline, progress=events)

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
from kcli.pipelines.batching import Unit, chunks, group_key, images_per_call, units
from kcli.pipelines.decoder import DecoderStage, NotFinite, check_decoder_hint
from kcli.pipelines.devices import resolve_device, resolve_dtype
from kcli.pipelines.events import Relay
from kcli.pipelines.memory import check_plan, plan_memory
from kcli.pipelines.modes import Recipe, recipe
from kcli.pipelines.placement import Offload, Placement
from kcli.pipelines.prior import PriorStage
from kcli.pipelines.requests import Request
from kcli.pipelines.settings import Loading, record
from kcli.samplers import decoder_sampler
from kcli.samplers.noise import generators

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
        self.batch = images_per_call(self.device, self.load.batch, placement.mode.value)  # images per UNet call
        self.scorer = scorer  # what ranks best_of candidates: None is the prior's own CLIP
        self.events = Relay(events)
        self.folders = {"prior": prior.folder, "decoder": decoder.folder}
        self._linear_priors: dict = {}
        self.depth_pictures: dict = {}  # (photo sha256, depth model) -> the depth picture estimated from it
        self.memory = None  # memory.MemoryChoice, as open planned it
        decoder.tile = self.load.tile  # encode in tiles as decode does
        if scorer is not None:
            placement.attach(scorer.clip.model, streamed=False)  # its attention reads weights directly

    # ---- opening ------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, model: str | None = None, *, events=None, inpainting: bool = False, hinted: bool | None = None,
             sizes: list[tuple[int, int]] | None = None, zero_embed: bool = True, **settings) -> Kandinsky:
        """Open ``model`` (a registry name; ``prior=``/``decoder=`` take folders or hub ids) with the settings
        of ``Loading`` (device, dtype, memory, vram, offload, offline, compile, tile, scorer, clip_model).
        ``inpainting`` loads the inpainting decoder first (inpaint and outpaint need it; ``run`` swaps
        decoders when a request needs the other one). ``hinted``: whether the requests to come give hint
        pictures; True picks model 2.2-depth when neither a model nor a decoder is named, and either way the
        decoder is checked against it before any weights load (None: each request is checked when it runs).
        ``sizes`` (width, height): what the memory plan is made for (default 1024x1024), for as many images
        per UNet call as the device takes (``batching``); a plan that fits nowhere ends here, before any
        weights load.
        ``zero_embed``: make the zero-image embedding (what a request without a negative prompt needs) before
        the decoder loads, when it is not cached yet, so that its 1.8B-parameter image encoder never shares
        memory with the decoder; False leaves it to the first request that needs it."""
        if hinted and model is None and settings.get("decoder") is None:
            from kcli.loading.hub import DEPTH_MODEL

            model = DEPTH_MODEL  # a hint picks the depth ControlNet
        load = Loading(model=model, **settings)
        relay = Relay(events)
        device = resolve_device(load.device)
        dtype = resolve_dtype(load.dtype, device)
        prior_dir, decoder_dir = _folders(load, inpainting, relay)
        if hinted is not None:
            check_decoder_hint(decoder_dir, hinted)
        batch = images_per_call(device, load.batch)  # planned for a full batch; if only offload fits, for one image
        memory = plan_memory(load, device, dtype, prior_dir, decoder_dir, sizes, batch, relay)
        if batch > 1 and load.batch is None and memory.offload != "none":
            memory = plan_memory(load, device, dtype, prior_dir, decoder_dir, sizes, 1, relay)
        if device.type == "cuda" and load.offload is None:
            relay.note(memory.describe())
        offload = Offload.parse(memory.offload)
        if load.compile and offload is Offload.SEQUENTIAL:  # the streamer's hooks swap weights under the graph
            raise KandinskyError("--compile does not combine with sequential offload")
        if load.tile is None and memory.tile is not None:
            load = dataclasses.replace(load, tile=memory.tile)
        scorer = _open_scorer(load, device, dtype, offload, relay)
        placement = Placement(offload, device)
        relay.progress("load", 0, 2)
        prior = PriorStage.load(prior_dir, dtype=dtype, placement=placement)
        if zero_embed:  # made (once per checkpoint) before the decoder is resident: cold `high` 9.2 -> 6.8 GiB
            with torch.inference_mode():
                prior.zero_embed()
        relay.progress("load", 1, 2)
        decoder = _load_decoder(decoder_dir, dtype, placement, load)
        relay.progress("load", 2, 2)
        k = cls(prior, decoder, placement, dtype, load, scorer, events)
        k.memory = memory
        return k

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
        self.decoder.tile = self.load.tile
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

    def run(self, request: Request, events=None) -> Iterator[Result]:
        """One ``Result`` per image of ``request``, each as soon as it is done. Out of device memory, it ends
        with ``OutOfDeviceMemory`` (images made before it were yielded) and the next request can run."""
        for _, result in self.run_many([request], events, keep_going=False):
            yield result

    def run_many(self, requests: list[Request], events=None,
                 keep_going: bool = True) -> Iterator[tuple[int, Result | Exception]]:
        """The images of several requests as (index of the request, its next ``Result``), each request's in
        order. Consecutive requests that differ only in prompt and seed share UNet calls, up to ``batch``
        images a call (``kcli.pipelines.batching``); each image is still the one its seed makes alone.
        With ``keep_going`` a request that fails gives (index, the exception) once and the others go on;
        otherwise the exception is raised."""
        events = Relay(events) if events is not None else self.events
        start = 0
        while start < len(requests):
            end = start + 1
            if self.batch > 1:
                key = group_key(requests[start])
                while end < len(requests) and group_key(requests[end]) == key:
                    end += 1
            ready = []
            for i in range(start, end):
                try:
                    # out of memory, nothing stays on the device and the error is the one-line hint
                    ready.append((i, self.placement.recovered(self._prepare, requests[i], events)))
                except Exception as e:
                    if not keep_going:
                        raise
                    yield i, e
            yield from self._run_group(ready, events, keep_going)
            start = end

    def _prepare(self, request: Request, events) -> Recipe:
        request.check()
        if request.seed is None:
            request = request.seeded()
            events.note(f"seed: {request.seed}")
        self._decoder_for(request)
        # the step counts this checkpoint's schedules can take, before any work
        decoder_sampler(self.decoder.scheduler_config, request.sampler).timesteps(request.steps)
        how = recipe(self, request, events)
        check_plan(self.memory, (how.size.gen_width, how.size.gen_height))  # before any work
        if how.size.note():
            events.note(how.size.note())
        return how

    def _run_group(self, ready: list[tuple[int, Recipe]], events, keep_going: bool):
        """The images of requests of one recipe (but for prompts and seeds), ``batch`` (or one) at a time."""
        if not ready:
            return
        hows = dict(ready)
        size = self.batch if ready[0][1].batchable else 1
        todo = [u for i, how in ready for u in units(how.request.seed, how.request.num_images, how.request.best_of, i)]
        if min(size, len(todo)) > 1:
            events.note(f"{min(size, len(todo))} images per UNet call")
        failed, tries = set(), {}
        for chunk in chunks(todo, size):
            chunk = [u for u in chunk if u.request not in failed]
            if not chunk:
                continue
            done = []
            try:
                made = self.placement.recovered(self._images, [hows[u.request] for u in chunk], chunk, events)
                for u, result in zip(chunk, made):
                    n = hows[u.request].request.best_of
                    if n == 1:
                        done.append((u.request, result))
                        continue
                    tries.setdefault((u.request, u.image), []).append(result)
                    if len(tries[(u.request, u.image)]) == n:
                        best = self.placement.recovered(self._best, tries.pop((u.request, u.image)),
                                                        hows[u.request].request, events)
                        done.append((u.request, best))
            except Exception as e:
                if not keep_going:
                    raise
                for r in dict.fromkeys(u.request for u in chunk):
                    failed.add(r)
                    done.append((r, e))
            yield from done

    def _images(self, hows: list[Recipe], chunk: list[Unit], events) -> list[Result]:
        """The images of ``chunk`` in one batch: each from a fresh CPU generator of its seed (drawing what its
        single run draws), the recipe's latents, then each decoded and finished on its own."""
        made = [dataclasses.replace(how.request, seed=u.seed, num_images=1, best_of=1) for how, u in zip(hows, chunk)]
        for how, u in zip(hows, chunk):
            n = how.request.best_of
            events.image(u.image + 1, how.request.num_images, u.seed, (u.candidate + 1, n) if n > 1 else None)
        results = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            latents = hows[0].make(made, generators([u.seed for u in chunk]), events.progress)
            t1 = sample = time.perf_counter()
            for row, (how, s) in enumerate(zip(hows, made)):
                events.progress("decode", 0, 1)
                try:
                    pixels = how.finish(self.decoder.decode(latents[row:row + 1], tile=self.load.tile)[0])
                except NotFinite as e:
                    raise KandinskyError(f"{e}: {self.verify_hint}") from None
                events.progress("decode", 1, 1)
                t2 = time.perf_counter()
                results.append(Result(Image.fromarray(pixels), s.seed, s,
                                      {"sample": (sample - t0) / len(made), "decode": t2 - t1}))
                results[-1].metadata = self._record(results[-1])
                t1 = t2
        del latents
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # give the next image (or the next program) the memory back
        return results

    def _best(self, tries: list[Result], request: Request, events) -> Result:
        """The candidate whose picture is closest to the prompt (CLIP), with every candidate's score."""
        n = len(tries)
        events.progress("score", 0, n)
        scores = [self._score(r.image, request.label) for r in tries]
        events.progress("score", n, n)
        best = tries[max(range(n), key=scores.__getitem__)]
        best.score, best.candidates = max(scores), [(r.seed, sc) for r, sc in zip(tries, scores)]
        best.request = dataclasses.replace(best.request, best_of=n)
        best.metadata = self._record(best)
        return best

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

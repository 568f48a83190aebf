"""Out of device memory in any stage ends that job with the hint, leaves nothing of it on the device (counted
with the tracker: on the CPU the CPU is the device), and the next job runs and makes its normal image."""

import numpy as np
import pytest
import torch

from kcli.errors import OutOfDeviceMemory
from kcli.pipelines import ImageToImage, Kandinsky, TextToImage
from kcli.pipelines.decoder import DecoderStage
from kcli.pipelines.memtrack import DeviceMemory
from kcli.pipelines.offload import HostPins, _owners
from kcli.pipelines.placement import Placement
from kcli.pipelines.prior import PriorStage

# the stage -> the model whose blocks fail in it (the image encoder is loaded during the job: see _arm)
STAGES = {
    "text encode": lambda k: k.prior.text.model,
    "prior": lambda k: k.prior.prior,
    "zero embedding": None,
    "unet": lambda k: k.decoder.unet,
    "movq decode": lambda k: k.decoder.movq.decoder,
    "movq encode": lambda k: k.decoder.movq.encoder,
}


def _open(prior22, decoder22, offload: str) -> Kandinsky:
    locked = {}
    pins = HostPins(lambda ptr, size: locked.setdefault(ptr, size) > 0, locked.pop)
    placement = Placement(offload, torch.device("cpu"), pins=pins)
    prior = PriorStage.load(prior22, dtype=torch.float32, placement=placement)
    decoder = DecoderStage.load(decoder22, dtype=torch.float32, placement=placement)
    return Kandinsky(prior, decoder, placement, torch.float32)


def _request(stage: str, pictures):
    if stage == "movq encode":
        return ImageToImage("a red cat", init=pictures["square"], strength=0.5, seed=3, width=64, height=64, steps=1,
                            prior_steps=1)
    return TextToImage("a red cat", seed=3, width=64, height=64, steps=1, prior_steps=1)


def fail_once(model: torch.nn.Module, calls: list, at: int = 3) -> list:
    """The ``at``-th block of ``model`` to run raises CUDA's out-of-memory error, once: half way through a
    pass, with blocks before it done, it on the device and the next one prefetched. ``calls``: the blocks run."""
    hooks = []

    def hook(module, args):
        calls.append(module)
        if len(calls) == at:
            for h in hooks:
                h.remove()
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    hooks.extend(m.register_forward_pre_hook(hook) for m in _owners(model) if not list(m.children()))
    return calls


def _arm(k: Kandinsky, stage: str, monkeypatch) -> list:
    calls = []
    if STAGES[stage] is not None:
        return fail_once(STAGES[stage](k), calls)
    load = PriorStage._load_image_encoder

    def failing_load(self):
        encoder = load(self)
        fail_once(encoder.model, calls)  # the first load only: it fails and is let go
        monkeypatch.setattr(PriorStage, "_load_image_encoder", load)
        return encoder

    monkeypatch.setattr(PriorStage, "_load_image_encoder", failing_load)
    return calls


@pytest.fixture(scope="module")
def normal_images(prior22, decoder22, pictures):
    """Each request's image from a pipeline that never failed (per offload: copies may round differently)."""
    images = {}
    for offload in ("sequential", "none"):
        k = _open(prior22, decoder22, offload)
        for stage in ("unet", "movq encode"):
            images[offload, stage] = np.asarray(next(k.run(_request(stage, pictures))).image)
    return images


def _at_rest(k: Kandinsky) -> None:
    """Nothing of a job on the device: no block copy, every block on its home tensors, no image encoder."""
    assert k.prior._image is None
    for streamer in k.placement.streamers:
        assert streamer.resident == 0
        for block, home in streamer.home.items():
            live = {**block._parameters, **block._buffers}
            assert all(live[n] is home[n] or live[n].data_ptr() == home[n].data_ptr() for n in home)


@pytest.mark.parametrize("stage,offload", [(s, "sequential") for s in STAGES] + [("zero embedding", "none")])
def test_out_of_memory_in_any_stage_ends_the_job_with_the_hint_and_the_next_job_runs(
        prior22, decoder22, pictures, normal_images, tmp_path, monkeypatch, stage, offload):
    monkeypatch.setenv("KANDINSKY_HOME", str(tmp_path))  # a cold cache: the first job makes the zero embedding
    k = _open(prior22, decoder22, offload)
    request = _request(stage, pictures)
    pinned = k.placement.pinned_bytes
    calls = _arm(k, stage, monkeypatch)
    with DeviceMemory("cpu", fused_attention=False) as mem:  # real attention: a real image
        with pytest.raises(OutOfDeviceMemory, match="out of GPU memory: try a lower --memory level") as failed:
            list(k.run(request))
        assert len(calls) == 3, "the failure was not injected"
        assert failed.value.__context__ is None and failed.value.__cause__ is None  # it holds no stage's frames
        left_by_failure = mem.current
        _at_rest(k)
        assert k.placement.pinned_bytes == pinned
        (result,) = k.run(request)
        left_by_success = mem.current
    _at_rest(k)
    want = normal_images[offload, "movq encode" if stage == "movq encode" else "unet"]
    assert np.array_equal(np.asarray(result.image), want)
    assert left_by_failure <= left_by_success, (left_by_failure, left_by_success)


def test_a_batch_job_out_of_memory_is_reported_with_the_hint_and_the_next_job_is_made(
        prior22, decoder22, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kcli.cli import app
    from kcli.models.unet import UNet

    forward = UNet.forward
    failures = []

    def fails_once(self, *args, **kwargs):
        if not failures:
            failures.append(1)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(UNet, "forward", fails_once)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse\na red cat\n")
    result = CliRunner().invoke(app, ["generate", "--prompts-file", str(prompts), "--prior", str(prior22),
                                      "--decoder", str(decoder22), "--device", "cpu", "--offload", "sequential",
                                      "--steps", "1", "--prior-steps", "1", "-W", "64", "-H", "64",
                                      "-o", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if "out of GPU memory" in line]
    assert errors and "try a lower --memory level (balanced, low or min)" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    made = list((tmp_path / "out").glob("*.png"))
    assert len(made) == 1 and "red-cat" in made[0].name


def test_on_a_gpu_the_cache_is_emptied_after_the_failed_stage_let_go_of_its_memory(monkeypatch):
    """The order that gives the memory back: the failed job's tensors die first, then the cache is emptied
    (a CUDA placement, with the allocator's call recorded: no GPU needed)."""
    import weakref

    from kcli.pipelines.placement import recovering

    freed, emptied = [], []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(bool(freed)))

    class Job:
        placement = Placement("model", torch.device("cuda"))

        @recovering
        def run(self):
            yield 1
            activations = torch.zeros(1000)  # what a stage holds when it runs out of memory
            weakref.finalize(activations, freed.append, True)
            raise torch.OutOfMemoryError("CUDA out of memory")

    job = Job().run()
    assert next(job) == 1
    with pytest.raises(OutOfDeviceMemory):
        next(job)
    assert emptied == [True]  # once, after the stage's tensors were gone

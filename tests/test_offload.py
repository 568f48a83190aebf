"""Offload logic, on the CPU and the meta device: each block's weights are on a device copy for its forward only,
results are unchanged, the next block is prefetched, at most two blocks' weights are on the device (measured with
the tracker on the full-size models), pinned host memory is the weights' size and is given back on release."""

import weakref
from pathlib import Path

import pytest
import torch

from kcli.models.unet import load_unet
from kcli.pipelines.memtrack import DeviceMemory
from kcli.pipelines.offload import HostPins, ModelOffload, NoStreams, Streamer, _tensors
from kcli.pipelines.placement import Placement

CONFIGS = Path(__file__).parent / "data" / "configs"


class FakeLocks:
    """Stands in for cudaHostRegister / cudaHostUnregister: which host ranges are locked now."""

    def __init__(self):
        self.locked: dict[int, int] = {}

    def register(self, ptr: int, size: int) -> bool:
        assert ptr not in self.locked
        self.locked[ptr] = size
        return True

    def unregister(self, ptr: int) -> None:
        del self.locked[ptr]

    def pins(self) -> HostPins:
        return HostPins(self.register, self.unregister)


def _live(block):
    return dict(_tensors(block))


def test_streamer_puts_each_block_on_the_device_for_its_forward_only(decoder22):
    unet = load_unet(decoder22 / "unet")
    x, t, emb = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 32)
    with torch.no_grad():
        want = unet(x, t, emb)
    streamer = Streamer(unet, torch.device("cpu"))
    seen, resident = [], []

    def check(block, args):  # runs after the streamer's own pre-hook
        home = streamer.home[block]
        seen.append(all(_live(block)[n].data_ptr() != home[n].data_ptr() for n in home))
        resident.append(streamer.resident)

    for block in streamer.blocks:
        block.register_forward_pre_hook(check)
    with torch.no_grad():
        got = unet(x, t, emb)
    torch.testing.assert_close(got, want)
    assert seen and all(seen), "a block ran on its home copy"
    for block in streamer.blocks:  # after the forward, every block is back home
        for n, home in streamer.home[block].items():
            assert _live(block)[n].data_ptr() == home.data_ptr()
    first_pass = streamer.loads
    assert first_pass == len(seen)  # nothing to prefetch yet: one transfer per block run
    for _ in range(2):
        resident.clear()
        with torch.no_grad():
            torch.testing.assert_close(unet(x, t, emb), want)
    # from then on every block is prefetched while the one before it runs, and no transfer is wasted
    assert streamer.loads - first_pass == 2 * first_pass + 1  # + the next pass's first block, on its way
    sizes = sorted((size for _, size in streamer.layout.values()), reverse=True)
    assert max(resident) <= sizes[0] + sizes[1]
    assert sum(r > size for r, size in zip(resident, [streamer.layout[b][1] for b in streamer.blocks])) > 0
    streamer.evict()
    assert streamer.resident == 0


MODELS = ["unet", "prior", "movq decode", "movq encode", "text encoder", "image encoder"]


class StreamLog(NoStreams):
    """Records what CUDA streams would be told: copies done (events), the compute waiting for one, and the
    copy stream waiting for the compute before copies are dropped (release)."""

    def __init__(self):
        self.log, self.events = [], 0

    def copied(self):
        self.events += 1
        return self.events

    def use(self, event):
        self.log.append(("use", event))

    def release(self):
        self.log.append(("release",))


def test_copies_are_waited_for_before_use_and_dropped_only_after_the_compute_is_ordered_before_reuse(decoder22):
    """The ordering that makes CUDA streaming safe without record_stream: a block runs only after waiting for its
    copy's event, and a copy's memory goes back only after the copy stream was told to wait for the compute that
    read it (the next copy, which may reuse it, is queued after that wait)."""
    log = StreamLog()

    class Watched(Streamer):
        def _load(self, block):
            copy = super()._load(block)
            weakref.finalize(copy.slab.untyped_storage(), log.log.append, ("freed", copy.event))
            return copy

    unet = load_unet(decoder22 / "unet")
    streamer = Watched(unet, torch.device("cpu"), streams=log)
    for block in streamer.blocks:
        block.register_forward_pre_hook(lambda b, a: log.log.append(("run", streamer._running[b].event)))
        block.register_forward_hook(lambda b, a, o: log.log.append(("done", streamer._running[b].event)),
                                    prepend=True)  # before the streamer lets go of the copy
    with torch.no_grad():
        for _ in range(3):
            unet(torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 32))
    streamer.evict()
    entries = log.log
    runs = [i for i, e in enumerate(entries) if e[0] == "run"]
    assert runs and len(runs) % 3 == 0  # three passes
    for i in runs:  # the last wait before a block runs is for that block's copy
        assert next(e for e in reversed(entries[:i]) if e[0] == "use") == ("use", entries[i][1])
    freed = [i for i, e in enumerate(entries) if e[0] == "freed"]
    assert len(freed) == streamer.loads  # every copy was dropped: none is kept beyond its use
    for i in freed:
        event = entries[i][1]
        done = [j for j, e in enumerate(entries[:i]) if e == ("done", event)]
        if done:  # used: a release between its compute and its memory going back
            assert any(e == ("release",) for e in entries[done[-1]:i]), event


def _meta_model(name: str):
    """A full-size 2.2 model that sequential offload streams, on the meta device, with a small input
    (activations far below a block) and the call that runs it."""
    from kcli.models.clip import text_model, vision_model
    from kcli.models.movq import MoVQ, MoVQConfig
    from kcli.models.prior import PriorConfig, PriorTransformer
    from kcli.models.unet import UNet, UNetConfig
    from kcli.pipelines.configured import _json

    def e(*shape, dtype=torch.half):
        return torch.empty(*shape, device="meta", dtype=dtype)

    t, ids = torch.tensor([999, 999]), torch.zeros(1, 77, dtype=torch.long, device="meta")
    with torch.device("meta"):
        if name == "unet":
            m = UNet(UNetConfig.from_dict(_json(CONFIGS / "kandinsky-2-2-decoder.unet.json"))).half().eval()
            return m, lambda: m(e(2, 4, 8, 8), t, image_embeds=e(2, 1280))
        if name == "prior":
            m = PriorTransformer(PriorConfig.from_dict(_json(CONFIGS / "kandinsky-2-2-prior.prior.json"))).half().eval()
            return m, lambda: m(e(2, 1280), t, proj_embedding=e(2, 1280), encoder_hidden_states=e(2, 77, 1280),
                                attention_mask=ids.bool().expand(2, -1))
        if name.startswith("movq"):
            m = MoVQ(MoVQConfig.from_dict(_json(CONFIGS / "movq.json"))).eval()  # fp32, as the pipeline runs it
            if name == "movq decode":
                return m, lambda: m.decode(e(1, 4, 2, 2, dtype=torch.float32))
            return m, lambda: m.encode(e(1, 3, 16, 16, dtype=torch.float32))
        if name == "text encoder":
            m = text_model(_json(CONFIGS / "kandinsky-2-2-prior.text_encoder.json")).half().eval()
            return m, lambda: m(input_ids=ids)
        m = vision_model(_json(CONFIGS / "kandinsky-2-2-prior.image_encoder.json")).half().eval()
        return m, lambda: m(pixel_values=e(1, 3, 224, 224))


@pytest.mark.parametrize("name", MODELS)
def test_sequential_offload_never_holds_more_than_two_blocks_on_the_device(name):
    model, call = _meta_model(name)

    def peak():
        with torch.inference_mode(), DeviceMemory("meta") as mem:
            call()
        return mem.peak

    activations = peak()  # weights made outside the tracker: the same run's activations alone
    streamer = Streamer(model, torch.device("meta"))
    kept = sum(t.nbytes for t in streamer.kept)
    blocks = sorted((size for _, size in streamer.layout.values()), reverse=True)
    try:
        for _ in range(3):  # the first pass learns the order, the next ones prefetch
            streamed = peak() - activations - kept  # activations peak elsewhere: a little below a block
            assert 0.5 * blocks[0] < streamed <= blocks[0] + blocks[1], (streamed, blocks[:2])
    finally:
        streamer.remove()
    assert blocks[0] + blocks[1] < 0.15 * streamer.weights  # two blocks, not the model


def test_packing_pads_the_real_models_by_under_one_percent():
    """What sequential offload pins is the packed weights: within 1% of their bytes for every full-size model."""
    for name in MODELS[:3] + MODELS[4:]:
        model = _meta_model(name)[0]
        streamer = Streamer(model, torch.device("meta"))
        raw = sum(t.nbytes for b in streamer.blocks for _, t in _tensors(b) if t is not None)
        assert raw <= streamer.weights <= 1.01 * raw, name
        streamer.remove()


def test_pinned_memory_is_the_weights_and_is_given_back_on_release(prior22, decoder22):
    from kcli.pipelines.decoder import DecoderStage
    from kcli.pipelines.prior import PriorStage

    locks = FakeLocks()
    placement = Placement("sequential", torch.device("cpu"), pins=locks.pins())
    prior = PriorStage.load(prior22, dtype=torch.float32, placement=placement)
    decoder = DecoderStage.load(decoder22, dtype=torch.float32, placement=placement)
    streamers = {s.root: s for s in placement.streamers}
    assert set(streamers) == {prior.prior, prior.text.model, decoder.unet, decoder.movq}
    weights = sum(s.weights for s in streamers.values())
    assert placement.pinned_bytes == sum(locks.locked.values()) == weights  # one locked buffer per model
    assert len(locks.locked) == 4
    x, t, emb = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 32)
    with torch.no_grad(), placement.on(decoder.unet):
        want = decoder.unet(x, t, emb)
    placement.release(decoder.unet)
    assert placement.pinned_bytes == weights - streamers[decoder.unet].weights and len(locks.locked) == 3
    assert all(not b._forward_pre_hooks and not b._forward_hooks for b in decoder.unet.modules())
    with torch.no_grad():  # a plain CPU module again
        torch.testing.assert_close(decoder.unet(x, t, emb), want)
    for model in (prior.prior, prior.text.model, decoder.movq):
        placement.release(model)
    assert placement.pinned_bytes == 0 and not locks.locked and not placement.streamers


def test_a_buffer_that_cannot_be_locked_stays_pageable_and_works(decoder22):
    pins = HostPins(register=lambda ptr, size: False, unregister=lambda ptr: pytest.fail("nothing was locked"))
    unet = load_unet(decoder22 / "unet")
    x, t, emb = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 32)
    with torch.no_grad():
        want = unet(x, t, emb)
    streamer = Streamer(unet, torch.device("cpu"), pins=pins)
    assert not streamer.pinned and pins.pinned == 0
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, emb), want)
    streamer.remove()


def test_the_zero_embedding_leaves_nothing_pinned_behind(prior22, decoder22, tmp_path, monkeypatch):
    from kcli.pipelines import Kandinsky, TextToImage
    from kcli.pipelines.decoder import DecoderStage
    from kcli.pipelines.prior import PriorStage

    monkeypatch.setenv("KANDINSKY_HOME", str(tmp_path))  # a cold cache: the zero embedding is computed
    locks = FakeLocks()
    placement = Placement("sequential", torch.device("cpu"), pins=locks.pins())
    prior = PriorStage.load(prior22, dtype=torch.float32, placement=placement)
    decoder = DecoderStage.load(decoder22, dtype=torch.float32, placement=placement)
    at_rest = placement.pinned_bytes
    k = Kandinsky(prior, decoder, placement, torch.float32)
    loaded = []
    monkeypatch.setattr(PriorStage, "_load_image_encoder",
                        lambda self, load=PriorStage._load_image_encoder: loaded.append(load(self)) or loaded[-1])
    (result,) = k.run(TextToImage("a cat", seed=1, width=64, height=64, steps=1, prior_steps=1))
    assert result.image.size == (64, 64)
    assert loaded and prior._image is None  # it was loaded, used once, and let go
    assert loaded[0].model not in [s.root for s in placement.streamers]
    assert placement.pinned_bytes == at_rest and len(locks.locked) == 4


def test_model_offload_moves_for_the_stage_and_back():
    moves = []

    class Recorder(torch.nn.Linear):
        def to(self, device):
            moves.append(str(device))
            return self

    a, b = Recorder(2, 2), Recorder(2, 2)
    with ModelOffload(torch.device("cuda")).on(a, None, b):  # Recorder only records: no GPU needed
        assert moves == ["cuda", "cuda"]
    assert moves == ["cuda", "cuda", "cpu", "cpu"]

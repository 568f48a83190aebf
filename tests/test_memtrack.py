"""The device-memory tracker: exact on simple graphs, equal to the allocator on a CPU run, and the peaks of
every memory level on the full-size real configs (built on the meta device: no weights, no GPU)."""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from kcli.models.movq import MoVQ, MoVQConfig
from kcli.pipelines import tiling
from kcli.pipelines.memsim import Configs, measure
from kcli.pipelines.memtrack import DeviceMemory, GiB

CONFIGS = Path(__file__).parent / "data" / "configs"
SMALL_MOVQ = MoVQConfig(block_out_channels=(32, 64), down_attn=(False, True), up_attn=(True, False),
                        norm_num_groups=8, num_vq_embeddings=64, layers_per_block=1)


def test_allocations_views_in_place_ops_and_frees_are_counted_exactly():
    with DeviceMemory("meta") as mem:
        x = torch.empty(1000, device="meta")  # 4000 bytes
        assert mem.current == 4000
        y = x * 2
        v = y.view(10, 100)  # a view: no new storage
        y.add_(1)  # in place: none either
        assert (mem.current, mem.peak) == (8000, 8000)
        del x
        assert mem.current == 4000
        del y
        assert mem.current == 4000  # the view keeps the storage alive, as on a GPU
        del v
        assert mem.current == 0
        z = torch.zeros(3, 4).to("meta")  # a CPU tensor is not on the device until it is moved there
        assert mem.current == z.nbytes == 48
    assert mem.peak == 8000


def test_held_weights_count_once_and_leave_with_drop():
    lin = torch.nn.Linear(256, 128, device="meta")  # 256*128*4 + 128*4 bytes
    weights = 256 * 128 * 4 + 128 * 4
    with DeviceMemory("meta") as mem:
        mem.hold(lin)
        mem.hold(lin, lin.weight)
        assert mem.current == weights
        x = torch.empty(64, 256, device="meta")
        out = lin(x)
        assert mem.peak == weights + x.nbytes + out.nbytes
        mem.drop(lin)
        assert mem.current == x.nbytes + out.nbytes


class _Malloc(TorchDispatchMode):
    """Ground truth on a CPU run: glibc's count of bytes in use, read after every op."""

    def __init__(self, libc):
        super().__init__()
        self.libc = libc
        self.base = self.used()
        self.peak = 0

    def used(self) -> int:
        info = self.libc.mallinfo2()
        return info.uordblks + info.hblkhd

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, self.used() - self.base)
        return out


def _glibc():
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("needs glibc's mallinfo2")
    libc.mallinfo2.restype = MallInfo2
    return libc


@pytest.mark.parametrize("side", [24, 40])
def test_a_cpu_run_peaks_where_the_allocator_does(side):
    libc = _glibc()
    torch.manual_seed(0)
    movq = MoVQ(SMALL_MOVQ).eval()
    z = torch.randn(1, 4, side, side)
    with torch.inference_mode():
        movq.decode(z)  # the first call fills one-time caches (thread pools, kernel plans)
        with _Malloc(libc) as truth:
            movq.decode(z)
        with DeviceMemory("cpu", fused_attention=False) as mem:
            movq.decode(z)
    assert mem.peak == pytest.approx(truth.peak, rel=0.01)


def test_meta_runs_peak_as_cpu_runs_do():
    torch.manual_seed(0)
    movq = MoVQ(SMALL_MOVQ).eval()
    z = torch.randn(1, 4, 48, 48)
    peaks = []
    for device in ("cpu", "meta"):
        m = movq.to(device)
        with torch.inference_mode(), DeviceMemory(device) as mem:
            m.decode(z.to(device, copy=True))  # made on the device in both runs
        peaks.append(mem.peak)
    assert peaks[0] == peaks[1] > 0


def test_remembered_meta_ops_give_the_same_outputs_and_peak():
    from kcli.pipelines import metacache

    with torch.device("meta"):
        movq = MoVQ(SMALL_MOVQ).eval()
    z = torch.empty(2, 4, 40, 24, device="meta")
    runs = []
    metacache._CACHE.clear()
    for _ in range(2):  # the first run fills the cache, the second is made from it
        with torch.inference_mode(), DeviceMemory("meta") as mem:
            out = movq.decode(z)
            x = torch.empty(4, 6, device="meta").t_()  # reshaped in place: run, never remembered
        runs.append((mem.peak, out.shape, out.stride(), out.dtype, x.shape))
        assert metacache._CACHE
    assert runs[0] == runs[1]
    assert runs[0][1] == (2, 3, 80, 48) and runs[0][4] == (6, 4)


def test_fused_attention_keeps_no_score_matrix():
    q = torch.empty(1, 1, 4096, 64, device="meta", dtype=torch.float16)
    peaks = {}
    for fused in (True, False):
        with DeviceMemory("meta", fused_attention=fused) as mem:
            out = F.scaled_dot_product_attention(q, q, q)
        peaks[fused] = mem.peak
        assert out.shape == q.shape
    assert peaks[True] == q.nbytes
    assert peaks[False] >= 4096 * 4096 * 4  # the math path's fp32 scores


def test_the_fp32_movq_decode_at_1024_takes_4_gib_whole_and_under_1_in_tiles():
    movq = Configs.from_folder(CONFIGS).movq
    with torch.device("meta"):
        m = MoVQ(MoVQConfig.from_dict(movq)).eval()
    z = torch.empty(1, 4, 128, 128, device="meta")
    peaks = []
    for decode in (m.decode, lambda z: tiling.decode(m, z)):
        with torch.inference_mode(), DeviceMemory("meta") as mem:
            decode(z)
        peaks.append(mem.peak / GiB)
    assert 3.5 < peaks[0] < 4.5, peaks
    assert peaks[1] < 0.6, peaks


# ---- the memory levels on the real 2.2 configs (fp16, cold: the first run computes the zero embedding) ----

BOUNDS_GIB = {(level, size): bound for level, bound in (("min", 2.5), ("low", 3.0), ("balanced", 6.5))
              for size in (512, 1024)} | {("high", 512): 10.0}


@pytest.fixture(scope="module")
def peaks():
    configs = Configs.from_folder(CONFIGS)
    runs = list(BOUNDS_GIB)
    return {run: measure(configs, run[0], size=run[1], dtype=torch.float16, cold=True) for run in runs}


@pytest.mark.parametrize("run", list(BOUNDS_GIB), ids=lambda r: f"{r[0]}-{r[1]}")
def test_each_level_stays_within_its_bound(peaks, run):
    assert peaks[run].bytes <= BOUNDS_GIB[run] * GiB, (run, peaks[run].bytes / GiB, peaks[run].stage)


def test_levels_order_by_memory(peaks):
    got = [peaks[(level, 512)].bytes for level in ("high", "balanced", "low", "min")]
    assert got == sorted(got, reverse=True), [g / GiB for g in got]
    assert got[0] > 2 * got[1]  # high holds every model; balanced one at a time
    assert got[2] > 2 * got[3]  # min's tiles shrink the decode (a tile of 512 px saved nothing at 512 px)


def test_a_cold_high_run_peaks_with_the_image_encoder_joining_every_model(peaks):
    cold = peaks[("high", 512)]
    assert cold.stage == "zero embed"
    weights_22_fp16 = (1.25 + 1.03 + 0.69 + 1.84 + 0.07 * 2) * 1e9 * 2  # UNet, prior, CLIP text and image, MoVQ fp32
    assert cold.bytes > 0.95 * weights_22_fp16


def test_sequential_offload_holds_at_most_two_blocks_of_weights():
    from kcli.models.unet import UNet, UNetConfig
    from kcli.pipelines.configured import _json
    from kcli.pipelines.offload import Streamer, _owners

    with torch.device("meta"):
        unet = UNet(UNetConfig.from_dict(_json(CONFIGS / "kandinsky-2-2-decoder.unet.json"))).half().eval()
    blocks = sorted((sum(t.nbytes for t in [*b.parameters(recurse=False), *b.buffers(recurse=False)])
                     for b in _owners(unet)), reverse=True)
    root = sum(t.nbytes for t in [*unet.parameters(recurse=False), *unet.buffers(recurse=False)])

    def run():  # the smallest latent, so that activations are small beside the blocks
        x, t = torch.empty(2, 4, 8, 8, device="meta", dtype=torch.half), torch.tensor([999, 999])
        with torch.inference_mode(), DeviceMemory("meta") as mem:
            unet(x, t, image_embeds=torch.empty(2, 1280, device="meta", dtype=torch.half))
        return mem.peak

    activations = run()  # no weights counted: the same run's activations alone
    streamer = Streamer(unet, torch.device("meta"))
    try:
        run()  # learns the order
        streamed = run() - activations - root
    finally:
        streamer.remove()
    assert blocks[0] < streamed <= blocks[0] + blocks[1], (streamed, blocks[:2])


def test_large_pictures_are_encoded_in_tiles_that_shrink_the_peak(monkeypatch):
    from kcli.pipelines.configured import Configs, ConfiguredDecoder
    from kcli.pipelines.memsim import SimPlacement, _maker

    mem = DeviceMemory("meta")
    configs = Configs.from_folder(CONFIGS)
    stage = ConfiguredDecoder(configs, torch.float16, SimPlacement("none", mem), _maker(mem))
    picture = torch.empty(1, 3, 1024, 1024)
    with torch.inference_mode(), mem:
        stage.encode(picture)
    tiled = mem.peak
    monkeypatch.setattr(tiling, "AUTO_TILE_LATENT", 1024)  # never tile
    mem.reset_peak()
    with torch.inference_mode(), mem:
        latents = stage.encode(picture)
    assert latents.shape == (1, 4, 128, 128)
    weights = mem.current - latents.nbytes
    assert tiled - weights < 0.7 * GiB < 2.3 * GiB < mem.peak - weights  # fp32 MoVQ: 0.6 GiB in tiles, 2.5 whole

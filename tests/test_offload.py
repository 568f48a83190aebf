"""Offload logic, on the CPU: each block's weights are on the execution copy for its forward only, results
are unchanged, and the next block is prefetched in the order learned on the first pass."""

import torch

from kcli.models.unet import load_unet
from kcli.pipelines.offload import ModelOffload, Streamer


def test_streamer_puts_each_block_on_the_device_for_its_forward_only(decoder22):
    unet = load_unet(decoder22 / "unet")
    x, t, emb = torch.randn(2, 4, 8, 8), torch.tensor(500), torch.randn(2, 32)
    with torch.no_grad():
        want = unet(x, t, emb)
    streamer = Streamer(unet, torch.device("cpu"), pin=False)
    seen = []

    def check(block, args):  # runs after the streamer's own pre-hook
        home = streamer.home[block]
        live = dict(list(block._parameters.items()) + list(block._buffers.items()))
        seen.append(all(live[n].data_ptr() != home[n].data_ptr() for n in home))

    for block in streamer.blocks:
        block.register_forward_pre_hook(check)
    with torch.no_grad():
        got = unet(x, t, emb)
    torch.testing.assert_close(got, want)
    assert seen and all(seen), "a block ran on its home copy"
    for block in streamer.blocks:  # after the forward, every block is back home
        for n, home in streamer.home[block].items():
            live = block._parameters.get(n, block._buffers.get(n))
            assert live.data_ptr() == home.data_ptr()
    first_pass = streamer.loads
    assert first_pass == len(streamer.order) and len(streamer.order) == len(streamer.blocks)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, emb), want)
    assert streamer.loads == 2 * first_pass  # one transfer per block per pass, prefetched ahead


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

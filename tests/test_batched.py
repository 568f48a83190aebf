"""Several images per UNet call: each image (its latents, its pixels) is the image of its single run."""

import dataclasses

import numpy as np
import pytest
import torch

from kcli.pipelines import ImageToImage, Inpaint, Kandinsky, TextToImage
from kcli.pipelines.batching import group_key, images_per_call
from kcli.samplers.noise import PerImage, cpu_generator, randn


class Spy:
    """Records the latents each decode gets and the rows of each UNet call."""

    def __init__(self, k: Kandinsky):
        self.k, self.latents, self.rows = k, [], []
        decode, unet = k.decoder.decode, k.decoder.unet

        def recording_decode(latents, tile=None):
            self.latents.append(latents.detach().clone())
            return decode(latents, tile)

        self.hook = unet.register_forward_pre_hook(lambda module, args: self.rows.append(args[0].shape[0]))
        k.decoder.decode = recording_decode

    def run(self, requests, batch: int):
        self.latents, self.rows = [], []
        self.k.batch = batch
        out = list(self.k.run_many(requests, keep_going=False))
        return out, self.latents, self.rows


@pytest.fixture(scope="module", params=["2.2", "2.1"])
def spy(request, prior22, decoder22, prior21, decoder21):
    prior, decoder = (prior22, decoder22) if request.param == "2.2" else (prior21, decoder21)
    k = Kandinsky.open(prior=str(prior), decoder=str(decoder), device="cpu")
    s = Spy(k)
    yield s
    s.hook.remove()


def assert_same_images(batched, singles):
    """Result for result: the same seeds and requests; latents equal up to float rounding (a batch changes how
    the CPU kernels block their sums: about 1e-6 of the latents' scale, 1e-4 allowed) and pixels within one
    level where a value sits on a rounding edge (at most 1% of them)."""
    (b_out, b_lat, _), (s_out, s_lat, _) = batched, singles
    assert [(i, r.seed) for i, r in b_out] == [(i, r.seed) for i, r in s_out]
    assert len(b_lat) == len(s_lat)
    for x, y in zip(b_lat, s_lat):
        assert x.shape == y.shape
        assert (x - y).abs().max().item() <= 1e-4 * max(1.0, y.abs().max().item())
    for (_, x), (_, y) in zip(b_out, s_out):
        assert x.request == y.request
        a, b = np.asarray(x.image).astype(int), np.asarray(y.image).astype(int)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() <= 0.01


BASE = {"width": 64, "height": 64, "steps": 3, "prior_steps": 2}


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_n_images_in_one_call_equal_their_single_runs(spy, sampler):
    s = TextToImage("a corgi gliding on the wave", seed=40, num_images=3, sampler=sampler, **BASE)
    batched, singles = spy.run([s], batch=3), spy.run([s], batch=1)
    assert batched[2] == [6] * 3 and singles[2] == [2] * 9  # [uncond; cond] for 3 images, then 1 a call
    assert_same_images(batched, singles)
    assert not torch.equal(batched[1][0], batched[1][1])  # different seeds, different images


def test_negative_prompt_rows_stay_with_their_image(spy):
    s = TextToImage("a red boat", negative="blurry", seed=7, num_images=2, **BASE)
    batched, singles = spy.run([s], batch=2), spy.run([s], batch=1)
    assert batched[2] == [4] * 3
    assert_same_images(batched, singles)


def test_best_of_candidates_run_batched_and_pick_the_same(spy):
    s = TextToImage("a lighthouse at dusk", seed=3, num_images=2, best_of=2, sampler="ddpm", **BASE)
    batched, singles = spy.run([s], batch=3), spy.run([s], batch=1)  # chunks of 3 and 1 across the images
    assert batched[2] == [6] * 3 + [2] * 3
    assert_same_images(batched, singles)
    for (_, x), (_, y) in zip(batched[0], singles[0]):
        assert [c[0] for c in x.candidates] == [c[0] for c in y.candidates] and x.request.best_of == 2
        assert np.allclose([c[1] for c in x.candidates], [c[1] for c in y.candidates], atol=1e-3)


def test_prompts_file_jobs_with_shared_settings_share_calls(spy):
    jobs = [TextToImage("a red cat", seed=11, **BASE), TextToImage("a blue dog", seed=5, num_images=2, **BASE),
            TextToImage("a green frog", seed=99, **BASE)]
    batched = spy.run(jobs, batch=4)
    assert batched[2] == [8] * 3  # all four images of the three jobs in each call
    assert [i for i, _ in batched[0]] == [0, 1, 1, 2]
    singles = ([], [], [])
    for i, job in enumerate(jobs):
        out, lat, _ = spy.run([job], batch=1)
        singles[0].extend((i, r) for _, r in out)
        singles[1].extend(lat)
    assert_same_images(batched, singles)
    assert batched[0][0][1].request.prompt == "a red cat" and batched[0][3][1].request.prompt == "a green frog"


def test_jobs_with_different_settings_are_not_grouped(spy):
    jobs = [TextToImage("a", seed=1, **BASE), TextToImage("b", seed=2, **{**BASE, "steps": 2}),
            TextToImage("c", seed=3, guidance=1.0, **BASE), TextToImage("d", seed=4, negative="x", **BASE),
            TextToImage("e", seed=5, **{**BASE, "width": 128})]
    _, latents, rows = spy.run(jobs, batch=4)
    assert rows == [2, 2, 2] + [2, 2] + [1, 1, 1] + [2, 2, 2] + [2, 2, 2]
    assert [tuple(x.shape[-2:]) for x in latents][-1] != tuple(latents[0].shape[-2:])
    assert len({group_key(j) for j in jobs}) == 5
    assert group_key(jobs[0]) == group_key(dataclasses.replace(jobs[0], prompt="z", seed=8, num_images=3))


def test_image_to_image_batched_equals_single_runs(spy, pictures):
    s = ImageToImage("a watercolour", init=pictures["square"], seed=21, num_images=2, strength=0.6, **BASE)
    batched, singles = spy.run([s], batch=2), spy.run([s], batch=1)
    assert max(batched[2]) == 4
    assert_same_images(batched, singles)


def test_inpainting_batched_equals_single_runs(prior22, inpaint22, pictures):
    k = Kandinsky.open(prior=str(prior22), decoder=str(inpaint22), device="cpu")
    spy = Spy(k)
    s = Inpaint("a hat", image=pictures["picture"], mask=pictures["mask"], seed=2, num_images=2, sampler="ddpm",
                width=128, height=64, steps=3, prior_steps=2)
    batched, singles = spy.run([s], batch=2), spy.run([s], batch=1)
    assert batched[2] == [4] * 3
    assert_same_images(batched, singles)


def test_a_failing_job_fails_alone(spy):
    jobs = [TextToImage("a", seed=1, **BASE), TextToImage("b", seed=2, **{**BASE, "steps": 1001}),
            TextToImage("c", seed=3, **BASE)]
    spy.k.batch = 4
    out = list(spy.k.run_many(jobs))
    assert [i for i, _ in out] == [0, 1, 2]  # three groups: a, b (fails before any work), c
    assert isinstance(dict(out)[1], Exception) and all(not isinstance(r, Exception) for i, r in out if i != 1)


def test_batch_setting_reaches_the_pipeline(prior22, decoder22):
    k = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu", batch=3)
    assert k.batch == 3
    assert images_per_call(torch.device("cuda")) == 4
    assert images_per_call(torch.device("cuda"), offload="sequential") == 1  # the plan is for one image
    assert images_per_call(torch.device("cuda"), 2, offload="model") == 2


def test_per_image_draws_are_each_generators_own():
    g = PerImage([cpu_generator(1), cpu_generator(2)])
    both = randn((4, 3), g)
    one, two = cpu_generator(1), cpu_generator(2)
    assert torch.equal(both, torch.cat([randn((2, 3), one), randn((2, 3), two)]))
    assert torch.equal(randn((2, 3), g), torch.cat([randn((1, 3), one), randn((1, 3), two)]))  # in step after
    with pytest.raises(ValueError):
        randn((3, 3), g)

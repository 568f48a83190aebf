"""The paper's linear prior and the prior modes: the fit is least squares (with ridge), linear mode is
W t + b, none is the CLIP text embedding, and bad inputs end in one line."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import one_line_error, run

from kcli.errors import KandinskyError
from kcli.pipelines.linear_prior import LinearPrior, fit
from kcli.pipelines.placement import Placement
from kcli.pipelines.prior import PriorStage


def synthetic(n=200, d_text=12, d_image=9, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w, b = torch.randn(d_image, d_text, generator=g), torch.randn(d_image, generator=g)
    t = torch.randn(n, d_text, generator=g)
    return t, t @ w.T + b + noise * torch.randn(n, d_image, generator=g), w, b


def test_fit_equals_numpy_least_squares_and_recovers_a_known_map():
    t, i, w, b = synthetic(noise=0.1)
    got = fit(t, i, ridge=0.0)
    design = np.hstack([t.double().numpy(), np.ones((len(t), 1))])
    sol = np.linalg.lstsq(design, i.double().numpy(), rcond=None)[0]  # (d_text + 1, d_image)
    np.testing.assert_allclose(got.weight.numpy(), sol[:-1].T, atol=1e-5)
    np.testing.assert_allclose(got.bias.numpy(), sol[-1], atol=1e-5)
    t, i, w, b = synthetic(noise=0.0)
    exact = fit(t, i, ridge=0.0)
    torch.testing.assert_close(exact.weight, w, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(exact.bias, b, atol=1e-4, rtol=1e-4)


def test_a_singular_gram_gets_numpys_minimum_norm_solution():
    t, i, _, _ = synthetic(n=5, d_text=12)  # 5 pairs for 12 dimensions: the centred gram has rank 4
    got = fit(t, i, ridge=0.0)
    t64, i64 = t.double().numpy(), i.double().numpy()
    tc, ic = t64 - t64.mean(0), i64 - i64.mean(0)
    want = np.linalg.lstsq(tc, ic, rcond=None)[0].T  # numpy's minimum-norm least squares
    np.testing.assert_allclose(got.weight.numpy(), want, atol=1e-4)
    assert torch.isfinite(got.bias).all()


def test_fit_runs_where_the_embeddings_are():
    """A GPU run hands over GPU embeddings: every tensor of the fit is made on their device (the meta device
    stands in for CUDA here: a CPU tensor meeting it fails, as it does on CUDA)."""
    t, i = torch.empty(40, 12, device="meta"), torch.empty(40, 9, device="meta")
    got = fit(t, i)
    assert got.weight.device.type == "meta" and got.weight.shape == (9, 12) and got.bias.shape == (9,)


def test_ridge_shrinks_the_map_and_round_trips_through_a_file(tmp_path):
    t, i, _, _ = synthetic(n=30, noise=0.5)
    plain, shrunk = fit(t, i, 0.0), fit(t, i, 100.0)
    assert shrunk.weight.norm() < plain.weight.norm()
    shrunk.save(tmp_path / "p.safetensors", pairs=30)
    back = LinearPrior.load(tmp_path / "p.safetensors")
    assert torch.equal(back.weight, shrunk.weight) and torch.equal(back.bias, shrunk.bias)
    with pytest.raises(KandinskyError, match="do not pair up"):
        fit(t, i[:-1])


def test_linear_mode_is_w_t_plus_b_and_none_is_the_text_embedding(prior22):
    stage = PriorStage.load(prior22, dtype=torch.float32, placement=Placement("none", torch.device("cpu")))
    text = stage.text(["a red cat", "rain"])[0]
    g = torch.Generator().manual_seed(0)
    lp = LinearPrior(torch.randn(32, 32, generator=g), torch.randn(32, generator=g))
    state = g.get_state()
    image, negative = stage.embed("a red cat", "rain", steps=3, guidance=4.0, generator=g, mode="linear", linear=lp)
    torch.testing.assert_close(image, (lp.weight @ text[0] + lp.bias)[None])
    torch.testing.assert_close(negative, (lp.weight @ text[1] + lp.bias)[None])
    image, negative = stage.embed("a red cat", None, steps=3, guidance=4.0, generator=g, mode="none")
    torch.testing.assert_close(image, text[:1])
    torch.testing.assert_close(negative, stage.zero_embed())
    assert torch.equal(g.get_state(), state), "linear and none modes draw no random numbers"


def _captioned(folder, n=3, caption=True):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(n):
        Image.fromarray((rng.random((40, 50, 3)) * 255).astype(np.uint8)).save(folder / f"cat{k}.png")
        if caption:
            (folder / f"cat{k}.txt").write_text(f"a cat number {k}")
    return folder


def test_prior_fit_and_generate_with_it(prior22, decoder22, tmp_path):
    folder = _captioned(tmp_path / "cats")
    out = tmp_path / "cats.safetensors"
    proc = run("prior", "fit", folder, "--out", out, "--prior", prior22, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert LinearPrior.load(out).weight.shape == (32, 32)
    image = tmp_path / "x.png"
    proc = run("generate", "a cat", "--prior", prior22, "--decoder", decoder22, "--prior-mode", "linear",
               "--linear-prior", out, "--steps", 2, "-W", 64, "-H", 64, "--seed", 1, "-o", image)
    assert proc.returncode == 0, proc.stderr
    assert '"prior_mode": "linear"' in Image.open(image).info["kandinsky"]


@pytest.mark.parametrize("case,expect", [
    ("empty", "has no pictures"),
    ("uncaptioned", "have no caption"),
    ("bad-out", "--out must name a .safetensors file"),
    ("linear-without-file", "--prior-mode linear needs --linear-prior"),
    ("wrong-size-map", "maps 7-d text embeddings"),
])
def test_bad_inputs_end_in_one_line(prior22, decoder22, tmp_path, case, expect):
    if case == "empty":
        (tmp_path / "empty").mkdir()
        proc = run("prior", "fit", tmp_path / "empty", "--out", tmp_path / "p.safetensors", "--prior", prior22)
    elif case == "uncaptioned":
        proc = run("prior", "fit", _captioned(tmp_path / "c", caption=False), "--out", tmp_path / "p.safetensors",
                   "--prior", prior22)
    elif case == "bad-out":
        proc = run("prior", "fit", _captioned(tmp_path / "c"), "--out", tmp_path / "p.bin", "--prior", prior22)
    else:
        args = ["generate", "x", "--prior", prior22, "--decoder", decoder22, "--prior-mode", "linear", "--steps", 1,
                "-o", tmp_path / "x.png"]
        if case == "wrong-size-map":
            LinearPrior(torch.zeros(7, 7), torch.zeros(7)).save(tmp_path / "small.safetensors")
            args += ["--linear-prior", tmp_path / "small.safetensors"]
        proc = run(*args)
    assert expect in one_line_error(proc)
    assert not (tmp_path / "p.safetensors").exists() and not (tmp_path / "x.png").exists()


def test_best_of_keeps_the_candidate_closest_to_the_prompt(prior22, decoder22, tmp_path):
    from dataclasses import replace

    from kcli.pipelines import Kandinsky, TextToImage

    k = Kandinsky.open(prior=str(prior22), decoder=str(decoder22), device="cpu")
    s = TextToImage("a red cat", seed=20, width=64, height=64, steps=2, prior_steps=2)
    (best,) = k.run(replace(s, best_of=3))
    singles = [next(k.run(replace(s, seed=20 + j))) for j in range(3)]
    scores = [k.prior.clip_score(r.image, "a red cat") for r in singles]
    assert [seed for seed, _ in best.candidates] == [20, 21, 22]
    assert best.score == max(scores) and best.seed == 20 + scores.index(max(scores))
    assert np.array_equal(np.asarray(best.image), np.asarray(singles[scores.index(max(scores))].image))
    out = tmp_path / "best.png"
    proc = run("generate", "a red cat", "--prior", prior22, "--decoder", decoder22, "--best-of", 2, "--steps", 1,
               "-W", 64, "-H", 64, "--seed", 5, "-o", out)
    assert proc.returncode == 0, proc.stderr
    assert '"best_of": 2' in Image.open(out).info["kandinsky"]


def test_fit_with_fewer_pairs_than_dimensions_is_the_minimum_norm_map():
    t, i, _, _ = synthetic(n=6, d_text=12)  # a singular gram without ridge
    got = fit(t, i, ridge=0.0)
    tc, ic = (x.double() - x.double().mean(0) for x in (t, i))  # centered: 6 rows of rank 5
    np.testing.assert_allclose(got.weight.numpy(), (np.linalg.pinv(tc.numpy()) @ ic.numpy()).T, atol=1e-5)
    torch.testing.assert_close(got(t), i, atol=1e-4, rtol=1e-4)  # it interpolates the pairs


def test_fit_runs_on_a_gpu_like_device():
    t, i, _, _ = synthetic(n=6, d_text=12)  # the meta device stands in for CUDA: no host tensor may meet it
    got = fit(t.to("meta"), i.to("meta"), ridge=0.0)
    assert got.weight.shape == (9, 12) and got.weight.device.type == "meta"

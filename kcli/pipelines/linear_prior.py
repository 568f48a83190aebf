"""The paper's linear prior: a least-squares map, with ridge, from CLIP text embeddings to CLIP image
embeddings, fitted on image-caption pairs of one domain (the paper: 500 cat pictures steer every
generation to cats). ``--prior-mode linear`` then replaces the diffusion prior by ``W t + b``.

Reference: Razzhigaev et al., "Kandinsky: an Improved Text-to-Image Synthesis with Image Prior and Latent
Diffusion" (arXiv 2310.03502), section on the linear prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kcli.errors import KandinskyError


@dataclass
class LinearPrior:
    weight: torch.Tensor  # (D_image, D_text)
    bias: torch.Tensor  # (D_image,)

    def __call__(self, text_embeds: torch.Tensor) -> torch.Tensor:
        """(B, D_text) -> (B, D_image)."""
        w = self.weight.to(text_embeds.device, text_embeds.dtype)
        return text_embeds @ w.T + self.bias.to(text_embeds.device, text_embeds.dtype)

    def save(self, path: Path, **info) -> None:
        from safetensors.torch import save_file

        meta = {k: str(v) for k, v in info.items()}
        tensors = {"weight": self.weight.cpu().contiguous(), "bias": self.bias.cpu().contiguous()}  # fitted on a GPU too
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> LinearPrior:
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = set(f.keys())
                if keys != {"weight", "bias"}:
                    raise KandinskyError(f"{path} is not a linear prior (it holds {', '.join(sorted(keys))})")
                return cls(f.get_tensor("weight").float(), f.get_tensor("bias").float())
        except KandinskyError:
            raise
        except FileNotFoundError:
            raise KandinskyError(f"linear prior {path} does not exist") from None
        except Exception as e:
            raise KandinskyError(f"{path} cannot be read as a linear prior ({type(e).__name__})") from None


def fit(text: torch.Tensor, image: torch.Tensor, ridge: float = 1e-3) -> LinearPrior:
    """Least squares ``image ≈ text W^T + b`` with an L2 penalty ``ridge`` on W (not on b), in float64.

    Centering both sides separates the bias: W minimises |Tc W^T - Ic|^2 + ridge |W|^2, b = mean(I) - W mean(T).
    """
    if text.ndim != 2 or image.ndim != 2 or text.shape[0] != image.shape[0]:
        raise KandinskyError(f"text and image embeddings do not pair up: {tuple(text.shape)} vs {tuple(image.shape)}")
    if text.shape[0] < 2:
        raise KandinskyError("a linear prior needs at least 2 image-caption pairs")
    if ridge < 0:
        raise KandinskyError(f"ridge must not be negative, got {ridge}")
    t, i = text.double(), image.double()
    t_mean, i_mean = t.mean(0), i.mean(0)
    tc, ic = t - t_mean, i - i_mean
    # Ridge as extra rows, [Tc; sqrt(ridge) I] W^T = [Ic; 0], solved through the SVD pseudo-inverse: the
    # minimum-norm solution even when the pairs are fewer than the dimensions (ridge 0), the same on every
    # device (CUDA's lstsq has only the "gels" driver, which assumes full rank), and without the squared
    # condition number of the normal equations.
    d = t.shape[1]
    design = torch.cat([tc, ridge ** 0.5 * torch.eye(d, dtype=torch.float64, device=t.device)])
    target = torch.cat([ic, ic.new_zeros(d, ic.shape[1])])
    w_t = torch.linalg.pinv(design) @ target  # (D_text, D_image)
    weight = w_t.T
    bias = i_mean - weight @ t_mean
    return LinearPrior(weight.float(), bias.float())


def fit_linear_prior(pairs: list[tuple[Path, str]], *, model: str | None = None, prior: str | None = None,
                     offline: bool = False, device: str = "auto", dtype: str | None = None, ridge: float = 1e-3,
                     events=None) -> LinearPrior:
    """Fit a linear prior on (picture, caption) pairs with the CLIP of a prior checkpoint (``prior``: a folder
    or hub id; else the registry model ``model``'s prior), 16 pairs at a time."""
    from kcli.loading.hub import resolve
    from kcli.loading.registry import load_registry
    from kcli.pipelines.devices import resolve_device, resolve_dtype
    from kcli.pipelines.events import Relay
    from kcli.pipelines.files import load_image
    from kcli.pipelines.pixels import rgb
    from kcli.pipelines.placement import Placement
    from kcli.pipelines.prior import PriorStage

    if len(pairs) < 2:
        raise KandinskyError("a linear prior needs at least 2 captioned pictures")
    events = Relay(events)
    if prior is None:
        registry = load_registry()
        prior = registry.get(model or registry.default).prior.id
    folder = resolve(prior, offline=offline, progress=events)
    dev = resolve_device(device)
    stage = PriorStage.load(folder, dtype=resolve_dtype(dtype, dev), placement=Placement("none", dev))
    texts, images = [], []
    for i in range(0, len(pairs), 16):
        chunk = pairs[i:i + 16]
        t, im = stage.pair_embeddings([c for _, c in chunk], [rgb(load_image(p)) for p, _ in chunk])
        texts.append(t)
        images.append(im)
        events.progress("embed", min(i + 16, len(pairs)), len(pairs))
    return fit(torch.cat(texts), torch.cat(images), ridge)

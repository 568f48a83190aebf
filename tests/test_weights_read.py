"""Reading safetensors: kept tensors are views of the file, converted ones are read on their own and equal."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from kcli.loading.errors import CheckpointError
from kcli.loading.weights import read_tensors


@pytest.fixture
def weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {"conv.weight": torch.randn(8, 4, 3, 3, generator=g), "conv.bias": torch.randn(8, generator=g),
               "half.weight": torch.randn(5, 3, generator=g).half(), "ids": torch.arange(7),
               "flag": torch.tensor([True, False])}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("dtype", [None, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_read_equals_the_files_tensors_converted(weights, dtype, channels_last):
    want = load_file(str(weights))
    got = read_tensors(weights, dtype, channels_last=channels_last)
    assert set(got) == set(want)
    for key, w in want.items():
        if w.is_floating_point():
            w = w.to(dtype or w.dtype)
        assert got[key].dtype == w.dtype and torch.equal(got[key], w), key
    assert got["conv.weight"].is_contiguous(memory_format=torch.channels_last) == channels_last
    assert got["ids"].dtype == torch.int64 and got["flag"].dtype == torch.bool


def test_a_truncated_file_is_a_checkpoint_error(weights):
    data = weights.read_bytes()
    weights.write_bytes(data[:-40])
    with pytest.raises(CheckpointError, match="corrupt or truncated|truncated"):
        read_tensors(weights, torch.bfloat16)

"""Constants every part of the benchmark shares."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONFIGS = ROOT / "tests" / "data" / "configs"  # the real checkpoints' configs
PROMPT = "a corgi gliding on the wave"
BUILD_VERSION = "1"  # bump when the build recipe changes: cached checkpoints are then rebuilt
MEASURES = ("first_image", "load", "unet", "prior", "movq", "offload", "batched")
OFFLOAD_MODES = {"none": "none", "model": "enable_model_cpu_offload", "sequential": "enable_sequential_cpu_offload"}
GiB = 2**30

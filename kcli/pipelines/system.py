"""What ``kandinsky doctor`` reports: versions, devices and their memory, the cache, the hub, and the memory
level ``--memory auto`` would pick. Rows of (name, value), for any front end to show."""

from __future__ import annotations

import os
import platform


def system_report() -> list[tuple[str, str]]:
    import torch

    import kcli
    from kcli.loading.cache import home
    from kcli.loading.download import endpoint, hub_offline
    from kcli.pipelines.devices import bf16_advice
    from kcli.pipelines.memory import choose_memory

    rows = [("kandinsky", kcli.__version__), ("python", platform.python_version()), ("torch", torch.__version__)]
    for name in ("transformers", "safetensors", "huggingface_hub"):
        try:
            rows.append((name, __import__(name).__version__))
        except ImportError:
            rows.append((name, "missing"))
    from importlib.metadata import PackageNotFoundError, version

    from kcli.models.vision import FIX, torchvision_problem

    problem = torchvision_problem()
    if problem:
        rows.append(("torchvision", f"PROBLEM: it cannot be imported ({problem}); kandinsky uses the PIL image "
                                    f"processors instead. Fix: {FIX}"))
    else:
        try:
            rows.append(("torchvision", version("torchvision")))
        except PackageNotFoundError:
            rows.append(("torchvision", "not installed (not needed)"))

    try:  # the version from the package record: importing open_clip would take seconds
        rows.append(("open_clip", f"{version('open_clip_torch')} (kandinsky score, --scorer openclip)"))
    except PackageNotFoundError:
        rows.append(("open_clip", 'not installed: kandinsky score needs the [score] extra (pip install -e ".[score]" '
                                  "in a checkout, or pip install open_clip_torch)"))
    rows.append(("CPU", f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                        f"{torch.backends.cpu.get_cpu_capability()}"))
    rows.append(("CPU bf16", bf16_advice()))
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            rows.append((f"cuda:{i}", f"{torch.cuda.get_device_name(i)}, {free / 2**30:.1f} of "
                                      f"{total / 2**30:.1f} GB free, bf16 {torch.cuda.is_bf16_supported()}"))
        device = torch.device("cuda")
    else:
        rows.append(("GPU", "none (CUDA not available): runs on the CPU"))
        device = torch.device("cpu")
    root = home()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.is_dir() else 0
    rows.append(("cache", f"{root} ({size / 2**30:.2f} GB)"))
    token = "set" if os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") else "not set"
    rows.append(("hub", f"{endpoint()}{' (offline: HF_HUB_OFFLINE)' if hub_offline() else ''}, HF_TOKEN {token}"))
    choice = choose_memory("auto", device)
    rows.append(("--memory auto", choice.describe().removeprefix("memory ")))
    return rows

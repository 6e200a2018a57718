"""The environment a benchmark ran in: device, library versions, precision settings, commit."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["environment", "device_slug", "configure_precision", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[1]


def configure_precision() -> None:
    """fp32 everywhere: TF32 off for matmuls and convolutions (the setting of the standard workload)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_model()


def device_slug(device: torch.device) -> str:
    """A file-name friendly device label: "cpu", or the card's name ("nvidia-h100-80gb-hbm3")."""
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-") or "cuda"


def environment(device: torch.device, dtype: torch.dtype, probe_fastik: bool = True) -> dict:
    """Everything needed to interpret (and not over-interpret) a set of numbers.

    ``probe_fastik=False`` leaves fastik and its extension unimported (their fields None), for a process
    that is about to rebuild the extension."""
    now = _dt.datetime.now(_dt.timezone.utc)
    env = {
        "date": now.date().isoformat(),
        "timestamp_utc": now.isoformat(timespec="seconds"),
        "device_type": device.type,
        "device": device_name(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "host_memory_bytes": _mem_total_bytes(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": _version("numpy"),
        "triton": _version("triton"),
        "escnn": _version("escnn"),
        "e3nn": _version("e3nn"),
        "torch_geometric": _version("torch_geometric"),
        "fastik": _fastik_version() if probe_fastik else None,
        "fastik_extension": _fastik_extension() if probe_fastik else None,
        "dtype": str(dtype).replace("torch.", ""),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None,
        "argv": sys.argv,
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        env["git_dirty"] = bool(status)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["device_memory_bytes"] = props.total_memory
        env["device_capability"] = f"{props.major}.{props.minor}"
        env["device_count"] = torch.cuda.device_count()
    return env


def _fastik_version() -> str | None:
    try:
        import fastik
    except Exception:  # noqa: BLE001 - the harness must still describe an environment with a broken fastik
        return None
    return getattr(fastik, "__version__", None)


def _fastik_extension() -> bool | None:
    """Whether the compiled extension fastik._C imports (None: fastik missing)."""
    try:
        import fastik  # noqa: F401
    except Exception:  # noqa: BLE001
        return None
    try:
        import fastik._C  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True

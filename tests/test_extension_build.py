"""The C++/CUDA extension fastik._C: presence (when required) and a CPU-only build.

* ``FASTIK_REQUIRE_EXTENSION=1`` (set by CI after ``pip install --no-build-isolation -e .``)
  makes a missing extension a failure instead of a silent fallback; when torch
  has CUDA and nvcc is present (and ``FASTIK_BUILD_CUDA`` is not ``0``) the CUDA
  kernels must have been compiled and linked in as well.
* The CPU-only build path (``FASTIK_BUILD_CUDA=0``) is built from scratch into a
  temporary directory and exercised in a subprocess.
"""
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from fastik.ops import aggregate as agg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvcc_available() -> bool:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return True
    return shutil.which("nvcc") is not None or os.path.isfile("/usr/local/cuda/bin/nvcc")


def _cxx_compiler():
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def test_extension_is_built_when_required():
    if os.environ.get("FASTIK_REQUIRE_EXTENSION", "0") != "1":
        pytest.skip("set FASTIK_REQUIRE_EXTENSION=1 to require the compiled extension")
    assert agg.has_extension(), f"fastik._C failed to load: {agg._ext_error}"
    ext = agg._load_extension()
    assert callable(torch.ops.fastik.segment_sum_raw)
    assert callable(torch.ops.fastik.scatter_sum_raw)
    cuda_build_expected = (
        torch.version.cuda is not None
        and _nvcc_available()
        and os.environ.get("FASTIK_BUILD_CUDA", "").strip() != "0"
    )
    if cuda_build_expected:
        assert agg.extension_has_cuda(), "torch has CUDA and nvcc exists, but fastik._C lacks CUDA"
        assert ext.cuda_version() == ".".join(torch.version.cuda.split(".")[:2])


_SMOKE = textwrap.dedent(
    """
    import importlib.util, sys
    import torch

    spec = importlib.util.spec_from_file_location("_C", sys.argv[1])
    ext = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext)
    assert ext.has_cuda() is False and ext.cuda_version() is None

    torch.manual_seed(0)
    target = torch.sort(torch.randint(0, 50, (2000,))).values
    rowptr = torch.zeros(51, dtype=torch.int64)
    rowptr[1:] = torch.bincount(target, minlength=50).cumsum(0)
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        src = torch.randn(2000, 19, dtype=torch.float64).to(dtype)
        ref = torch.zeros(50, 19, dtype=torch.float64).index_add_(0, target, src.double())
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        for rp in (rowptr, rowptr.int()):
            out = torch.ops.fastik.segment_sum_raw(src, rp)
            assert out.dtype == dtype and out.shape == (50, 19)
            assert torch.allclose(out.double(), ref, rtol=tol, atol=tol), dtype
        out = torch.ops.fastik.scatter_sum_raw(src, target.int(), 50)
        assert torch.allclose(out.double(), ref, rtol=tol, atol=tol), dtype
    print("CPU extension OK")
    """
)


def test_cpu_only_build_from_scratch(tmp_path):
    """FASTIK_BUILD_CUDA=0 python setup.py build_ext → an importable CPU-only _C (≈45-60 s)."""
    if _cxx_compiler() is None:
        pytest.skip("no C++ compiler")
    lib, tmp = tmp_path / "lib", tmp_path / "temp"
    env = dict(os.environ, FASTIK_BUILD_EXT="1", FASTIK_BUILD_CUDA="0")
    env.setdefault("MAX_JOBS", str(min(2, os.cpu_count() or 1)))
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(lib), "--build-temp", str(tmp)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert "building CPU-only fastik._C" in proc.stderr
    assert "nvcc" not in proc.stdout  # no CUDA sources compiled
    built = glob.glob(str(lib / "fastik" / "_C*"))
    assert len(built) == 1, built

    run = subprocess.run(
        [sys.executable, "-c", _SMOKE, built[0]],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    assert "CPU extension OK" in run.stdout


def test_build_ext_zero_builds_nothing(tmp_path):
    """FASTIK_BUILD_EXT=0: setup.py declares no extension (a cheap dry run)."""
    env = dict(os.environ, FASTIK_BUILD_EXT="0")
    lib = tmp_path / "lib"
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(lib),
         "--build-temp", str(tmp_path / "temp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "not building fastik._C" in proc.stderr
    assert not glob.glob(str(lib / "**" / "_C*"), recursive=True)


def test_build_cuda_forced_without_nvcc_fails_clearly(tmp_path):
    """FASTIK_BUILD_CUDA=1 without nvcc (or without a CUDA torch) is a clear error."""
    missing = str(tmp_path / "no-cuda-here")
    env = dict(os.environ, FASTIK_BUILD_EXT="1", FASTIK_BUILD_CUDA="1", CUDA_HOME=missing)
    proc = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", str(tmp_path / "lib"),
         "--build-temp", str(tmp_path / "temp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "FASTIK_BUILD_CUDA=1" in proc.stderr
    if torch.version.cuda is not None:
        assert "nvcc was not found" in proc.stderr and missing in proc.stderr
    else:
        assert "has no CUDA support" in proc.stderr

"""Builds the optional C++/CUDA extension ``fastik._C`` from ``csrc/``.

All package metadata lives in ``pyproject.toml``; this file only adds
``ext_modules`` and the ``build_ext`` command. Build with

    pip install --no-build-isolation -e .        # torch must already be installed

Environment switches:

``FASTIK_BUILD_EXT=0``
    Build no extension at all (fastik then uses its pure-torch fallback).
    Otherwise a failing extension build is a hard error.
``FASTIK_BUILD_CUDA=0|1``
    Force the CPU-only (``CppExtension``) or the CUDA (``CUDAExtension``) build.
    Unset: CUDA when ``torch.version.cuda`` is set and ``nvcc`` is found.
    ``1`` without a CUDA torch or without ``nvcc`` is an error.
``TORCH_CUDA_ARCH_LIST``
    Defaults to ``"8.0;9.0+PTX"`` here (keeps build time low; PTX runs on newer GPUs).
``CUDA_HOME`` / ``CUDA_PATH``
    Toolkit root; otherwise found from ``nvcc`` on ``PATH`` or ``/usr/local/cuda``.
``MAX_JOBS``
    Parallel compile jobs (ninja).
"""

import glob
import os
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"  # PTX lets newer GPUs JIT the sm_90 code


def _env_flag(name):
    """None when unset/empty, else True/False for 1/0 (and yes/no, true/false, on/off)."""
    value = os.environ.get(name, "").strip().lower()
    if value == "":
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"fastik setup.py: {name} must be 0 or 1, got {os.environ[name]!r}")


def _sources(pattern):
    # setuptools wants paths relative to the project root.
    paths = sorted(glob.glob(os.path.join(ROOT, pattern)))
    return [os.path.relpath(p, ROOT) for p in paths]


def _is_cuda_home(path):
    if not path:
        return False
    nvcc = os.path.join(path, "bin", "nvcc.exe" if sys.platform == "win32" else "nvcc")
    header = os.path.join(path, "include", "cuda_runtime.h")
    return os.path.isfile(nvcc) and os.path.isfile(header)


def _find_cuda_home():
    """(toolkit root with bin/nvcc and include/cuda_runtime.h, or None; why not found)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        path = os.environ.get(var)
        if path:  # an explicit setting wins, even when it is wrong
            if _is_cuda_home(path):
                return path, ""
            return None, f"{var}={path!r} has no bin/nvcc and include/cuda_runtime.h"
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        candidates.append(os.path.dirname(os.path.dirname(nvcc)))
        # `nvcc` may be a wrapper script (e.g. /usr/local/bin/nvcc): ask it where it lives.
        try:
            out = subprocess.run(
                [nvcc, "-v", "--dryrun", "-c", "-x", "cu", os.devnull],
                capture_output=True, text=True, timeout=30,
            )
            for line in (out.stdout + out.stderr).splitlines():
                if line.startswith("#$ TOP="):
                    candidates.append(line.split("=", 1)[1].strip())
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append("/usr/local/cuda")
    for path in candidates:
        if _is_cuda_home(path):
            return os.path.normpath(path), ""
    return None, "nvcc is not on PATH and /usr/local/cuda has no toolkit"


def _extensions():
    """(ext_modules, cmdclass) for setuptools.setup."""
    if _env_flag("FASTIK_BUILD_EXT") is False:
        print("fastik setup.py: FASTIK_BUILD_EXT=0, not building fastik._C", file=sys.stderr)
        return [], {}

    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the build environment
        raise SystemExit(
            "fastik setup.py: building the extension fastik._C needs torch at build time. "
            "Install torch first and use `pip install --no-build-isolation ...`, "
            "or set FASTIK_BUILD_EXT=0 to install without the extension."
        ) from exc

    want_cuda = _env_flag("FASTIK_BUILD_CUDA")
    cuda_home, no_cuda_reason = None, "torch has no CUDA"
    if want_cuda is not False and torch.version.cuda:
        cuda_home, no_cuda_reason = _find_cuda_home()
    if want_cuda is None:
        want_cuda = bool(torch.version.cuda) and cuda_home is not None
        if not want_cuda:
            print(f"fastik setup.py: no CUDA build ({no_cuda_reason})", file=sys.stderr)
    elif want_cuda:
        if not torch.version.cuda:
            raise SystemExit(
                f"fastik setup.py: FASTIK_BUILD_CUDA=1 but the installed torch {torch.__version__} "
                "has no CUDA support (torch.version.cuda is None)."
            )
        if cuda_home is None:
            raise SystemExit(
                f"fastik setup.py: FASTIK_BUILD_CUDA=1 but nvcc was not found: {no_cuda_reason} "
                "(set CUDA_HOME to the CUDA toolkit root or put nvcc on PATH)."
            )

    if want_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)

    import torch.utils.cpp_extension as cpp_ext

    if want_cuda:
        cpp_ext.CUDA_HOME = cuda_home  # in case the module was imported before we set CUDA_HOME

    cxx_flags = ["-O3"]
    link_flags = []
    if sys.platform != "win32":
        cxx_flags.append("-g0")  # Python's CFLAGS carry -g: drop debug info (faster build, smaller .so)
    if sys.platform.startswith("linux"):
        # at::parallel_for is header code on torch's OpenMP backend.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    elif sys.platform == "win32":
        cxx_flags = ["/O2", "/openmp"]

    sources = ["csrc/bindings.cpp"] + _sources("csrc/cpu/*.cpp")
    if want_cuda:
        major, minor = (torch.version.cuda.split(".") + ["0"])[:2]
        ext = cpp_ext.CUDAExtension(
            name="fastik._C",
            sources=sources + _sources("csrc/cuda/*.cu"),
            define_macros=[
                ("FASTIK_WITH_CUDA", None),
                ("FASTIK_CUDA_MAJOR", str(int(major))),
                ("FASTIK_CUDA_MINOR", str(int(minor))),
            ],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
        print(
            f"fastik setup.py: building fastik._C with CUDA {torch.version.cuda} "
            f"(CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})",
            file=sys.stderr,
        )
    else:
        ext = cpp_ext.CppExtension(
            name="fastik._C",
            sources=sources,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
        print("fastik setup.py: building CPU-only fastik._C", file=sys.stderr)

    class BuildExt(cpp_ext.BuildExtension):
        """torch's BuildExtension; a failure stays fatal but says how to opt out."""

        def run(self):
            try:
                super().run()
            except BaseException:
                print(
                    "\nfastik setup.py: building the extension fastik._C FAILED. "
                    "Set FASTIK_BUILD_EXT=0 to install without it (pure-torch fallback), "
                    "or FASTIK_BUILD_CUDA=0 for a CPU-only build.\n",
                    file=sys.stderr,
                )
                raise

    return [ext], {"build_ext": BuildExt}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

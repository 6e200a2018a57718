import os

import torch

# Without a GPU, Triton kernels run in the CPU interpreter; the mode is fixed when triton is
# first imported, so it is set here, before any test module can import triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist (scripts/test.sh runs one worker per core) the cores are shared out among the workers.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

import pytest  # noqa: E402

import fastik  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

# Every group of docs/design.md §3 (with representative n for the axial families).
GROUPS_3D = ["so3", "o3", "Cinf", "Cinfv", "Dinf", "Cinfh", "Dinfh", "Ci", "Cs", "C1", "C2x",
             "C4", "C3v", "C2h", "D3", "D6h", "D2d", "S4", "S6", "T", "Td", "Th", "O", "Oh", "I", "Ih"]
GROUPS_2D = ["so2", "o2", "C8", "D4", "flip", "trivial"]
ALL_GROUPS = [(g, 3) for g in GROUPS_3D] + [(g, 2) for g in GROUPS_2D]
FIELDS = {3: "4x0e + 2x1o + 1x2e", 2: "2x0 + 1x0- + 2x1 + 1x2"}


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state (no test depends on another's draws)."""
    torch.manual_seed(0)


def group_id(p):
    return f"{p[0]}-{p[1]}d"


@pytest.fixture(params=ALL_GROUPS, ids=group_id)
def any_group(request) -> fastik.Group:
    return fastik.group(request.param[0], dim=request.param[1])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


class LargestTensor(TorchDispatchMode):
    """Dispatch mode recording the largest number of elements of any tensor an op returns, and the op; tensors
    of a shape in ``ignore`` (e.g. the parameters') are not counted."""

    def __init__(self, ignore: tuple = ()) -> None:
        super().__init__()
        self.numel, self.op, self.ignore = 0, None, {tuple(s) for s in ignore}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > self.numel and tuple(t.shape) not in self.ignore:
                self.numel, self.op = t.numel(), func
        return out


@pytest.fixture
def float64_default():
    """Run a test with float64 as torch's default dtype (restored afterwards); modules opt in with
    ``pytestmark = pytest.mark.usefixtures("float64_default")``."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)

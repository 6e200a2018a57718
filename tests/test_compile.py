"""torch.compile(fullgraph=True) traces a whole ImplicitPointConv on every backend, CSR path included.

(The triton backend without a CSR is compiled in tests/test_layer_triton.py.)
"""
import pytest
import torch

import fastik
from fastik.ops.aggregate import build_csr
from fastik.ops.fused import triton_available

from conftest import relative_error

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
_NO_TRITON = pytest.mark.skipif(not triton_available(torch.device(DEVICE)),
                                reason="triton cannot run here (no CUDA and TRITON_INTERPRET unset)")
BACKENDS = ["reference", pytest.param("triton", marks=_NO_TRITON), pytest.param("fused", marks=_NO_TRITON)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_compiles_fullgraph_with_csr(backend):
    G = fastik.group("so3")
    ft, out = fastik.FieldType(G, "1x0e + 1x1o"), fastik.FieldType(G, "1x1o")  # small: tracing cost grows with W̃'s blocks
    conv = fastik.ImplicitPointConv(ft, out, hidden_channels=1, hidden_layers=1, aggr="mean", backend=backend)
    conv = conv.to(DEVICE)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, ft.dim, generator=g).to(DEVICE).requires_grad_()
    pos = torch.randn(6, 3, generator=g).to(DEVICE)
    ei = torch.randint(0, 6, (2, 14), generator=g).to(DEVICE)
    csr = build_csr(ei[1], 6)
    compiled = torch.compile(conv, fullgraph=True, backend="aot_eager")
    y = compiled(x, pos, ei, csr=csr)
    g_x, = torch.autograd.grad(y.square().sum(), x)
    y_eager = conv(x, pos, ei)  # scatter path: also checks the CSR path's value
    g_eager, = torch.autograd.grad(y_eager.square().sum(), x)
    assert relative_error(y, y_eager) < 1e-5 and relative_error(g_x, g_eager) < 1e-5

"""Memory contract of the implicit convolution: nothing of size E × (per-edge width) is ever created.

The G-MLP, the messages and their aggregation run chunk by chunk (recomputed in backward),
so forward + backward allocate only O(N·D + E·(dim + attr dim) + chunk × width): a
dispatch mode records the size of every tensor any op produces.
"""
import pytest
import torch

import fastik

from conftest import LargestTensor


@pytest.mark.parametrize("use_csr", [False, True])
def test_no_edge_times_width_tensor_in_forward_and_backward(use_csr):
    torch.manual_seed(0)
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "2x0e + 2x1o")
    ea = fastik.FieldType(G, "1x0e")
    conv = fastik.ImplicitPointConv(ft, ft, edge_attr_type=ea, hidden_channels=2, backend="reference",
                                    chunk_size=250)
    n, e = 200, 3000
    pos = torch.randn(n, 3)
    x = torch.randn(n, ft.dim, requires_grad=True)
    ei = torch.stack([torch.randint(0, n, (e,)), torch.arange(n).repeat_interleave(e // n)])
    edge_attr = torch.randn(e, 1)
    csr = fastik.ops.build_csr(ei[1], n) if use_csr else None
    # what a non-chunked layer would store: h̃ (E, H+1) = 3000 × 25, kernels (E, Dout, Din) = 3000 × 64
    assert conv.kernel.hidden_type.dim + 1 > 16 and ft.dim * ft.dim > 16
    with LargestTensor() as mode:
        y = conv(x, pos, ei, edge_attr=edge_attr, csr=csr)
        y.pow(2).sum().backward()
    assert mode.numel < 16 * e, f"{mode.op} created a tensor of {mode.numel} elements (E = {e})"
    assert x.grad is not None and all(p.grad is not None for p in conv.kernel.head.parameters())


def test_largest_tensor_mode_detects_an_unchunked_layer():
    """The check above can fail: the same layer in a single chunk creates (E, H+1)."""
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "2x0e + 2x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2, backend="reference", chunk_size=10 ** 6)
    n, e = 200, 3000
    ei = torch.randint(0, n, (2, e))
    with LargestTensor() as mode:
        conv(torch.randn(n, ft.dim), torch.randn(n, 3), ei).sum().backward()
    assert mode.numel >= 16 * e


def test_forces_in_loss_through_recomputed_chunks():
    """Double backward (a loss on forces -∂E/∂pos) through checkpointed chunks equals one chunk."""
    torch.manual_seed(0)
    G = fastik.group("so3")
    ft = fastik.FieldType(G, "2x0e + 2x1o")
    conv = fastik.ImplicitPointConv(ft, fastik.FieldType(G, "1x0e"), hidden_channels=2,
                                    backend="reference").double()
    pos = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(20, ft.dim, dtype=torch.float64)
    ei = torch.randint(0, 20, (2, 150))
    ei = ei[:, ei[0] != ei[1]]

    def force_loss_grads(chunk_size):
        conv.chunk_size = chunk_size
        forces, = torch.autograd.grad(conv(x, pos, ei).sum(), pos, create_graph=True)
        return torch.autograd.grad(forces.pow(2).sum(), list(conv.kernel.parameters()))

    for a, b in zip(force_loss_grads(None), force_loss_grads(16)):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-9)

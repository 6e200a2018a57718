"""Helpers shared by the tests of the fused Triton ops (test_fused.py, test_fused_segmented.py, and the memory
tests of test_fused_gmlp.py and test_layer_triton.py).

Importing this module fixes the Triton launch mode, so the test modules import it
before anything imports triton: the real kernels with one fixed configuration per
kernel on a GPU (short test start-up), the CPU interpreter otherwise.
"""
import os

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

if torch.cuda.is_available():  # real kernels; a fixed config keeps test start-up short
    os.environ.setdefault("FASTIK_TRITON_AUTOTUNE", "0")
else:  # must happen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RTOL = 1e-5
NO_TRITON_REASON = ("Triton cannot run on this device in this process "
                    "(no CUDA and TRITON_INTERPRET was not set before triton was imported)")


def reference64(h, x, weight, src, tgt, num_targets):
    """float64 einsum reference (differentiable)."""
    msg = torch.einsum("okc,ek,ec->eo", weight, h, x[src])
    return msg.new_zeros(num_targets, weight.shape[0]).index_add(0, tgt, msg)


def rel_err(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    scale = b.abs().max().item() if b.numel() else 0.0
    if scale == 0.0:
        return a.abs().max().item() if a.numel() else 0.0
    return (a - b).abs().max().item() / scale


def leaf_copies(*tensors):
    """Fresh float32 leaves that require grad."""
    return tuple(a.clone().requires_grad_() for a in tensors)


def forward_backward(fn, h, x, w, gout):
    """``fn(h, x, w)`` on fresh leaves, backpropagated from ``gout``:
    (out, grad_h, grad_x, grad_w)."""
    hf, xf, wf = leaf_copies(h, x, w)
    out = fn(hf, xf, wf)
    out.backward(gout)
    return out.detach(), hf.grad, xf.grad, wf.grad


def check_op_against_reference(fn, h, x, w, src, tgt, num_targets):
    """``fn(h, x, w)`` (the op on the graph src → tgt) and its gradients w.r.t. h, x
    and weight agree with :func:`reference64` to RTOL. Returns the op's output."""
    hf, xf, wf = leaf_copies(h, x, w)
    out = fn(hf, xf, wf)
    hd, xd, wd = (a.detach().double().requires_grad_() for a in (h, x, w))
    ref = reference64(hd, xd, wd, src, tgt, num_targets)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) <= RTOL, rel_err(out, ref)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    out.backward(gout)
    ref.backward(gout.double())
    for name, a, b in (("h", hf, hd), ("x", xf, xd), ("weight", wf, wd)):
        assert a.grad.shape == b.shape, name
        assert rel_err(a.grad, b.grad) <= RTOL, f"grad_{name}: {rel_err(a.grad, b.grad)}"
    return out


def check_no_edges(fn, h, x, w, num_targets):
    """With no edges, ``fn(h, x, w)`` is all zeros of shape (num_targets, Dout), and so
    are its gradients (of the inputs' shapes)."""
    hf, xf, wf = leaf_copies(h, x, w)
    out = fn(hf, xf, wf)
    assert out.shape == (num_targets, w.shape[0]) and torch.all(out == 0)
    out.sum().backward()
    assert hf.grad.shape == h.shape
    assert xf.grad.shape == x.shape and torch.all(xf.grad == 0)
    assert wf.grad.shape == w.shape and torch.all(wf.grad == 0)


def check_grad_x_only(fn, x_in, h, x, w, src, tgt, num_targets):
    """``fn(xr)``, xr a leaf copy of ``x_in`` (the only input requiring grad), and its
    x-gradient of a squared loss agree with :func:`reference64` to RTOL."""
    xr = x_in.clone().requires_grad_()
    out = fn(xr)
    xd = x.double().requires_grad_()
    ref = reference64(h.double(), xd, w.double(), src, tgt, num_targets)
    assert rel_err(out, ref) <= RTOL
    out.square().sum().backward()
    ref.square().sum().backward()
    assert rel_err(xr.grad, xd.grad) <= RTOL


def check_double_backward(fn, h, x, w, src, tgt, num_targets):
    """Second derivatives of ``fn(h, x, w)`` (through a squared loss, probed by random
    vectors) agree with :func:`reference64`'s to RTOL."""
    hf, xf, wf = leaf_copies(h, x, w)
    hd, xd, wd = (a.double().requires_grad_() for a in (h, x, w))
    out = fn(hf, xf, wf)
    ref = reference64(hd, xd, wd, src, tgt, num_targets)
    g1 = torch.autograd.grad(out.square().sum(), (hf, xf, wf), create_graph=True)
    g2 = torch.autograd.grad(ref.square().sum(), (hd, xd, wd), create_graph=True)
    probes = [torch.randn(a.shape, generator=torch.Generator().manual_seed(i)).to(DEVICE)
              for i, a in enumerate(g1)]
    s1 = sum((a * p).sum() for a, p in zip(g1, probes))
    s2 = sum((a * p.double()).sum() for a, p in zip(g2, probes))
    for a, b in zip(torch.autograd.grad(s1, (hf, xf, wf)), torch.autograd.grad(s2, (hd, xd, wd))):
        assert rel_err(a, b) <= RTOL


def check_compile_matches_eager(fn, h, x, w, *rest, dynamic):
    """``torch.compile(fn, fullgraph=True)`` (aot_eager) gives the value and the h, x,
    weight gradients of eager ``fn(h, x, w, *rest)`` (a scalar)."""
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=dynamic)
    results = []
    for f in (fn, compiled):
        hf, xf, wf = leaf_copies(h, x, w)
        val = f(hf, xf, wf, *rest)
        val.backward()
        results.append((val.detach(), hf.grad, xf.grad, wf.grad))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


class OutputSizes(TorchDispatchMode):
    """Records (op, size) for every output of every op run under the mode.

    ``bodies`` maps custom ops to their Python bodies: those ops are made transparent
    (the body runs under the mode, so what the kernels' launchers allocate is
    recorded too). ``size(t)`` is the size recorded for tensor ``t`` (numel by default).
    """

    def __init__(self, bodies, size=torch.Tensor.numel):
        super().__init__()
        self.records = []
        self._bodies = dict(bodies)
        self._size = size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        body = self._bodies.get(func)
        if body is not None:
            with self:  # re-enter: record what the body runs
                out = body(*args, **kwargs)
        else:
            out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.records.append((str(func), self._size(t)))
        return out

    def largest(self) -> tuple[str, int]:
        """(op, size) of the largest output recorded."""
        return max(self.records, key=lambda r: r[1])

    def allocated(self) -> bool:
        """Whether an allocation (aten.empty*, aten.zeros*) was recorded: inside a transparent body, the launchers'."""
        return any(f.startswith(("aten.empty", "aten.zeros")) for f, _ in self.records)


def op_bodies() -> dict:
    """Every Triton custom op of fastik -> its Python body, for :class:`OutputSizes` to make them transparent."""
    from fastik.ops import fused, fused_gmlp, fused_segmented

    ops = torch.ops.fastik
    return {ops.implicit_message_passing.default: fused._forward_impl,
            ops.implicit_message_passing_backward.default: fused._backward_impl,
            ops.implicit_message_passing_segmented.default: fused_segmented._forward_impl,
            ops.implicit_message_passing_segmented_backward.default: fused_segmented._backward_impl,
            ops.gmlp_conv.default: fused_gmlp._forward_impl,
            ops.gmlp_conv_backward.default: fused_gmlp._backward_impl}


def words(t: torch.Tensor) -> int:
    """The size of t in 4-byte words (the interpreter moves arguments through byte views of their storage, so
    numel alone would overcount those 4×)."""
    return t.numel() * t.element_size() // 4


def big_problem(e=100_000, d=64, k=65, seed=0, sort_targets=False):
    """GPU problem at real size: (h, x, w, src, tgt, n), n = e // 16 nodes (targets
    sorted when ``sort_targets``)."""
    n = e // 16
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = torch.randn(e, k, device="cuda", generator=g)
    x = torch.randn(n, d, device="cuda", generator=g)
    w = torch.randn(d, k, d, device="cuda", generator=g) / (k * d) ** 0.5
    src = torch.randint(0, n, (e,), device="cuda", generator=g)
    tgt = torch.randint(0, n, (e,), device="cuda", generator=g)
    if sort_targets:
        tgt = torch.sort(tgt).values
    return h, x, w, src, tgt, n

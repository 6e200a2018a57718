"""Triton kernels of fastik (installed as ``fastik.triton_kernels``).

One concept per module:

* :mod:`.message_fwd` — fused forward of implicit message passing (atomic scatter
  over any edge order, and a segmented deterministic variant for target-sorted
  edges with a CSR row pointer);
* :mod:`.message_bwd` — fused backward (grad_h + grad_x in one kernel; grad_weight
  as per-split partial GEMMs over edges), recomputing instead of storing;
* :mod:`.segmented_fwd` — aggregate-first forward for target-sorted edges:
  T_i = Σ_e h_e ⊗ x_j per block of targets in registers, then out_i = W · vec(T_i);
* :mod:`.segmented_bwd` — its backward (grad_h and grad_weight; grad_x is the
  forward on the source-sorted graph).
* :mod:`.gmlp_conv` — the whole implicit convolution (G-MLP, head, contraction,
  scatter) in one forward kernel, and its backward in three, recomputing the MLP.

Importing this package does not import Triton; the submodules do (and choose
the CPU interpreter when ``TRITON_INTERPRET=1`` is set at that moment). Use
:mod:`fastik.ops.fused` / :mod:`fastik.ops.fused_segmented` rather than calling the launchers directly: it validates
inputs and registers the differentiable ``torch.ops.fastik`` custom ops.
"""
import importlib.util as _util

HAS_TRITON = _util.find_spec("triton") is not None

__all__ = ["HAS_TRITON"]

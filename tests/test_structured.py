"""Block-structured G-MLP weights: the structured contractions equal the dense ones, and the
weights hold exactly the non-zeros Schur's lemma allows (round-off cleaned to exact zeros)."""
import pytest
import torch

import fastik
from fastik.groups.intertwiners import ZERO_TOL
from fastik.nn import EquivariantLinear, ImplicitKernel
from fastik.ops import structured
from fastik.ops.structured import StructuredHead

from conftest import FIELDS


def _randomise(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()


@pytest.mark.parametrize("factored", [True, False], ids=["factored", "dense-blocks"])
def test_head_messages_match_dense_forward_and_backward(any_group, factored, monkeypatch):
    # the cost model picks factored or dense-block contraction per block: exercise both everywhere
    monkeypatch.setattr(structured, "_head_factored_is_cheaper", lambda term: factored)
    ft = fastik.FieldType(any_group, FIELDS[any_group.dim])
    kernel = ImplicitKernel(ft, ft, hidden_channels=2, hidden_layers=1).double()
    _randomise(kernel)
    head = kernel.head.structured(torch.float64)
    e = 9
    h = torch.randn(e, head.k, dtype=torch.float64, requires_grad=True)
    x = torch.randn(e, head.din, dtype=torch.float64, requires_grad=True)
    params = list(kernel.head.parameters())
    dense = torch.einsum("okc,ek,ec->eo", kernel.head.weight(torch.float64), h, x)
    got = head.messages(h, x)
    assert torch.allclose(got, dense, atol=1e-12, rtol=1e-10)
    grad_out = torch.randn_like(dense)
    want = torch.autograd.grad(dense, [h, x, *params], grad_out)
    have = torch.autograd.grad(got, [h, x, *params], grad_out)
    for a, b in zip(have, want):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("factored", [True, False], ids=["factored", "dense-blocks"])
def test_head_contract_of_pooled_outer_products_matches_dense(any_group, factored, monkeypatch):
    # contract(P) = W̃ · P per target, P = Σ_e h_e ⊗ x_e; the cost model's choice per block forced both ways
    monkeypatch.setattr(structured, "pooled_term_costs", lambda term: (0, 1) if factored else (1, 0))
    ft = fastik.FieldType(any_group, FIELDS[any_group.dim])
    kernel = ImplicitKernel(ft, ft, hidden_channels=2, hidden_layers=1).double()
    _randomise(kernel)
    head = kernel.head.structured(torch.float64)
    pooled = torch.randn(7, head.k, head.din, dtype=torch.float64, requires_grad=True)
    params = list(kernel.head.parameters())
    dense = torch.einsum("okc,nkc->no", kernel.head.weight(torch.float64), pooled)
    inp_order = head.pooled_layout()
    assert sorted(inp_order.tolist()) == list(range(head.din))
    got = head.contract(pooled[:, :, inp_order])
    assert torch.allclose(got, dense, atol=1e-12, rtol=1e-10)
    grad_out = torch.randn_like(dense)
    for a, b in zip(torch.autograd.grad(got, [pooled, *params], grad_out),
                    torch.autograd.grad(dense, [pooled, *params], grad_out)):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)
    assert head.contract(pooled[:0]).shape == (0, head.dout)


def test_contract_of_a_single_dense_block():
    w = torch.randn(3, 4, 5, dtype=torch.float64)
    pooled = torch.randn(6, 4, 5, dtype=torch.float64)
    head = StructuredHead.from_dense(w)
    assert torch.equal(head.pooled_layout(), torch.arange(5))
    assert torch.allclose(head.contract(pooled), torch.einsum("okc,nkc->no", w, pooled))


def test_pooled_layout_refuses_overlapping_blocks():
    one = torch.ones(1, 1, 1, 1)
    terms = [structured.HeadTerm(slice(0, 1), slice(0, 2), slice(0, 1), torch.ones(1, 2, 1, 1), one),
             structured.HeadTerm(slice(0, 1), slice(1, 3), slice(0, 1), torch.ones(1, 2, 1, 1), one)]
    with pytest.raises(ValueError, match="overlapping blocks"):
        StructuredHead(1, 1, 3, terms).pooled_layout()


def test_pooled_layout_is_component_major_per_block():
    ft = fastik.FieldType(fastik.group("so3"), "2x0e + 2x1o")
    head = ImplicitKernel(ft, ft, hidden_channels=2, hidden_layers=1).head.structured(torch.float64)
    assert head.pooled_layout().tolist() == [0, 1, 2, 5, 3, 6, 4, 7]  # 2x1o: (u, a) = 00 01 02 10 11 12 -> a-major


@pytest.mark.parametrize("whole_dense", [False, True], ids=["blocks", "whole-dense"])
def test_linear_structured_matches_dense(any_group, whole_dense, monkeypatch):
    # the cost model picks blocks or the whole dense matrix: exercise both everywhere
    monkeypatch.setattr(structured, "GEMM_ADVANTAGE", 10 ** 6 if whole_dense else 0)
    monkeypatch.setattr(structured, "BLOCK_OVERHEAD", 0)
    t_in = fastik.FieldType(any_group, FIELDS[any_group.dim])
    lin = EquivariantLinear(t_in, t_in + t_in).double()
    _randomise(lin)
    x = torch.randn(2, 5, t_in.dim, dtype=torch.float64, requires_grad=True)
    dense = x @ lin.weight(torch.float64).T + lin.bias.bias(torch.float64)
    got = lin(x)
    assert torch.allclose(got, dense, atol=1e-12, rtol=1e-10)
    g = torch.randn_like(dense)
    for a, b in zip(torch.autograd.grad(got, [x, *lin.parameters()], g),
                    torch.autograd.grad(dense, [x, *lin.parameters()], g)):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10)


def test_from_dense_head_and_empty_edges():
    w = torch.randn(3, 4, 5, dtype=torch.float64)
    head = StructuredHead.from_dense(w)
    h, x = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    assert torch.allclose(head.messages(h, x), torch.einsum("okc,ek,ec->eo", w, h, x))
    assert torch.equal(head.dense(torch.float64), w)
    assert head.messages(h[:0], x[:0]).shape == (0, 3)


def test_cleaned_bases_have_no_round_off_entries():
    kernel = ImplicitKernel(*(2 * [fastik.FieldType(fastik.group("O"), "2x0e + 1x1o + 1x2e")]), hidden_channels=2)
    for name, buf in kernel.named_buffers():
        if "basis" in name:
            values = buf.view(torch.float64)
            small = values[values != 0].abs()
            assert small.numel() == 0 or small.min() > 1e3 * ZERO_TOL, name


# Non-zero entries of the real Clebsch–Gordan tensors l_out ⊗ l_in <- l_hidden that couple the
# standard workload's irreps (independent of the orientation of the l = 2 basis: 5 real
# harmonics xy, yz, xz, x²-y², 3z²-r² up to rotation about an axis give 2+2+2+2+3 = 11):
#   0⊗0<-0: 1,  0⊗1<-1 and 1⊗0<-1: 3 (identity),  1⊗1<-0: 3 (δ),  1⊗1<-1: 6 (ε),  1⊗1<-2: 11.
# Each coupling of multiplicities (mo, mi, mh) fills mo·mi·mh·nnz entries of W̃ (Dout, H+1, Din).
@pytest.mark.parametrize("name, couplings", [
    # SO(3): 1o and 1e are the same irrep, so the hidden 1o and 1e fields both couple to 0⊗1, 1⊗0, 1⊗1.
    ("so3", [1, 3, 3, 3, 3, 3, 6, 6, 11]),
    # O(3): parity selects: 0e⊗1o<-1o, 1o⊗0e<-1o, 1o⊗1o<-{0e, 1e, 2e}.
    ("o3", [1, 3, 3, 3, 6, 11]),
])
def test_head_density_is_schurs(name, couplings):
    G = fastik.group(name)
    ft = fastik.FieldType(G, "16x0e + 16x1o")
    kernel = ImplicitKernel(ft, ft, hidden_channels=16)
    w = kernel.head.weight(torch.float64)
    assert w.shape == (64, 193, 64)
    # hidden couplings: 16·16·16 each; the bias column (h̃'s constant 1, mh = 1) couples 0e<-0e (1) and 1o<-1o (3)
    expected = 16 ** 3 * sum(couplings) + 16 * 16 * (1 + 3)
    assert int((w != 0).sum()) == expected
    assert torch.equal(kernel.head.structured(torch.float64).support(), w != 0)  # what the fused kernels update
    assert kernel.head.structured(torch.float64).flops_per_edge() < 0.2 * 2 * w.numel()


def test_hidden_linear_density_is_schurs():
    so3 = fastik.group("so3")
    hidden = fastik.FieldType(so3, "16x0e + 16x1o + 16x1e + 16x2e")
    lin = EquivariantLinear(hidden, hidden + fastik.FieldType(so3, "48x0e"))
    # Schur: only equivalent irreps connect, by multiples of the identity (SO(3): 1o ≅ 1e)
    expected = 16 * 16 * 1 + 48 * 16 * 1 + 4 * (16 * 16 * 3) + 16 * 16 * 5
    assert int((lin.weight(torch.float64) != 0).sum()) == expected
    assert int(lin.structured(torch.float64).support().sum()) == expected

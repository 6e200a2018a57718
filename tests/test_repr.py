"""Compact reprs with parameter counts, reset_parameters(), and a docstring on every forward."""
import inspect

import pytest
import torch
from torch import nn

import fastik
import fastik.nn
from fastik.nn import EquivariantLinear, EquivariantNorm, ImplicitKernel, KernelHead
from fastik.nn.linear import InvariantBias

G3 = fastik.group("so3")
G2 = fastik.group("C4", dim=2)
FT = fastik.FieldType(G3, "2x0e + 1x1o")
FT2 = fastik.FieldType(G2, "1x0 + 1x1")

LAYERS = {  # name -> (constructor, words its repr must show)
    "point_conv": (lambda: fastik.ImplicitPointConv(FT, FT, hidden_channels=3, backend="reference",
                                                    edge_attr_type=fastik.FieldType(G3, "1x0e")),
                   ["ImplicitPointConv(", "2x0e + 1x1o -> 2x0e + 1x1o", "group=so3", "edge_attr_type=1x0e",
                    "hidden_channels=3", "hidden_layers=2", "nonlinearity=gate", "sigma=1", "backend=reference"]),
    "kernel": (lambda: ImplicitKernel(FT, FT, hidden_channels=2, nonlinearity="fourier_elu", sigma=0.5),
               ["ImplicitKernel(", "group=so3", "hidden_channels=2", "nonlinearity=fourier_elu", "sigma=0.5"]),
    "r2": (lambda: fastik.ImplicitR2Conv(FT2, FT2, kernel_size=3, hidden_channels=2),
           ["ImplicitR2Conv(", "1x0 + 1x1 -> 1x0 + 1x1", "group=C4", "kernel_size=3"]),
    "r3": (lambda: fastik.ImplicitR3Conv(FT, FT, kernel_size=3, hidden_channels=2, hidden_layers=1),
           ["ImplicitR3Conv(", "group=so3", "hidden_layers=1", "kernel_size=3"]),
}


@pytest.mark.parametrize("name", LAYERS)
def test_repr_is_compact_with_parameter_count(name):
    make, words = LAYERS[name]
    layer = make()
    text = repr(layer)
    assert len(text.splitlines()) <= 6, text
    count = sum(p.numel() for p in layer.parameters())
    assert count > 0 and f"parameters={count:,}" in text, text
    for word in words:
        assert word in text, (word, text)
    nested = repr(nn.Sequential(layer, nn.ReLU()))
    assert len(nested.splitlines()) <= 9, nested  # stays compact inside a model


def _perturbed(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    return module


RESETTABLE = {
    "linear": lambda: EquivariantLinear(FT, fastik.FieldType(G3, "3x0e + 2x1o + 1x2e"), gain=2.0),
    "head": lambda: KernelHead(fastik.FieldType(G3, "2x0e + 2x1o"), FT, FT),
    "bias": lambda: InvariantBias(FT),
    "norm": lambda: EquivariantNorm(FT),
    "kernel": lambda: ImplicitKernel(FT, FT, hidden_channels=2, sigma=0.7),
    "point_conv": lambda: fastik.ImplicitPointConv(FT, FT, hidden_channels=2),
    "r2": lambda: fastik.ImplicitR2Conv(FT2, FT2, kernel_size=3, hidden_channels=2),
    "r3": lambda: fastik.ImplicitR3Conv(FT, FT, kernel_size=3, hidden_channels=2, hidden_layers=1),
}


@pytest.mark.parametrize("name", RESETTABLE)
def test_reset_parameters_redraws_the_construction_init(name):
    make = RESETTABLE[name]
    torch.manual_seed(7)
    fresh = make().state_dict()
    torch.manual_seed(8)
    layer = _perturbed(make())
    assert any(not torch.equal(v, fresh[k]) for k, v in layer.state_dict().items())
    torch.manual_seed(7)
    layer.reset_parameters()
    state = layer.state_dict()
    assert state.keys() == fresh.keys()
    for key, value in fresh.items():
        assert torch.equal(state[key], value), key


def test_linear_init_has_the_documented_variance():
    """Unit-variance inputs give outputs of variance ≈ gain, after construction and after reset."""
    lin = EquivariantLinear(fastik.FieldType(G3, "64x0e + 64x1o"), fastik.FieldType(G3, "64x0e + 64x1o"), gain=2.0)
    x = torch.randn(256, lin.in_type.dim)
    for _ in range(2):
        with torch.no_grad():
            assert 1.6 < lin(x).var().item() < 2.4
        lin.reset_parameters()


MODULES = [name for name in fastik.nn.__all__ if inspect.isclass(cls := getattr(fastik.nn, name))
           and issubclass(cls, nn.Module) and cls.forward is not nn.Module.forward]


@pytest.mark.parametrize("name", MODULES)
def test_every_forward_has_a_docstring_with_shapes(name):
    doc = inspect.getdoc(getattr(fastik.nn, name).forward) or ""
    assert "(" in doc, f"{name}.forward needs a docstring with tensor shapes"

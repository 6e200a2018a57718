"""G-MLP building blocks and implicit steerable convolutions."""
from .kernel import ImplicitKernel, KernelHead, kernel_irreps
from .grid_conv import ImplicitR2Conv, ImplicitR3Conv
from .linear import EquivariantLinear
from .nonlinearities import FourierELU, GatedNonlinearity
from .norm import EquivariantNorm
from .point_conv import ImplicitPointConv

__all__ = ["EquivariantLinear", "GatedNonlinearity", "FourierELU", "EquivariantNorm", "ImplicitKernel",
           "KernelHead", "kernel_irreps", "ImplicitPointConv", "ImplicitR2Conv", "ImplicitR3Conv"]

"""fastik benchmark harness (the standard workload: see bench/README.md).

Compares one steerable point-convolution layer across implementations, side by
side in one run on one device:

* ``fastik-reference`` / ``fastik-triton`` / ``fastik-triton-csr`` — :class:`fastik.ImplicitPointConv`
  on the reference (plain torch) and fused (Triton) backends;
* ``escnn-implicit`` — the paper's construction written with escnn (a G-MLP
  from the standard representation to ρin ⊗ ρout, materialised per edge);
* ``escnn-pointconv`` — escnn's ``R3PointConv`` (analytical kernel basis);
* ``e3nn-tfn`` — an e3nn tensor-field-network convolution (spherical harmonics
  l ≤ 2, per-edge weights from a radial MLP);
* ``materialize`` (and ``materialize-compiled``) — a plain-torch MLP
  3 → 64 → 64 → D² producing a D × D kernel per edge.

Run ``python -m bench --help`` from the repository root, or
``pytest bench/ --benchmark-only`` for the pytest-benchmark suite.
"""

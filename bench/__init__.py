"""fastik benchmark harness (the standard workload: see bench/README.md).

Compares one steerable point-convolution layer across implementations, side by
side in one run on one device:

* ``fastik-reference`` / ``fastik-triton`` / ``fastik-triton-csr`` / ``fastik-fused`` / ``fastik-fused-csr``
  (and ``-h64``: the anchors' MLP width) — :class:`fastik.ImplicitPointConv` on the reference (plain torch),
  triton and fused (the whole G-MLP in one Triton op) backends, the ``-csr`` ones given the graph's CSR;
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

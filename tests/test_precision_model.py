"""bench.precision: the emulated TF32 roundings of the fused kernels' precision modes."""
import torch

from bench.precision import MODES, mode_errors, round_tf32, tf32_mm, tf32x3_mm


def test_round_tf32_keeps_ten_mantissa_bits_to_nearest_even():
    a = torch.randn(10_000) * 10.0 ** torch.randint(-20, 20, (10_000,))
    t = round_tf32(a)
    assert (t.view(torch.int32) & 0x1FFF).eq(0).all()
    assert ((t - a).abs() <= a.abs() * 2.0 ** -11).all()
    one = torch.tensor([1.0])
    ulp = 2.0 ** -10
    assert round_tf32(one + ulp / 2).item() == 1.0                        # tie → even (1.0)
    assert round_tf32(one + ulp + ulp / 2).item() == 1.0 + 2 * ulp        # tie → even (1 + 2 ulp)
    assert round_tf32(one + ulp * 0.51).item() == 1.0 + ulp
    assert round_tf32(-(one + ulp * 0.51)).item() == -(1.0 + ulp)


def test_tf32x3_is_fp32_level_and_tf32_is_not():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 256, generator=g), torch.randn(256, 64, generator=g)
    exact = a.double() @ b.double()

    def err(y):
        return ((y.double() - exact).abs().max() / exact.abs().max()).item()

    assert err(tf32x3_mm(a, b)) < 3 * err(a @ b) + 1e-7
    assert err(tf32_mm(a, b)) > 1e-4


def test_mode_errors_on_a_small_workload():
    errors = mode_errors(200, hidden_channels=2)
    assert set(errors) == set(MODES)
    assert errors["ieee"] < 1e-5 and errors["tf32x3"] < 1e-5 and errors["tf32"] > 10 * errors["tf32x3"]


def test_pooled_statement_is_the_same_function():
    """The pooled head's torch statement (per-target P, then the head) equals the edge-wise one in float64."""
    import fastik
    from bench.precision import pooled_conv
    from bench.workload import make_graph
    from fastik.nn.packing import pack_gmlp
    from fastik.ops.fused_gmlp import packed_conv_reference

    torch.manual_seed(1)
    ft = fastik.FieldType(fastik.group("so3"), "2x0e + 2x1o")
    conv = fastik.ImplicitPointConv(ft, ft, hidden_channels=2).double()
    g = make_graph(300, ft.dim, dtype=torch.float64, seed=1)
    src, tgt = g.edge_index
    r = g.pos[src] - g.pos[tgt]
    z, env = conv.kernel.embed(r), conv.kernel.envelope(r) * conv.scale
    packed = pack_gmlp(conv.kernel, torch.float64)
    expected = packed_conv_reference(z, env, g.x, packed, src, tgt, g.num_nodes)
    got = pooled_conv(z, env, g.x, packed, src, tgt, g.num_nodes)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_pooled_mode_errors_on_a_small_workload():
    errors = mode_errors(200, hidden_channels=2, head="pooled")
    assert set(errors) == set(MODES)
    assert errors["ieee"] < 1e-5 and errors["tf32x3"] < 1e-5 and errors["tf32"] > 10 * errors["tf32x3"]

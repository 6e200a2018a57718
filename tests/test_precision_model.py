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

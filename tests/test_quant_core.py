"""effdl.quant.core, observers and pack: formulas, agreement with PyTorch's fake-quant ops, bad arguments."""

import math

import pytest
import torch

from effdl.quant import core, observers, pack


@pytest.mark.parametrize("bits, signed, expected", [(8, True, (-128, 127)), (8, False, (0, 255)), (4, True, (-8, 7)),
                                                    (1, False, (0, 1)), (16, True, (-32768, 32767))])  # fmt: skip
def test_qrange(bits, signed, expected):
    assert core.qrange(bits, signed) == expected


@pytest.mark.parametrize("bits", [0, 17, 3.5])
def test_bits_out_of_range_is_rejected(bits):
    with pytest.raises(ValueError, match="bits"):
        core.qrange(bits)


def test_affine_qparams_map_range_ends_to_grid_ends():
    scale, zp = core.qparams(torch.tensor(-1.0), torch.tensor(3.0), bits=8, signed=False, symmetric=False)
    assert scale.item() == pytest.approx(4 / 255)
    q = core.quantize(torch.tensor([-1.0, 0.0, 3.0]), scale, zp, 8, signed=False)
    assert q.tolist()[0] == 0 and q.tolist()[2] == 255
    assert core.dequantize(q, scale, zp)[1].item() == 0.0  # zero is exact


def test_symmetric_needs_signed_grid():
    with pytest.raises(ValueError, match="signed"):
        core.qparams(torch.tensor(-1.0), torch.tensor(1.0), signed=False, symmetric=True)


def test_per_tensor_matches_torch_fake_quantize():
    x = torch.randn(64, 33) * 3
    for signed, symmetric in [(True, True), (False, False), (True, False)]:
        q_min, q_max = core.qrange(8, signed)
        scale, zp = core.qparams(x.min(), x.max(), 8, signed, symmetric)
        ours = core.fake_quantize(x, 8, signed=signed, symmetric=symmetric)
        theirs = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zp.item()), q_min, q_max)
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_matches_torch_fake_quantize(axis):
    x = torch.randn(16, 24, 3) * torch.linspace(0.1, 5, 24)[None, :, None]
    lo, hi = core.minmax(x, axis)
    scale, zp = core.qparams(lo, hi, 4, signed=False, symmetric=False)
    ours = core.fake_quantize(x, 4, signed=False, symmetric=False, axis=axis)
    theirs = torch.fake_quantize_per_channel_affine(x, scale.flatten(), zp.flatten().int(), axis % 3, 0, 15)
    assert torch.equal(ours, theirs)


def test_per_group_uses_one_scale_per_group():
    w = torch.randn(8, 64)
    w[:, 0] = 100.0  # an outlier only hurts its own group
    grouped = core.fake_quantize(w, 4, group_size=32)
    per_row = core.fake_quantize(w, 4, axis=0)
    err = lambda a: (a - w)[:, 32:].pow(2).mean()  # noqa: E731
    assert err(grouped) < err(per_row) / 100
    assert torch.equal(core.fake_quantize(w[:, 32:], 4, axis=0), grouped[:, 32:])


def test_ragged_last_group_is_its_own_group():
    w = torch.randn(4, 10)
    out = core.fake_quantize(w, 4, group_size=4)
    assert torch.equal(out[:, 8:], core.fake_quantize(w[:, 8:], 4, axis=0))
    with pytest.raises(ValueError, match="group_size"):
        core.fake_quantize(w, 4, group_size=0)


def test_axis_out_of_range():
    with pytest.raises(ValueError, match="axis"):
        core.fake_quantize(torch.randn(4, 10), 8, axis=2)


def test_noise_follows_delta_squared_over_twelve():
    x = torch.rand(200_000) * 2 - 1
    for bits in (6, 8, 10):
        scale, zp = core.qparams(x.min(), x.max(), bits, signed=False, symmetric=False)
        err = core.fake_quantize(x, bits, signed=False, symmetric=False) - x
        assert err.pow(2).mean().item() == pytest.approx(scale.item() ** 2 / 12, rel=0.05)
    gain = core.sqnr_db(x, core.fake_quantize(x, 9)) - core.sqnr_db(x, core.fake_quantize(x, 8))
    assert gain == pytest.approx(20 * math.log10(2), abs=0.3)  # about 6 dB per bit


def test_stochastic_rounding_is_unbiased_and_nearest_is_not():
    x = torch.full((100_000,), 0.3)
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    gen = torch.Generator().manual_seed(0)
    stochastic = core.quantize(x, one, zero, 8, rounding="stochastic", generator=gen).float().mean()
    assert stochastic.item() == pytest.approx(0.3, abs=0.01)
    assert core.quantize(x, one, zero, 8).float().mean().item() == 0.0
    with pytest.raises(ValueError, match="rounding"):
        core.round_values(x, "up")


def test_fixed_point_is_a_scale_of_two_to_minus_p():
    x = torch.tensor([0.1, -0.37, 0.5, 3.0])
    assert torch.equal(core.fixed_point(x, 4), torch.round(x * 16).clamp(-128, 127) / 16)
    assert core.fixed_point(torch.tensor([1.0]), 7).item() == pytest.approx(127 / 128)  # clips at q_max * 2^-p
    with pytest.raises(ValueError, match="frac_bits"):
        core.fixed_point(x, -1)


def test_minmax_observers_track_extremes():
    obs = observers.MinMaxObserver()
    for x in (torch.tensor([0.0, 1.0]), torch.tensor([-2.0, 0.5])):
        obs.update(x)
    assert [t.item() for t in obs.range()] == [-2.0, 1.0]
    avg = observers.MovingAverageObserver(momentum=0.5)
    avg.update(torch.tensor([0.0, 2.0]))
    avg.update(torch.tensor([0.0, 4.0]))
    assert avg.range()[1].item() == 3.0
    with pytest.raises(ValueError, match="momentum"):
        observers.MovingAverageObserver(momentum=0)


def test_percentile_and_mse_observers_clip_outliers():
    x = torch.randn(100_000)
    x[0] = 1000.0
    pct = observers.PercentileObserver(percentile=99.9)
    pct.update(x)
    assert 2.5 < pct.range()[1].item() < 4.0
    heavy = torch.distributions.Laplace(0.0, 1.0).sample((100_000,))  # long tails, like real weights
    mse = observers.MSEObserver(bits=4, symmetric=True)
    mse.update(heavy)
    lo, hi = mse.range()
    assert hi.item() < 0.8 * heavy.max().item()
    error = lambda approx: (approx - heavy).pow(2).mean().item()  # noqa: E731
    assert error(core.fake_quantize(heavy, 4, lo=lo, hi=hi)) < 0.7 * error(core.fake_quantize(heavy, 4))


def test_per_channel_observer_shapes_broadcast():
    obs = observers.make_observer("percentile", axis=1, percentile=99.0)
    obs.update(torch.randn(32, 5, 7))
    lo, hi = obs.range()
    assert lo.shape == (1, 5, 1) and (hi > lo).all()
    with pytest.raises(RuntimeError, match="no data"):
        observers.MinMaxObserver().range()
    with pytest.raises(ValueError, match="observer"):
        observers.make_observer("histogram")


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_pack_roundtrip_and_true_bytes(bits):
    q = torch.randint(-(2 ** (bits - 1)), 2 ** (bits - 1), (1001,))
    packed = pack.pack(q, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == pack.packed_bytes(1001, bits) == math.ceil(1001 * bits / 8)
    assert torch.equal(pack.unpack(packed, bits, 1001), q.int())


def test_pack_rejects_values_out_of_range():
    with pytest.raises(ValueError, match="4-bit"):
        pack.pack(torch.tensor([8]), 4)
    with pytest.raises(ValueError, match="bits"):
        pack.pack(torch.tensor([1]), 3)
    assert pack.packed_bytes(10, 3) == 5  # 3-bit codes take 4-bit slots


# --- the chapter's claims (effdl.experiments.quant_basics) on synthetic tensors: they hold where the
# technique works and fail where it is broken, so a claim in the notebook can fail


@pytest.fixture
def _claims():
    from effdl import claims

    claims.clear()
    yield claims
    claims.clear()


def test_noise_model_claims_hold_on_laplace_weights_and_fail_on_a_wrong_slope(fast_mode, _claims):
    from effdl.experiments import quant_basics as ex

    fit = ex.noise_model(torch.distributions.Laplace(0.0, 0.05).sample((100_000,)))
    ex.check_noise_model({"laplace": fit})
    assert fit.slope() == pytest.approx(ex.ONE_BIT_DB, abs=0.15) and fit.max_gap() < 0.5
    half_bits = ex.NoiseFit(fit.bits, fit.predicted, [m / 2 for m in fit.measured])  # 3 dB per bit
    with pytest.raises(_claims.ClaimFailed, match="dB per extra bit"):
        ex.check_noise_model({"broken": half_bits})


def test_rounding_granularity_observer_and_packing_claims_can_fail(fast_mode, _claims):
    from effdl.experiments import quant_basics as ex

    ex.check_rounding(ex.rounding_bias())
    with pytest.raises(_claims.ClaimFailed, match="stochastic"):
        ex.check_rounding({"stochastic": {"mean": 0.0}, "nearest": {"mean": 0.0}})
    uneven = torch.randn(64, 256) * torch.logspace(-1, 0, 64)[:, None]  # channels' ranges differ tenfold
    ex.check_granularity({"uneven": ex.granularity(uneven)})
    base = torch.randn(256)
    same_range = torch.stack([base[torch.randperm(256)] for _ in range(64)])  # every channel: the same values
    with pytest.raises(_claims.ClaimFailed, match="per-channel"):
        ex.check_granularity({"same range": ex.granularity(same_range)})
    tail = torch.distributions.Exponential(1.0).sample((200_000,)) ** 2  # one-sided, long-tailed
    sweep = ex.observer_sweep(tail, names=("minmax", "mse"), bits=(4,))
    ex.check_observers(sweep)
    with pytest.raises(_claims.ClaimFailed, match="MSE"):
        ex.check_observers({"mse": sweep["minmax"], "minmax": sweep["minmax"]})
    sizes = ex.packing(uneven)
    ex.check_packing(sizes)
    with pytest.raises(_claims.ClaimFailed, match="packed"):
        ex.check_packing(sizes | {"packed": sizes["int8"]})

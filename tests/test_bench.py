import time

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from effdl import bench, models


class Sleeper(nn.Module):
    """A model whose forward takes a known wall time, so timing can be checked without CPU noise."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_time_fn_finds_the_median_of_a_known_duration():
    timing = bench.time_fn(lambda: time.sleep(0.005), min_run_time=0.1, warmup=1)
    assert 0.005 <= timing.median < 0.008
    assert timing.iqr >= 0 and len(timing.times) >= 2 and timing.spread < 0.5
    with pytest.raises(ValueError, match="min_run_time"):
        bench.time_fn(lambda: None, min_run_time=0)


def test_time_fn_gives_a_spread_when_one_call_outlasts_the_budget():
    calls = []
    timing = bench.time_fn(lambda: (calls.append(1), time.sleep(0.03)), min_run_time=0.02, warmup=0)
    assert len(timing.times) == bench.MIN_BLOCKS and 0.03 <= timing.median < 0.045
    assert len(calls) <= bench.MIN_BLOCKS + 2  # the Timer's block-size estimate, then one call per block


def test_latency_and_throughput_of_a_model_with_known_speed():
    model = Sleeper(0.004)
    batch = torch.zeros(32, 3)
    assert 0.004 <= bench.latency(model, batch, min_run_time=0.1).median < 0.007
    assert 32 / 0.007 < bench.throughput(model, batch, min_run_time=0.1) <= 32 / 0.004
    assert not model.training  # latency() times the model in eval mode


def test_compare_latency_times_every_model_in_the_same_rounds():
    times = bench.compare_latency({"fast": Sleeper(0.002), "slow": Sleeper(0.006)}, torch.zeros(4, 3),
                                  rounds=2, min_run_time=0.05)  # fmt: skip
    assert 2.5 < times["slow"] / times["fast"] < 3.5
    with pytest.raises(ValueError, match="rounds"):
        bench.compare_latency({"fast": Sleeper(0.002)}, torch.zeros(4, 3), rounds=0)


def test_call_times_sees_each_call():
    calls = iter([0.0, 0.01, 0.0])
    times = bench.call_times(lambda: time.sleep(next(calls)), 3)
    assert times[1] >= 0.01 > times[0] and times[1] > times[2]
    with pytest.raises(ValueError, match="n must"):
        bench.call_times(lambda: None, 0)


def test_size_bytes_counts_storage_dtype_and_shared_weights(tmp_path):
    linear = nn.Linear(100, 10)
    assert bench.size_bytes(linear) == (100 * 10 + 10) * 4
    assert bench.size_bytes(linear.to(torch.bfloat16)) == (100 * 10 + 10) * 2
    bn = nn.BatchNorm1d(10)  # weight, bias, running mean/var (fp32) and a counter (int64)
    assert bench.size_bytes(bn) == 4 * 10 * 4 + 8
    tied = models.GPT(models.GPTConfig(vocab_size=50, context=8, n_layer=1, n_head=1, n_embd=16))
    assert bench.size_bytes(tied) == 4 * bench.param_count(tied)  # lm_head shares tok_emb: counted once
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(1000)}, str(path))
    assert 4000 <= bench.size_bytes(path) < 4300
    with pytest.raises(ValueError, match="obj"):
        bench.size_bytes(tmp_path / "missing.bin")


def test_size_bytes_counts_what_a_torchao_weight_holds():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    model = nn.Sequential(nn.Linear(256, 64, bias=False))
    quantize_(model, Int8WeightOnlyConfig())  # the weight becomes a tensor subclass that looks like fp32
    weight = model[0].weight
    assert weight.shape == (64, 256) and bench.tensor_bytes(weight) < 64 * 256 * 4 / 3
    assert 64 * 256 <= bench.size_bytes(model) <= 64 * 256 + 64 * 8  # int8 codes plus one scale per row


def test_parameter_bytes_leaves_buffers_out():
    bn = nn.BatchNorm1d(10)  # parameters: weight and bias; buffers: running statistics and a counter
    assert bench.parameter_bytes(bn) == 2 * 10 * 4 == bench.size_bytes(bn) - (2 * 10 * 4 + 8)
    assert bench.parameter_bytes(bn.to(torch.bfloat16)) == 2 * 10 * 2
    tied = models.GPT(models.GPTConfig(vocab_size=50, context=8, n_layer=1, n_head=1, n_embd=16))
    assert bench.parameter_bytes(tied) == 4 * bench.param_count(tied)  # the tied embedding counts once
    with pytest.raises(ValueError, match="model"):
        bench.parameter_bytes("weights.safetensors")


def test_flops_match_the_formula_for_linear_and_conv():
    assert bench.flops(nn.Linear(64, 32, bias=False), torch.randn(5, 64)) == 2 * 5 * 64 * 32
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert bench.flops(conv, torch.randn(1, 3, 10, 10)) == 2 * 10 * 10 * 8 * 3 * 9


def test_bytes_moved_counts_inputs_outputs_and_weights():
    linear = nn.Linear(256, 256, bias=False)
    x = torch.randn(1, 256)
    moved = bench.bytes_moved(lambda: linear(x))
    weight_bytes = 256 * 256 * 4
    assert weight_bytes <= moved < 1.1 * weight_bytes  # read once; the transposed view is free


def test_peak_memory_sees_a_large_temporary():
    n = 2**22  # 16 MiB of fp32

    def make_and_drop():
        a = torch.ones(n)
        b = a * 2
        return float(b[0])

    peak = bench.peak_memory(make_and_drop)
    assert 2 * 4 * n <= peak < 3 * 4 * n
    with pytest.raises(ValueError, match="device"):
        bench.peak_memory(make_and_drop, device="meta")


def test_machine_ceilings_are_plausible_and_roofline_bends():
    ceil = bench.machine()
    assert 1 < ceil.bandwidth_gbs < 5000 and 1 < ceil.read_gbs < 5000
    assert ceil.matmul_gflops["float32"] > 5
    knee = ceil.matmul_gflops["float32"] / ceil.bandwidth_gbs
    assert ceil.attainable_gflops(knee / 10) == pytest.approx(knee / 10 * ceil.bandwidth_gbs)
    assert ceil.attainable_gflops(knee * 10) == ceil.matmul_gflops["float32"]
    with pytest.raises(ValueError, match="intensity"):
        ceil.attainable_gflops(0)


def test_memory_bandwidth_counts_two_passes_for_a_copy_and_one_for_a_read(monkeypatch):
    calls = []

    def one_second(fn, **kwargs):
        calls.append(fn())  # the timed call runs: a copy returns its destination, a read its sum
        return bench.Timing(median=1.0, iqr=0.0, times=(1.0,))

    monkeypatch.setattr(bench, "time_fn", one_second)
    nbytes = 8 * 2**20
    assert bench.memory_bandwidth(mib=8, pattern="copy") == pytest.approx(2 * nbytes / 1e9)
    assert bench.memory_bandwidth(mib=8, pattern="read") == pytest.approx(nbytes / 1e9)
    assert calls[0].shape == (nbytes // 4,) and calls[1].item() == nbytes // 4  # a tensor of ones, summed
    with pytest.raises(ValueError, match="pattern"):
        bench.memory_bandwidth(mib=64, pattern="write")
    with pytest.raises(ValueError, match="mib"):
        bench.memory_bandwidth(mib=0)


def test_pareto_front_keeps_only_undominated_points():
    costs = [1, 2, 3, 4, 2.5]
    scores = [0.80, 0.85, 0.84, 0.90, 0.86]
    assert bench.pareto_front(costs, scores) == [0, 1, 4, 3]
    with pytest.raises(ValueError, match="equal length"):
        bench.pareto_front([1], [])


def test_matmul_gflops_shrinks_a_matmul_slower_than_its_budget(monkeypatch):
    sizes = []
    real = bench._square_matmul
    monkeypatch.setattr(bench, "_square_matmul", lambda n, *args: sizes.append(n) or real(n, *args))
    monkeypatch.setattr(bench, "MATMUL_CALL_BUDGET", 0.0)  # every size is "too slow": down to 256
    assert bench.matmul_gflops(torch.float32, n=1024) > 0 and sizes == [256, 256]  # the probe, then the timing
    monkeypatch.setattr(bench, "MATMUL_CALL_BUDGET", 60.0)
    sizes.clear()
    bench.matmul_gflops(torch.float32, n=512)
    assert sizes == [256, 512]


def test_compare_tokens_per_s_times_long_and_short_runs_and_checks_its_arguments():
    calls = []

    def run(n: int) -> None:  # a generator spending 5 ms per token
        calls.append(n)
        time.sleep(0.005 * n)

    speeds = bench.compare_tokens_per_s({"a": run}, new_tokens=4, rounds=2)
    assert calls == [2, 5, 1, 5, 1]  # a warm-up, then (new_tokens + 1, 1) per round
    assert 100 < speeds["a"] < 250  # 200 tokens/s, give or take the sleeps' overshoot
    with pytest.raises(ValueError, match="rounds"):
        bench.compare_tokens_per_s({"a": calls.append}, rounds=0)
    with pytest.raises(RuntimeError, match="no measurable time"):  # more tokens faster than one: no speed to report
        bench.compare_tokens_per_s({"a": lambda n: time.sleep(0.01 if n == 1 else 0)}, new_tokens=4, rounds=1)


def test_interleaved_times_keeps_one_mean_per_round():
    order = []
    times = bench.interleaved_times({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=2,
                                    warmup=0, calls_per_round=2)  # fmt: skip
    assert order == ["a", "a", "b", "b"] * 2  # each round: calls_per_round calls of each, in turn
    assert [len(t) for t in times.values()] == [2, 2] and all(s >= 0 for t in times.values() for s in t)
    with pytest.raises(ValueError, match="calls_per_round"):
        bench.interleaved_times({"a": lambda: None}, calls_per_round=0)


def test_compare_calls_interleaves_and_takes_medians():
    order = []
    seconds = bench.compare_calls({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, rounds=3)
    assert order == ["a", "b"] + ["a", "b"] * 3  # a warm-up each, then one call of each per round
    assert set(seconds) == {"a", "b"} and all(s >= 0 for s in seconds.values())
    with pytest.raises(ValueError, match="rounds"):
        bench.compare_calls({"a": lambda: None}, rounds=0)

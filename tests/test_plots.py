import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from effdl import bench, plots  # noqa: E402


def test_roofline_draws_each_roof_and_point():
    gflops = {"float32": 400.0, "bfloat16": 1600.0}
    ceil = bench.Ceilings("cpu", bandwidth_gbs=20.0, read_gbs=25.0, matmul_gflops=gflops)
    ax = plots.roofline(ceil, {"a": (0.5, 8.0), "b": (100.0, 300.0)})
    assert len(ax.lines) == 3 and len(ax.collections) == 2
    roof = ax.lines[0].get_ydata()
    assert roof.max() == pytest.approx(400.0) and roof.min() < 20.0  # flat roof and a slope
    with pytest.raises(ValueError, match="points"):
        plots.roofline(ceil, {})


def test_frontier_connects_only_pareto_points():
    ax = plots.frontier([1, 2, 3], [0.9, 0.8, 0.95], ["a", "b", "c"])
    xs = list(ax.lines[0].get_xdata())
    assert xs == [1, 3]
    with pytest.raises(ValueError, match="equal length"):
        plots.frontier([1], [0.5, 0.6], ["a"])

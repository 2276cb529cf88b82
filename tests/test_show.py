import pytest

import effdl


def test_show_returns_the_highlighted_source():
    code = effdl.show(effdl.bench.latency)
    assert "def latency" in code.data and "time_fn" in code.data
    assert "latency" in code._repr_html_()


def test_show_rejects_objects_without_source():
    with pytest.raises(ValueError, match="obj"):
        effdl.show(42)

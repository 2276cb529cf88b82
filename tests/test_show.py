import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import effdl


@pytest.fixture(autouse=True)
def _shell():
    """A notebook-like IPython shell, so that display() publishes rich outputs as in Jupyter."""
    return InteractiveShell.instance()


def test_show_displays_the_highlighted_source_wherever_it_is_called():
    with capture_output() as captured:
        result = effdl.show(effdl.bench.latency)
    assert result is None
    (output,) = captured.outputs
    assert "def latency" in output.data["text/plain"] and "time_fn" in output.data["text/plain"]
    assert "highlight" in output.data["text/html"]


def test_show_rejects_objects_without_source():
    with pytest.raises(ValueError, match="obj"):
        effdl.show(42)


def test_glue_stores_a_hidden_value_for_the_prose():
    with capture_output() as captured:
        assert effdl.glue("acc_int8", 0.9123) == 0.9123
    (output,) = captured.outputs
    assert output.metadata["scrapbook"]["name"] == "acc_int8"
    with pytest.raises(ValueError, match="name"):
        effdl.glue("not a key", 1.0)

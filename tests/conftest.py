"""Shared test settings: every test runs in fast mode, on the CPU, with fixed seeds."""

import os

os.environ.setdefault("EFFDL_FAST", "1")

import pytest  # noqa: E402

import effdl  # noqa: E402


@pytest.fixture(autouse=True)
def _seeded():
    effdl.seed_everything(0)
    yield


@pytest.fixture(scope="session")
def fast_mode() -> bool:
    assert effdl.FAST, "the test suite must run with EFFDL_FAST=1"
    return True


@pytest.fixture(scope="session")
def pt2e_cnn():
    """The fast CNN through torchao's PT2E flow: model, calibration images, the converted reference graph and
    its frozen compilation (compiled at its first call; shared, since compiling takes seconds)."""
    from effdl import zoo
    from effdl.experiments._shared import calibration_images
    from effdl.quant import model as qmodel

    model = zoo.pretrained("cnn-fmnist").model.eval().cpu()
    calib = calibration_images()
    reference = qmodel.pt2e_int8(model, calib, calib[0])
    return model, calib, reference, qmodel.compile_int8(reference)

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

import os
import subprocess
import sys

import pytest
import torch

from effdl import config


def test_fast_mode_is_on_in_tests(fast_mode):
    assert config.FAST and config.mode() == "fast"


def test_pick_returns_fast_value_and_validates():
    assert config.pick(fast=1, full=8) == 1
    assert config.pick(fast=0.5, full=2) == 0.5
    assert config.pick(fast=100, full=None) == 100
    with pytest.raises(ValueError, match="fast"):
        config.pick(fast=-1, full=8)
    with pytest.raises(ValueError, match="share a type"):
        config.pick(fast="a", full=8)


def test_pick_full_mode_in_a_fresh_process():
    code = "from effdl.config import pick; print(pick(fast=1, full=8))"
    env = {**os.environ, "EFFDL_FAST": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "8"


def test_bad_fast_flag_is_rejected():
    code = "import effdl.config"
    env = {**os.environ, "EFFDL_FAST": "maybe"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "EFFDL_FAST" in out.stderr


def test_device_is_a_torch_device():
    dev = config.device()
    assert dev.type in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        assert dev.type in {"mps", "cpu"}


def test_seed_everything_repeats_and_validates():
    config.seed_everything(7)
    a = torch.randn(3)
    config.seed_everything(7)
    assert torch.equal(a, torch.randn(3))
    with pytest.raises(ValueError, match="seed"):
        config.seed_everything(-1)


def test_cache_dir_honours_env_and_rejects_escapes(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path))
    path = config.cache_dir("zoo")
    assert path == tmp_path / "zoo" and path.is_dir()
    with pytest.raises(ValueError, match="part"):
        config.cache_dir("../outside")

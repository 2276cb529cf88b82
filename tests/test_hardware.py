"""effdl.experiments.hardware (fast mode): the roofline arithmetic, the GPT's matmul shapes, speed verdicts, the
claims on made-up results, the PNG pipeline's pixels, the graph-break study, and the exercises' self-checks."""

import pytest
import torch
from torch import nn

from effdl import claims, data
from effdl.experiments import hardware as ex


def test_intensity_and_ridge_arithmetic():
    assert ex.intensity(2, 2, 2) == pytest.approx(16 / (4 * 12))  # 2*8 FLOPs over 12 fp32 numbers
    assert ex.intensity(4096, 192, 576) > ex.intensity(64, 192, 576)  # more tokens reuse the weight more
    assert ex.bound_by(10.0, 5.0) == "compute-bound" and ex.bound_by(1.0, 5.0) == "memory-bound"
    h100, tpu = ex.published_ridges().values()
    assert h100 == pytest.approx(989e12 / 3.35e12) and tpu == pytest.approx(92e12 / 34e9)


def test_linear_shapes_are_the_gpts_weights():
    model = ex.gpt()
    weights = {tuple(m.weight.shape[::-1]) for m in model.modules() if isinstance(m, nn.Linear)}
    shapes = ex.linear_shapes()
    assert {(k, n) for _, k, n in shapes.values()} == weights
    assert {m for m, _, _ in shapes.values()} == {ex.BATCH * ex.gpt_config().context}
    assert ex.gpt_config().n_layer == 2 and ex.gpt_config().context == 64  # fast mode's recipe shape


def test_speedup_ratio_and_verdict():
    assert ex.Speedup([2.0, 2.1, 1.9], [1.0, 1.05, 0.95]).ratio == pytest.approx(2.0)
    assert ex.Speedup([2.0, 2.1, 1.9], [1.0, 1.05, 0.95]).verdict() == "faster"
    assert ex.Speedup([1.0, 1.05, 0.95], [2.0, 2.1, 1.9]).verdict() == "slower"
    assert ex.Speedup([1.0, 1.3, 0.7], [1.02, 0.72, 1.31]).verdict() == "no measurable difference"
    assert ex.gpu_note(None) == "no GPU here: skipped"


def test_claims_hold_on_good_results_and_fail_on_bad_ones():
    good = ex.PrecisionRun({"fp32": [2.0], "bf16": [2.01]}, {}, {"fp32": [1.0, 1.1], "bf16": [0.5, 0.6]})
    assert ex.check_precision(good) == pytest.approx(0.005)
    assert "one seed" in good.noise()
    seeds = ex.PrecisionRun({"fp32": [3.2, 3.1, 2.8], "bf16": [3.3, 3.3, 2.7]}, {}, good.seconds)
    assert seeds.noise() == "over the seeds the two losses show no measurable difference"
    apart = ex.PrecisionRun({"fp32": [2.0, 2.01, 1.99], "bf16": [2.5, 2.51, 2.49]}, {}, good.seconds)
    assert apart.noise().endswith("measurably higher than fp32's")
    with pytest.raises(claims.ClaimFailed):
        ex.check_precision(ex.PrecisionRun({"fp32": [2.0], "bf16": [2.5]}, {}, good.seconds))
    study = ex.CheckpointStudy({0: 100.0, 1: 70.0, 2: 40.0}, {0: [1.0, 1.0], 1: [1.1, 1.1], 2: [1.3, 1.3]}, 0.0)
    assert ex.check_checkpoint(study) == pytest.approx(0.6) and study.slowdown() == pytest.approx(1.3)
    with pytest.raises(claims.ClaimFailed):
        ex.check_checkpoint(ex.CheckpointStudy({0: 100.0, 2: 95.0}, study.seconds, 0.0))
    with pytest.raises(claims.ClaimFailed):
        ex.check_accumulation(ex.Accumulation(1e-3, 0.0, 0.1, {}))


def test_gradients_underflow_in_fp16_unless_scaled():
    logits = torch.full((1000,), 1e-7)  # a typical logit gradient: probability / tokens in the batch
    plain, scaled = ex.check_underflow(ex.Gradients(logits, logits))
    assert plain.subnormal == 1 and scaled == ex.steps.Underflow(0.0, 0.0, 0.0)
    assert ex.GRADSCALER_INIT == 2.0**16


def test_png_dataset_decodes_to_the_book_images():
    dataset = ex.png_dataset(augment=False)
    images, labels = data.fashion_mnist("train", limit=ex.LOADER_IMAGES).tensors
    assert len(dataset) == ex.LOADER_IMAGES
    for i in (0, 17, ex.LOADER_IMAGES - 1):
        x, y = dataset[i]
        assert torch.allclose(x, images[i], atol=1e-5) and y == labels[i]


def test_graph_break_study_finds_the_break_and_the_fix_keeps_the_logits():
    broken, fixed, gap = ex.graph_break_study()
    assert broken.breaks >= 1 and fixed.breaks == 0 and gap <= 1e-6
    x = torch.randn(64, 32)

    def standardize(t: torch.Tensor) -> torch.Tensor:
        return (t - t.mean()) / t.std().clamp_min(1e-5)

    assert ex.self_check_graph_break(standardize)
    assert not ex.self_check_graph_break(ex.standardize_broken)  # right values, but a break
    assert not ex.self_check_graph_break(lambda t: (t - t.mean()) / t.std())  # no break, but NaN on a constant
    assert torch.allclose(standardize(x), ex.standardize_broken(x), atol=1e-6)


def test_memory_self_checks(monkeypatch):
    study = ex.CheckpointStudy({0: 100.0, 1: 80.0, 2: 40.0}, {}, 0.0)
    monkeypatch.setattr(ex, "checkpoint_study", lambda: study)
    assert ex.self_check_checkpoint_peak(1, 85.0) and not ex.self_check_checkpoint_peak(1, 60.0)
    with pytest.raises(ValueError, match="count"):
        ex.self_check_checkpoint_peak(5, 10.0)
    result = ex.Accumulation(0.0, 0.0, 0.1, {1: 20.0, 2: 10.0, 4: 5.0, 8: 2.5})
    monkeypatch.setattr(ex, "accumulation_study", lambda: result)
    assert ex.exercise_budget_mb() == 15.0
    assert ex.self_check_micro_batches(2, 15.0) and not ex.self_check_micro_batches(4, 15.0)
    with pytest.raises(ValueError, match="budget_mb"):
        ex.self_check_micro_batches(8, 1.0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_gpu_studies_are_skipped_without_a_gpu():
    assert ex.cuda_graph_study() is None and ex.pinned_copy_study() is None

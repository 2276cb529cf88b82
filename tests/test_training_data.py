"""The experiments module of ``chap-data``: stored bytes, the scraped corpus and its detection, the verdicts of
the data-fraction curve, the pitfalls' arithmetic and the exercises' self-checks (no long training)."""

import random

import pytest
import torch

from effdl import claims, data
from effdl.curate import dedup, scores
from effdl.experiments import training_data as ex


def test_stored_images_are_the_bytes_behind_the_normalized_images():
    raw, labels = ex.stored_images(limit=64)
    assert raw.dtype == torch.uint8 and raw.shape == (64, 28, 28)
    images, expected = data.fashion_mnist("train", limit=64).tensors
    assert torch.equal(labels, expected)
    assert torch.allclose(ex.loading.normalize_images(raw, data.FMNIST_MEAN, data.FMNIST_STD), images, atol=1e-6)


def test_every_loader_variant_serves_every_image():
    raw, labels = ex.stored_images(limit=600)
    variants = ex.loader_variants(raw, labels)
    assert len(variants) == 5 and all(serve() == 600 for serve in variants.values())


def test_loading_claim_reads_the_ratio():
    result = ex.Loading({"per example": 1000.0, "once, then slices": 9000.0}, 0.01, 500.0)
    assert ex.check_loading(result) == pytest.approx(9.0)
    with pytest.raises(claims.ClaimFailed):
        ex.check_loading(ex.Loading({"per example": 1000.0, "once, then slices": 1500.0}, 0.01, 500.0))


def _run(val: float, test: float) -> ex.Run:
    return ex.Run([val], test, torch.ones(4, dtype=torch.bool))


def test_curve_chooses_on_validation_and_finds_where_selection_pays():
    runs = {}
    for f, (hard, easy, rand) in {0.1: (0.60, 0.70, 0.75), 0.3: (0.78, 0.70, 0.77), 0.5: (0.82, 0.74, 0.80)}.items():
        for keep, base in (("hard", hard), ("easy", easy), ("random", rand)):
            runs[f, keep] = [_run(base + 0.001 * s, base + 0.001 * s) for s in range(3)]
    runs[1.0, "random"] = [_run(0.83, 0.83)] * 3
    curve = ex.Curve(runs)
    assert curve.chosen(0.1) == "easy" and curve.chosen(0.5) == "hard"
    assert curve.gain(0.5).value == pytest.approx(2.0) and curve.gain(0.5).verdict() == "higher"
    assert curve.gain(0.1).verdict() == "lower"
    assert curve.pays_from() == 0.3
    assert ex.self_check_pays_from(0.3, curve) and not ex.self_check_pays_from(0.5, curve)
    with pytest.raises(claims.ClaimFailed):  # the chapter's claim is what its budget shows: selection loses
        ex.check_selection(curve)
    losing = ex.Curve({k: ([_run(0.5, 0.5)] * 3 if k[1] == "hard" else v) for k, v in runs.items()})
    assert ex.check_selection(losing).value == pytest.approx(-6.0)  # easy is now chosen at half


def test_scraped_text_plants_copies_and_detection_counts_them():
    text = ex.split_text("train", 40_000)
    corpus = ex.scraped(text, share=0.25, seed=1)
    copies = sum(len(members) - 1 for members in corpus.groups().values())
    planted_chars = sum(len(p) for p, s, first in zip(corpus.passages, corpus.source, _firsts(corpus), strict=True)
                        if s is not None and not first)  # fmt: skip
    assert copies > 10 and planted_chars / len(corpus.text()) == pytest.approx(0.25, abs=0.03)
    assert any(corpus.near) and not all(n for n, s in zip(corpus.near, corpus.source, strict=True) if s is not None)
    found = ex.find_duplicates(corpus.passages)
    result = ex.detection(corpus, found)
    assert result.planted == copies and result.lost == 0
    assert result.removed_exact > 0 and result.removed_near > 0 and result.recall > 0.9
    nothing = ex.detection(corpus, ex.Duplicates(corpus.passages, [], []))
    assert nothing.recall == 0 and nothing.others_dropped == 0
    with pytest.raises(ValueError, match="share"):
        ex.scraped(text, share=1.0)


def _firsts(corpus: ex.Scraped) -> list[bool]:
    """Whether each passage is the first of its group (a copy's source stays counted as an original)."""
    seen, firsts = set(), []
    for s in corpus.source:
        firsts.append(s is not None and s not in seen)
        seen.add(s)
    return firsts


def test_near_copy_is_near_but_not_exact():
    passage = "When shall we three meet again in thunder, lightning, or in rain?"
    copy = ex.near_copy(passage, random.Random(0))
    assert dedup.normalize(copy) != dedup.normalize(passage) and dedup.jaccard(copy, passage) > 0.6


def test_deduplicated_text_keeps_first_copies():
    found = ex.Duplicates(["a" * 70, "b" * 70, "a" * 70], [2], [])
    assert found.kept_text() == "a" * 70 + "\n\n" + "b" * 70 and found.dropped_chars() == 70


def test_test_selection_optimism_is_positive_for_equal_models_and_zero_for_one():
    correct = torch.rand(20, 2000, generator=torch.Generator().manual_seed(0)) < 0.8  # 20 equally good models
    reported, fresh = ex.test_selection_optimism(correct)
    assert reported - fresh > 0.005 and abs(fresh - 0.8) < 0.01
    assert ex.check_test_selection(reported, fresh) > 0
    twins = torch.stack([correct[0], correct[0]])
    assert ex.test_selection_optimism(twins)[0] == pytest.approx(ex.test_selection_optimism(twins)[1], abs=0.01)
    with pytest.raises(ValueError, match="correct"):
        ex.test_selection_optimism(correct[0])


def test_augment_gain_and_best_policy_read_the_runs():
    runs = {"none": [_run(0.80, 0.80), _run(0.81, 0.81)], "flip": [_run(0.82, 0.79), _run(0.83, 0.80)],
            "flip+crop": [_run(0.79, 0.85), _run(0.80, 0.86)]}  # fmt: skip
    assert ex.best_policy(runs) == "flip"  # chosen on validation, whatever test says
    assert ex.augment_gain(runs, "flip").value == pytest.approx(-1.0)
    assert ex.augment_gain(runs, "flip", epoch=1).value == pytest.approx(2.0)
    with pytest.raises(ValueError, match="policy"):
        ex.augment_run("mixup", 0)


def test_leak_claim_and_dedup_gain():
    losses = {"clean": {"val": 2.5, "test": 2.4}, "leaked": {"val": 1.2, "test": 2.39}}
    assert ex.check_leak(losses) == pytest.approx(1.3)
    with pytest.raises(claims.ClaimFailed):
        ex.check_leak({"clean": losses["clean"], "leaked": {"val": 2.45, "test": 2.39}})  # a drop of 0.05 nats
    runs = {"scraped": [{"val": 2.6}, {"val": 2.62}], "deduplicated": [{"val": 2.5}, {"val": 2.52}]}
    assert ex.dedup_gain(runs).value == pytest.approx(0.1)


def test_ngram_loss_memorizes_what_it_counted():
    ids = ex.encode(ex.split_text("train", 5000))
    other = ex.encode(ex.split_text("val", 2000))
    assert ex.ngram_loss(ids, ids[:2000]) < 0.5 * ex.ngram_loss(ids, other)
    uniform = ex.ngram_loss(ids[:10], other, order=1, k=1e6)  # huge smoothing: every character equally likely
    assert uniform == pytest.approx(torch.log(torch.tensor(float(ex.data.shakespeare().tokenizer.vocab_size))).item(),
                                    rel=1e-3)  # fmt: skip
    with pytest.raises(ValueError, match="order"):
        ex.ngram_loss(ids, other, order=0)


def test_self_check_el2n():
    assert ex.self_check_el2n(lambda z, y: (z.softmax(-1) - torch.nn.functional.one_hot(y, 10)).norm(dim=1))
    assert not ex.self_check_el2n(lambda z, y: (z.softmax(-1) - torch.nn.functional.one_hot(y, 10)).abs().sum(1))
    assert not ex.self_check_el2n(lambda z, y: scores.el2n(z, y)[:10])


def test_self_check_threshold_rejects_too_strict_and_too_loose():
    corpus = ex.scraped(ex.split_text("train", 30_000), share=0.2, seed=3)
    assert ex.self_check_threshold(0.5, corpus)
    assert not ex.self_check_threshold(1.0, corpus)  # near copies are missed
    assert not ex.self_check_threshold(0.05, corpus)  # so loose that a passage that is no planted copy is dropped

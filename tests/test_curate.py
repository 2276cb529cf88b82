"""effdl.curate: example scores, subset selection, text deduplication, batch augmentations and loaders."""

import math
import random

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from effdl.curate import augment, dedup, loading, scores, selection

# --- scores -------------------------------------------------------------------------------------------


def test_el2n_is_the_norm_of_the_error_vector():
    logits = torch.tensor([[10.0, -10.0, -10.0], [0.0, 0.0, 0.0], [-10.0, 10.0, -10.0]])
    labels = torch.tensor([0, 1, 0])
    found = scores.el2n(logits, labels)
    assert found[0] < 1e-3  # confident and right
    assert found[1] == pytest.approx(math.sqrt((2 / 3) ** 2 + 2 * (1 / 3) ** 2), abs=1e-6)  # uniform
    assert found[2] == pytest.approx(math.sqrt(2), abs=1e-3)  # confident and wrong: the maximum
    with pytest.raises(ValueError, match="logits"):
        scores.el2n(logits, labels[:2])


def test_forgetting_counts_correct_then_wrong_and_ranks_never_learned_highest():
    counter = scores.ForgettingCounter(4)
    history = [[1, 1, 0, 1], [0, 1, 0, 1], [1, 1, 0, 0], [0, 1, 0, 1]]  # per presentation, examples 0..3
    for correct in history:
        counter.update(torch.arange(4), torch.tensor(correct, dtype=torch.bool))
    assert counter.scores().tolist() == [2, 0, 3, 1]  # example 2 never learned: one more than the maximum
    counter.update(torch.tensor([3]), torch.tensor([False]))  # a partial batch updates only its examples
    assert counter.scores().tolist() == [2, 0, 3, 2]
    with pytest.raises(ValueError, match="n must be positive"):
        scores.ForgettingCounter(0)
    with pytest.raises(ValueError, match="correct"):
        counter.update(torch.arange(2), torch.ones(2))


def test_class_mean_distance_matches_a_loop():
    features, labels = torch.randn(30, 1, 4, 4), torch.randint(0, 3, (30,))
    found = scores.class_mean_distance(features, labels)
    for i in range(30):
        mean = features[labels == labels[i]].flatten(1).mean(0)
        assert found[i] == pytest.approx(float((features[i].flatten() - mean).norm()), rel=1e-5)
    with pytest.raises(ValueError, match="same length"):
        scores.class_mean_distance(features, labels[:5])


def test_spearman_matches_scipy_with_ties():
    a = torch.randint(0, 5, (200,)).float()
    b = a + torch.randn(200)
    assert scores.spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-9)
    assert scores.spearman(a, -a) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same length"):
        scores.spearman(a, b[:10])


# --- selection ----------------------------------------------------------------------------------------


def test_select_keeps_the_highest_lowest_or_random_fraction():
    s = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 9.0, 8.0, 7.0, 6.0])
    assert selection.select(s, 0.3, "hard").tolist() == [6, 7, 8]
    assert selection.select(s, 0.2, "easy").tolist() == [1, 5]
    rand = selection.select(s, 0.5, "random", seed=3)
    assert len(rand) == 5 and len(set(rand.tolist())) == 5
    assert torch.equal(rand, selection.select(s, 0.5, "random", seed=3))
    assert selection.select(s, 1.0, "hard").tolist() == list(range(10))
    for bad in ({"fraction": 0.0}, {"fraction": 1.5}):
        with pytest.raises(ValueError, match="fraction"):
            selection.select(s, **bad)
    with pytest.raises(ValueError, match="keep"):
        selection.select(s, 0.5, "middle")


def test_select_balances_classes_when_given_labels():
    labels = torch.tensor([0] * 80 + [1] * 20)
    s = torch.cat([torch.linspace(1, 2, 80), torch.linspace(0, 0.5, 20)])  # class 0 is all harder
    assert (labels[selection.select(s, 0.1, "hard")] == 0).all()
    kept = selection.select(s, 0.1, "hard", labels=labels)
    assert torch.bincount(labels[kept]).tolist() == [8, 2]
    assert kept[-1] == 99 and 79 in kept.tolist()  # the hardest of each class


def test_step_batches_give_the_same_steps_whatever_the_subset():
    small, large = torch.arange(10, 20), torch.arange(1000)
    for subset in (small, large):
        batches = selection.step_batches(subset, steps=30, batch_size=8, seed=0)
        assert len(batches) == 30 and all(len(b) == 8 for b in batches)
        assert set(torch.cat(batches).tolist()) <= set(subset.tolist())
    counts = torch.bincount(torch.cat(selection.step_batches(small, 30, 8)))[10:20]
    assert counts.tolist() == [24] * 10  # 240 draws in whole passes: each example equally often
    with pytest.raises(ValueError, match="steps"):
        selection.step_batches(small, 0, 8)


# --- deduplication ------------------------------------------------------------------------------------

SPEECH = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and "
          "arrows of outrageous fortune, or to take arms against a sea of troubles")  # fmt: skip


def test_exact_duplicates_ignore_case_and_whitespace_and_keep_the_first():
    docs = ["A b  c", "x", "a B\nc", "y", "x "]
    assert dedup.exact_duplicates(docs) == [2, 4]
    assert dedup.normalize("  Hello\n\tWORLD ") == "hello world"


def test_shingles_and_jaccard():
    assert dedup.shingles("abcdef", 3) == {"abc", "bcd", "cde", "def"}
    assert dedup.shingles("ab", 3) == {"ab"}
    assert dedup.jaccard("abcd", "abce", 2) == pytest.approx(2 / 4)  # {ab, bc} shared of {ab, bc, cd, ce}
    with pytest.raises(ValueError, match="n must be positive"):
        dedup.shingles("abc", 0)


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    words = SPEECH.split()
    variants = [" ".join(w for w in words if rng.random() > drop) for drop in (0.0, 0.05, 0.2, 0.5)]
    signatures = dedup.minhash([SPEECH, *variants, "something else entirely, about kings and crowns"], num_perm=256)
    for i, text in enumerate(variants, start=1):
        estimate = float(np.mean(signatures[0] == signatures[i]))
        assert estimate == pytest.approx(dedup.jaccard(SPEECH, text), abs=0.1)
    assert np.mean(signatures[0] == signatures[-1]) < 0.05
    assert np.array_equal(signatures, dedup.minhash([SPEECH, *variants, "something else entirely, about kings and "
                                                     "crowns"], num_perm=256))  # fmt: skip


def test_near_duplicates_find_planted_copies_and_nothing_else():
    rng = random.Random(1)
    words = SPEECH.split()
    others = [" ".join(rng.sample(words, len(words))) + f" {i}" for i in range(40)]  # same words, shuffled
    near = SPEECH.replace("outrageous", "OUTRAGEOUS").replace("the question", "a question")
    docs = [SPEECH, *others[:20], near, *others[20:], SPEECH.upper()]
    pairs = dedup.near_duplicates(dedup.minhash(docs, num_perm=64), threshold=0.7, bands=16)
    assert {(i, j) for i, j, _ in pairs} == {(0, 21), (0, 42)}
    assert all(s >= 0.7 for *_, s in pairs)
    with pytest.raises(ValueError, match="bands"):
        dedup.near_duplicates(dedup.minhash(docs, num_perm=64), bands=5)
    with pytest.raises(ValueError, match="threshold"):
        dedup.near_duplicates(dedup.minhash(docs, num_perm=64), threshold=0)


# --- augmentation -------------------------------------------------------------------------------------


def test_flip_and_crop_move_pixels_and_keep_shapes():
    x = torch.randn(16, 1, 8, 8)
    assert torch.equal(augment.random_flip(x, p=1.0), x.flip(-1))
    assert torch.equal(augment.random_flip(x, p=0.0), x)
    assert torch.equal(augment.random_crop(x, pad=0), x)
    shifted = augment.random_crop(x, pad=2)
    assert shifted.shape == x.shape and not torch.equal(shifted, x)
    centre = x[:, :, 2:6, 2:6]  # every shift of at most 2 keeps the centre's values somewhere in the image
    for i in range(16):
        windows = shifted[i, 0].unfold(0, 4, 1).unfold(1, 4, 1).reshape(-1, 4, 4)
        assert any(torch.equal(w, centre[i, 0]) for w in windows)
    with pytest.raises(ValueError, match="pad"):
        augment.random_crop(x, pad=-1)
    with pytest.raises(ValueError, match="batch"):
        augment.random_flip(x[0])


def test_random_erasing_blanks_one_rectangle_within_the_scale():
    x = torch.ones(200, 1, 28, 28)
    erased = augment.random_erasing(x, p=1.0, scale=(0.05, 0.2), value=0.0)
    area = (erased == 0).flatten(1).sum(1).double() / (28 * 28)
    assert (area > 0.03).all() and (area < 0.25).all()
    rows, cols = (erased[:, 0] == 0).any(2), (erased[:, 0] == 0).any(1)
    assert torch.equal(rows.sum(1) * cols.sum(1), (erased[:, 0] == 0).flatten(1).sum(1))  # a rectangle
    assert torch.equal(augment.random_erasing(x, p=0.0), x)
    with pytest.raises(ValueError, match="scale"):
        augment.random_erasing(x, scale=(0.5, 0.1))


def test_compose_applies_in_order():
    double, plus_one = (lambda x: 2 * x), (lambda x: x + 1)
    x = torch.ones(1, 1, 2, 2)
    assert torch.equal(augment.compose(double, plus_one)(x), 3 * x)
    assert torch.equal(augment.compose()(x), x)


# --- loading ------------------------------------------------------------------------------------------


def test_every_loader_serves_the_same_normalized_images():
    raw, labels = torch.randint(0, 256, (50, 4, 4), dtype=torch.uint8), torch.arange(50)
    ready = loading.normalize_images(raw, 0.5, 0.25)
    assert ready.shape == (50, 1, 4, 4)
    assert torch.allclose(ready[3, 0], (raw[3].float() / 255 - 0.5) / 0.25)
    per_example = loading.PerExampleImages(raw, labels, 0.5, 0.25)
    assert len(per_example) == 50 and torch.equal(per_example[7][0], ready[7])
    served = list(loading.slice_batches(ready, labels, 16, seed=1))
    assert [len(y) for _, y in served] == [16, 16, 16, 2]
    x, y = torch.cat([b[0] for b in served]), torch.cat([b[1] for b in served])
    assert sorted(y.tolist()) == list(range(50)) and torch.equal(x, ready[y])
    with pytest.raises(ValueError, match="uint8"):
        loading.normalize_images(ready, 0.5, 0.25)
    with pytest.raises(ValueError, match="batch_size"):
        next(loading.slice_batches(ready, labels, 0))

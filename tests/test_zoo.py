import json

import pytest
import torch

from effdl import zoo


@pytest.mark.slow
@pytest.mark.parametrize("name,threshold", [("cnn-fmnist", 0.80), ("resnet-fmnist", 0.80)])
def test_image_baselines_reach_their_fast_mode_accuracy(name, threshold):
    baseline = zoo.pretrained(name)
    assert baseline.metrics["test_accuracy"] >= threshold
    assert not baseline.model.training


@pytest.mark.slow
def test_gpt_baseline_learns_shakespeare_and_generates():
    baseline = zoo.pretrained("gpt-shakespeare")
    assert baseline.metrics["val_loss"] <= 2.6  # fast mode; uniform guessing is ~4.4 nats/char
    from effdl.data import shakespeare

    tok = shakespeare().tokenizer
    out = baseline.model.generate(tok.encode("ROMEO.\n")[None], new_tokens=40)
    assert len(tok.decode(out[0])) == 47


@pytest.mark.slow
def test_cache_round_trip_is_exact_and_pickle_free():
    first = zoo.pretrained("cnn-fmnist")
    again = zoo.pretrained("cnn-fmnist")
    for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    weights, card = zoo._paths(first.recipe)
    assert weights.suffix == ".safetensors"
    assert json.loads(card.read_text())["metrics"] == again.metrics


def test_recipe_keys_change_with_every_field():
    base = zoo.recipe("cnn-fmnist")
    assert zoo.recipe("cnn-fmnist", width=8).key() != base.key()
    assert zoo.recipe("cnn-fmnist", epochs=3).key() != base.key()
    assert zoo.recipe("cnn-fmnist").key() == base.key()
    assert zoo.build(zoo.recipe("cnn-fmnist", width=8, depth=1).arch)(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_optional_arch_fields_make_new_keys_and_old_recipes_keep_theirs():
    base = zoo.recipe("gpt-shakespeare")
    assert "n_kv_head" not in base.arch
    mqa = zoo.recipe("gpt-shakespeare", n_kv_head=1)
    assert mqa.arch["n_kv_head"] == 1 and mqa.key() != base.key()
    assert zoo.build(mqa.arch).blocks[0].attn.n_kv_head == 1
    with pytest.raises(ValueError, match="n_kv_head"):
        zoo.recipe("cnn-fmnist", n_kv_head=1)
    separable = zoo.recipe("cnn-fmnist", separable=True, resolution=20)
    assert "separable" not in zoo.recipe("cnn-fmnist").arch and separable.key() != zoo.recipe("cnn-fmnist").key()
    assert zoo.build(separable.arch).resize.size == 20


def test_unknown_names_and_fields_are_rejected():
    with pytest.raises(ValueError, match="name"):
        zoo.pretrained("vgg-imagenet")
    with pytest.raises(ValueError, match="colour"):
        zoo.recipe("cnn-fmnist", colour="red")
    with pytest.raises(ValueError, match="kind"):
        zoo.build({"kind": "vgg"})


def test_lenet_is_a_model_but_not_one_of_the_baselines_every_chapter_loads():
    lenet = zoo.build(zoo.recipe("lenet-fmnist").arch)
    assert sum(p.numel() for p in lenet.parameters()) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert "lenet-fmnist" in zoo.MODEL_NAMES and "lenet-fmnist" not in zoo.NAMES

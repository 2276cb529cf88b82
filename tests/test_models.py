import pytest
import torch

from effdl import bench, models


@pytest.mark.parametrize("width,depth", [(8, 1), (16, 2), (8, 4)])
def test_cnn_shapes_for_widths_and_depths(width, depth):
    model = models.CNN(width, depth)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_cnn_cost_grows_with_width():
    x = torch.randn(1, 1, 28, 28)
    small, large = models.CNN(8, 2), models.CNN(32, 2)
    assert bench.param_count(large) > 3 * bench.param_count(small)
    assert bench.flops(large, x) > 8 * bench.flops(small, x)


def test_resnet_shapes_and_projection_shortcuts():
    model = models.ResNet((8, 16), (2, 1))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert len(model.stages[1][0].shortcut) == 2  # 1x1 conv + BN where the shape changes
    assert len(model.stages[0][1].shortcut) == 0


@pytest.mark.parametrize("kwargs,match", [
    ({"width": 0}, "width"), ({"depth": -1}, "depth"), ({"dropout": 1.0}, "dropout"),
])  # fmt: skip
def test_cnn_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        models.CNN(**kwargs)


def test_resnet_rejects_bad_arguments():
    with pytest.raises(ValueError, match="equally long"):
        models.ResNet((8, 16), (1,))
    with pytest.raises(ValueError, match="blocks"):
        models.ResNet((8,), (0,))


def test_gpt_is_causal_and_ties_embeddings():
    cfg = models.GPTConfig(vocab_size=20, context=16, n_layer=2, n_head=2, n_embd=32)
    gpt = models.GPT(cfg).eval()
    idx = torch.randint(0, 20, (2, 16))
    logits = gpt(idx)
    assert logits.shape == (2, 16, 20)
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 20
    assert torch.allclose(gpt(changed)[:, :10], logits[:, :10], atol=1e-5)  # no peeking ahead
    assert gpt.lm_head.weight is gpt.tok_emb.weight
    out = gpt.generate(idx[:, :4], new_tokens=5)
    assert out.shape == (2, 9) and torch.equal(out[:, :4], idx[:, :4])


def test_gpt_config_and_input_validation():
    with pytest.raises(ValueError, match="divisible"):
        models.GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="n_layer"):
        models.GPTConfig(n_layer=0)
    gpt = models.GPT(models.GPTConfig(vocab_size=10, context=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="idx"):
        gpt(torch.zeros(1, 9, dtype=torch.long))


def _attention_by_hand(attn: models.CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention written out: each key/value head repeated for its group of query heads."""
    b, t, c = x.shape
    hd = c // attn.n_head
    q, k, v = attn.qkv(x).split([c, attn.n_kv_head * hd, attn.n_kv_head * hd], dim=-1)
    q = q.view(b, t, attn.n_head, hd).transpose(1, 2)
    group = attn.n_head // attn.n_kv_head
    k, v = (z.view(b, t, attn.n_kv_head, hd).transpose(1, 2).repeat_interleave(group, dim=1) for z in (k, v))
    scores = (q @ k.transpose(-1, -2)) / hd**0.5
    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, c))


@pytest.mark.parametrize("n_kv_head", [None, 2, 1])
def test_grouped_query_attention_shares_key_value_heads(n_kv_head):
    cfg = models.GPTConfig(vocab_size=20, context=8, n_layer=1, n_head=4, n_embd=32, n_kv_head=n_kv_head)
    attn = models.CausalSelfAttention(cfg).eval()
    kv_heads = n_kv_head or 4
    assert attn.qkv.weight.shape == (32 + 2 * kv_heads * 8, 32)  # queries, then keys, then values
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(attn(x), _attention_by_hand(attn, x), atol=1e-5, rtol=1e-5)


def test_gpt_config_keeps_its_old_keys_and_checks_kv_heads():
    assert "n_kv_head" not in models.GPTConfig().to_dict()  # cached checkpoints keep their recipe keys
    assert models.GPTConfig(n_kv_head=1).to_dict()["n_kv_head"] == 1
    assert models.GPTConfig(n_kv_head=2).kv_heads == 2 and models.GPTConfig().kv_heads == 4
    with pytest.raises(ValueError, match="divisible by n_kv_head"):
        models.GPTConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="n_kv_head"):
        models.GPTConfig(n_kv_head=0)


@pytest.mark.slow
def test_smollm2_loads_fast_and_knows_the_capital_of_france():
    import time

    models.smollm2()  # converts once if the cache is cold
    start = time.perf_counter()
    model, tokenizer = models.smollm2()
    load_seconds = time.perf_counter() - start
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 130e6 < bench.param_count(model) < 140e6
    assert load_seconds < 10  # target 5 s, slack for a busy CI machine
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    ids = ids if isinstance(ids, torch.Tensor) else ids["input_ids"]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_kv_cache_bytes_by_formula_for_the_gpt_and_a_llama_config():
    from transformers import LlamaConfig

    from effdl import lm

    mha = models.GPTConfig(n_layer=4, n_head=4, n_embd=192)
    assert lm.kv_cache_bytes(mha, tokens=128) == 2 * 4 * 4 * 48 * 128 * 2
    assert lm.kv_cache_bytes(mha, 128) == 4 * lm.kv_cache_bytes(models.GPTConfig(n_layer=4, n_head=4, n_embd=192,
                                                                                n_kv_head=1), 128)  # fmt: skip
    smol = LlamaConfig(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
    assert lm.kv_cache_bytes(smol, tokens=1, batch=2, bytes_per_value=4) == 2 * 30 * 3 * 64 * 2 * 4
    with pytest.raises(ValueError, match="tokens"):
        lm.kv_cache_bytes(mha, tokens=0)


def _macs(model, size=28):
    return bench.flops(model.eval(), torch.zeros(1, 1, size, size)) // 2


def test_depthwise_separable_and_inverted_residual_cost_what_their_formulas_say():
    c_in, c_out, k, side = 32, 64, 3, 14
    separable = models.depthwise_separable(c_in, c_out, k)
    counted = bench.flops(separable.eval(), torch.zeros(1, c_in, side, side)) // 2
    assert counted == (k * k * c_in + c_in * c_out) * side * side
    block = models.InvertedResidual(c_in, c_in, expand=4, kernel=k)
    counted = bench.flops(block.eval(), torch.zeros(1, c_in, side, side)) // 2
    assert counted == (c_in * 4 * c_in + k * k * 4 * c_in + 4 * c_in * c_in) * side * side
    x = torch.randn(2, c_in, side, side)
    assert block.residual and block(x).shape == x.shape
    assert models.InvertedResidual(c_in, c_out, stride=2)(x).shape == (2, c_out, side // 2, side // 2)
    with pytest.raises(ValueError, match="kernel"):
        models.depthwise_separable(c_in, c_out, 4)


def test_cnn_scales_by_separable_blocks_and_input_resolution():
    plain, separable = models.CNN(32, 2), models.CNN(32, 2, separable=True)
    conv2 = 9 * 32 * 64 * 14 * 14  # the second block, a full 3x3 convolution at 14x14
    assert _macs(plain) - _macs(separable) == conv2 - (9 * 32 + 32 * 64) * 14 * 14
    assert not any(key.startswith("resize") for key in plain.state_dict())  # saved checkpoints still load
    small = models.CNN(32, 2, resolution=14)
    assert small(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert _macs(small) < _macs(plain) / 3
    with pytest.raises(ValueError, match="resolution"):
        models.CNN(32, 2, resolution=2)

import math
import random
from collections import Counter

import pytest
import torch
from dahuffman import HuffmanCodec
from torch import nn

from effdl.compress import Ensemble, coding, disagreement, packfile, sharing
from effdl.models import MLP


def _skewed_symbols(n=5000, seed=0):
    rng = random.Random(seed)
    return [min(int(rng.expovariate(0.4)), 30) for _ in range(n)]


def test_huffman_round_trips_and_sits_between_entropy_and_one_bit_more():
    symbols = _skewed_symbols()
    lengths = coding.huffman_lengths(symbols)
    assert coding.decode(coding.encode(symbols, lengths), lengths, len(symbols)) == symbols
    bits, bound = coding.coded_bits(symbols, lengths), coding.entropy_bits(symbols)
    assert bound <= bits < bound + len(symbols)
    assert bits < len(symbols) * coding.width_for(max(symbols))  # skewed symbols: fewer bits than fixed width


def test_huffman_total_equals_dahuffman_with_its_end_of_file_symbol():
    counts = Counter(_skewed_symbols(seed=1))
    table = HuffmanCodec.from_frequencies(counts).get_code_table()
    theirs = sum(c * table[s][0] for s, c in counts.items())
    eof = next(length for s, (length, _) in table.items() if s not in counts)
    with_eof = {**counts, -1: 1}  # every Huffman code is optimal, so the totals agree whatever the ties
    assert coding.coded_bits(with_eof, coding.huffman_lengths(with_eof)) == theirs + eof


def test_uniform_symbols_cost_their_fixed_width_and_a_lone_symbol_one_bit():
    symbols = list(range(16)) * 10
    lengths = coding.huffman_lengths(symbols)
    assert set(lengths.values()) == {4}
    assert coding.entropy_bits(symbols) == pytest.approx(4 * len(symbols))
    assert coding.huffman_lengths([7, 7, 7]) == {7: 1}


def test_canonical_codes_are_prefix_free_and_reject_impossible_lengths():
    codes = coding.canonical_codes({0: 1, 1: 2, 2: 3, 3: 3})
    words = [format(code, f"0{n}b") for code, n in codes.values()]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    with pytest.raises(ValueError, match="Kraft"):
        coding.canonical_codes({0: 1, 1: 1, 2: 1})
    with pytest.raises(ValueError, match="no code length"):
        coding.encode([5], {0: 1, 1: 1})
    with pytest.raises(ValueError, match="fewer than count"):
        coding.decode(coding.encode([0, 1], {0: 1, 1: 1}), {0: 1, 1: 1}, 9)


def test_fixed_width_round_trips_and_rejects_values_that_do_not_fit():
    values = [0, 5, 7, 1, 3]
    assert coding.decode_fixed(coding.encode_fixed(values, 3), 3, 5) == values
    assert len(coding.encode_fixed(values, 3)) == math.ceil(15 / 8)
    with pytest.raises(ValueError, match="symbols must be in"):
        coding.encode_fixed([8], 3)


def test_kmeans_finds_separated_clusters_and_validates_arguments():
    values = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)])
    values = values + 0.01 * torch.randn(100, generator=torch.Generator().manual_seed(0))
    for init in sharing.INITS:
        centroids, index = sharing.kmeans_1d(values, 3, init=init)
        assert torch.allclose(centroids, torch.tensor([-1.0, 0.5, 2.0]), atol=0.02), init
        assert torch.bincount(index).tolist() == [50, 30, 20]
    with pytest.raises(ValueError, match="k must be"):
        sharing.kmeans_1d(values, 0)
    with pytest.raises(ValueError, match="init must be"):
        sharing.kmeans_1d(values, 3, init="kmeans++")


def _pruned_mlp(seed=0, keep=0.1):
    torch.manual_seed(seed)
    model = MLP((32, 16))
    with torch.no_grad():
        for layer in (model.net[1], model.net[3], model.net[5]):
            threshold = layer.weight.abs().flatten().quantile(1 - keep)
            layer.weight.mul_(layer.weight.abs() >= threshold)
    return model


def test_shared_layers_keep_zeros_use_few_values_and_sum_gradients_into_centroids():
    model = sharing.share_weights_(_pruned_mlp(), bits=2)
    plain = _pruned_mlp()  # the same network with the shared weights as plain tensors
    with torch.no_grad():
        for name, shared in sharing.shared_layers(model).items():
            plain.get_submodule(name).weight.copy_(shared(None))
    zeros_before = plain.net[1].weight == 0
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    nn.functional.cross_entropy(plain(x), y).backward()
    shared = sharing.shared_layers(model)["net.1"]
    kept = shared.mask.bool()
    by_cluster = torch.zeros(4).index_add_(0, shared.index[kept], plain.net[1].weight.grad[kept])
    assert torch.allclose(shared.codebook.grad, by_cluster, atol=1e-6)  # Han et al.'s centroid gradient
    assert model.net[1].bias.grad is not None
    with torch.no_grad():
        shared.codebook.sub_(0.1 * shared.codebook.grad)
    sharing.bake_(model)
    weight = model.net[1].weight
    assert torch.equal(weight == 0, zeros_before)
    assert weight[weight != 0].unique().numel() <= 4
    assert not sharing.shared_layers(model)
    with pytest.raises(ValueError, match="bits must be"):
        sharing.share_weights_(_pruned_mlp(), bits=9)


@pytest.mark.parametrize("share,huffman", [(False, False), (True, False), (True, True)])
def test_packed_file_rebuilds_the_state_exactly_and_its_parts_sum_to_its_size(tmp_path, share, huffman):
    model = _pruned_mlp()
    if share:
        sharing.bake_(sharing.share_weights_(model, bits=3))
    path = tmp_path / "model.bin"
    parts = packfile.save(model.state_dict(), path, share=share, huffman=huffman, meta={"hidden": [32, 16]})
    assert sum(parts.values()) == path.stat().st_size
    state, meta = packfile.load(path)
    assert meta == {"hidden": [32, 16]}
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor) and state[name].dtype == tensor.dtype, name
    dense_bytes = sum(t.numel() * 4 for t in model.state_dict().values())
    assert path.stat().st_size < dense_bytes / (4 if share else 2)


def test_packed_file_refuses_unshareable_weights_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="distinct values"):
        packfile.save(_pruned_mlp(keep=0.9).state_dict(), tmp_path / "m.bin", share=True)
    (tmp_path / "x.bin").write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ValueError, match="not a packed model file"):
        packfile.load(tmp_path / "x.bin")


def test_gap_symbols_with_fillers_give_back_the_positions():
    positions = torch.tensor([0, 3, 4, 600, 601, 1000])
    gaps = (torch.diff(positions, prepend=torch.tensor([-1])) - 1).tolist()
    for limit in (1, 3, 255, 1000):
        symbols = packfile.gap_symbols(gaps, limit)
        assert max(symbols) <= limit
        assert torch.equal(packfile.positions_of(symbols, limit), positions)


def test_ensemble_averages_member_probabilities_and_needs_two_members():
    torch.manual_seed(0)
    members = [nn.Linear(6, 4) for _ in range(3)]
    x = torch.randn(5, 6)
    mean = torch.stack([m(x).softmax(-1) for m in members]).mean(0)
    assert torch.allclose(Ensemble(members)(x).softmax(-1), mean, atol=1e-6)
    one = nn.Linear(6, 4)
    assert torch.equal(Ensemble([one, one])(x).argmax(-1), one(x).argmax(-1))
    with pytest.raises(ValueError, match="members"):
        Ensemble([one])


def test_disagreement_is_the_mean_pairwise_rate_of_different_predictions():
    a, b, c = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 0])
    assert disagreement([a, a, a]) == 0
    assert disagreement([a, b]) == pytest.approx(0.25)
    assert disagreement([a, b, c]) == pytest.approx((0.25 + 0.75 + 0.5) / 3)
    with pytest.raises(ValueError, match="predictions"):
        disagreement([a, torch.tensor([0, 1])])

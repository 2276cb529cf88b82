"""effdl.accel: the profile's table adds up, autocast and the scaler train, accumulation and checkpointing give the
plain gradients, fp16's underflow is counted exactly, graph breaks are found, PNGs decode to the pixels they
encode, and bad arguments are refused."""

import functools
import json
import os

import pytest
import torch
from torch import nn

from effdl import bench
from effdl.accel import compile as accel_compile
from effdl.accel import devices, graphs, loader, memory, profile, steps
from effdl.train import token_cross_entropy


def _mlp(depth: int = 4, width: int = 64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(*[nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
                           for _ in range(depth)])  # fmt: skip


class _TinyLM(nn.Module):
    """Embedding, MLP blocks, logits: the shape of a language model's step, small enough for a test."""

    def __init__(self, vocab: int = 16, width: int = 32) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.emb, self.blocks, self.head = nn.Embedding(vocab, width), _mlp(2, width), nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.emb(x)))


def _batch(n: int = 8, t: int = 12, vocab: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(vocab, (n, t), generator=g), torch.randint(vocab, (n, t), generator=g)


def test_devices_list_the_backends_and_wrong_names_raise_the_known_types():
    found = devices.accelerators()
    assert {"cpu", "cuda", "mps", "xpu", "xla"} <= set(found)
    assert ("not available" in found["cuda"]) != torch.cuda.is_available()
    error = devices.raised(lambda: torch.device("tpu"))
    assert error.startswith("RuntimeError") and "cuda" in error and "xla" in error
    assert devices.raised(lambda: torch.device("cpu")) == "no error"


def test_profile_table_shares_add_up_and_the_trace_is_written(tmp_path):
    model, (x, y) = _TinyLM(), _batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trace = tmp_path / "trace.json"
    prof = profile.profile_steps(lambda: steps.train_step(model, opt, x, y), steps=2, trace=trace)
    table = profile.op_table(prof, steps=2)
    assert sum(row.share for row in table) == pytest.approx(1.0)
    assert [row.self_ms for row in table] == sorted((row.self_ms for row in table), reverse=True)
    assert any(row.name == profile.STEP_RANGE and row.calls == 1 for row in table)  # one range per step
    assert 0 < profile.share_of(table, profile.MATMUL_OPS) < 1
    assert "traceEvents" in json.loads(trace.read_text())
    assert len(profile.op_table(prof, steps=2, top=3)) == 3
    with pytest.raises(ValueError, match="steps"):
        profile.profile_steps(lambda: None, steps=0)
    with pytest.raises(ValueError, match="patterns"):
        profile.share_of(table, ())


def test_autocast_steps_train_and_bad_dtypes_are_refused():
    (x, y), losses = _batch(), {}
    for name, dtype in {"fp32": None, "bf16": torch.bfloat16}.items():
        model = _TinyLM()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
        losses[name] = [steps.train_step(model, opt, x, y, dtype=dtype).item() for _ in range(8)]
        assert losses[name][-1] < losses[name][0] - 0.3  # it learns
        assert all(p.grad is None for p in model.parameters())  # gradients are cleared after each step
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], rel=0.02)
    model = _TinyLM()
    opt, scaler = torch.optim.SGD(model.parameters(), lr=0.1), torch.amp.GradScaler("cpu")
    before = model.head.weight.clone()
    steps.train_step(model, opt, x, y, dtype=torch.float16, scaler=scaler)
    assert not torch.equal(before, model.head.weight) and scaler.get_scale() == 2.0**16
    with pytest.raises(ValueError, match="dtype"):
        steps.train_step(model, opt, x, y, dtype=torch.float64)


def test_accumulated_micro_batches_give_the_big_batch_gradient():
    (x, y), grads = _batch(n=12), {}
    for micro in (1, 3, 4):
        model = _TinyLM()
        loss = steps.accumulate_gradients(model, x, y, micro)
        grads[micro] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert loss.item() == pytest.approx(token_cross_entropy(model(x), y).item(), rel=1e-5)
    assert (grads[3] - grads[1]).abs().max() < 1e-6 and (grads[4] - grads[1]).abs().max() < 1e-6
    with pytest.raises(ValueError, match="micro_batches"):
        steps.accumulate_gradients(_TinyLM(), x, y, 5)


def test_fp16_underflow_counts_zeros_subnormals_and_infinities():
    values = torch.tensor([1e-9, 1e-6, 1e-3, 1e5, 0.0])  # 0 is not counted
    assert steps.fp16_underflow(values) == steps.Underflow(zero=0.25, subnormal=0.25, overflow=0.25)
    scaled = steps.fp16_underflow(values, scale=2.0**-6)  # 1e5 fits, 1e-6 becomes zero, 1e-3 subnormal
    assert scaled == steps.Underflow(zero=0.5, subnormal=0.25, overflow=0.0)
    tiny = torch.finfo(torch.float16).tiny
    assert steps.fp16_underflow(torch.tensor([tiny])).subnormal == 0  # the smallest normal is normal
    with pytest.raises(ValueError, match="scale"):
        steps.fp16_underflow(values, scale=0)
    with pytest.raises(ValueError, match="nonzero"):
        steps.fp16_underflow(torch.zeros(3))


def test_checkpointed_blocks_give_the_same_gradients_in_less_memory():
    plain = _mlp(depth=6, width=128)
    x = torch.randn(256, 128)
    wrapped = memory.checkpoint_blocks(plain, 6)
    assert all(isinstance(b, memory.Checkpointed) for b in wrapped)
    assert wrapped[0].module is plain[0]  # shared, not copied

    def grads(model: nn.Module) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])

    assert torch.allclose(grads(wrapped), grads(plain), atol=1e-7)
    def step(model: nn.Module) -> None:
        model(x).square().mean().backward()

    peaks = {k: bench.peak_memory(functools.partial(step, memory.checkpoint_blocks(plain, k))) for k in (0, 6)}
    assert peaks[6] < 0.5 * peaks[0]
    with torch.no_grad():
        assert torch.equal(wrapped(x), plain(x))
    again = memory.checkpoint_blocks(wrapped, 2)  # re-wrapping starts from the plain blocks
    assert [isinstance(b, memory.Checkpointed) for b in again] == [True, True] + [False] * 4
    assert not isinstance(again[0].module, memory.Checkpointed)
    with pytest.raises(ValueError, match="count"):
        memory.checkpoint_blocks(plain, 7)
    with pytest.raises(ValueError, match="blocks"):
        memory.checkpoint_blocks(nn.ModuleList(plain), 1)


def _branchy(x: torch.Tensor) -> torch.Tensor:
    if x.sum() > 0:
        return x * 2
    return x


def _branchless(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x.sum() > 0, x * 2, x)


def test_graph_breaks_are_found_and_a_where_removes_them():
    x = torch.randn(16)
    broken, fixed = accel_compile.graph_breaks(_branchy, x), accel_compile.graph_breaks(_branchless, x)
    assert broken.breaks >= 1 and len(broken.reasons) == broken.breaks
    assert fixed == accel_compile.GraphReport(graphs=1, breaks=0, reasons=())
    with pytest.raises(ValueError, match="fn"):
        accel_compile.graph_breaks(3, x)


def test_fresh_compile_cache_points_inductor_at_an_empty_folder_and_restores():
    before = os.environ.get(accel_compile.CACHE_VARIABLE)
    with accel_compile.fresh_compile_cache() as folder:
        assert os.environ[accel_compile.CACHE_VARIABLE] == folder and os.listdir(folder) == []
    assert os.environ.get(accel_compile.CACHE_VARIABLE) == before and not os.path.exists(folder)


def test_decoding_dataset_returns_the_encoded_pixels_normalized():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 28, 28), generator=g, dtype=torch.uint8)
    labels = torch.arange(10)
    dataset = loader.DecodingDataset(loader.encode_png(images), labels, mean=0.5, std=0.25)
    x, y = dataset[3]
    assert x.shape == (1, 28, 28) and y == 3
    assert torch.allclose(x, (images[3].float() / 255 - 0.5) / 0.25, atol=1e-6)
    flipped = loader.DecodingDataset(loader.encode_png(images), labels, 0.5, 0.25, augment=lambda t: t.flip(-1))
    assert torch.equal(flipped[3][0], x.flip(-1))
    seen = []
    rate = loader.loader_throughput(dataset, 4, consume=lambda xb, yb: seen.append(len(yb)))
    assert rate > 0 and seen == [4, 4, 2]
    with pytest.raises(ValueError, match="pngs"):
        loader.DecodingDataset(loader.encode_png(images), labels[:5], 0.5, 0.25)
    with pytest.raises(ValueError, match="images"):
        loader.encode_png(images.float())
    with pytest.raises(ValueError, match="num_workers"):
        loader.loader_throughput(dataset, 4, num_workers=-1)


def test_cuda_graph_capture_refuses_a_cpu_input():
    with pytest.raises(ValueError, match="example"):
        graphs.capture_forward(nn.Linear(2, 2), torch.zeros(1, 2))

"""effdl.parallel with real process groups: two spawned processes on gloo (a free port of 127.0.0.1, a timeout,
killed however the test ends) run every strategy once on small models, and each must compute what one process
computes; one ``torchrun -m effdl.parallel`` job checks the program end to end; the cost model and the
alpha-beta fit against their formulas; no process survives."""

import contextlib
import copy
import json
import os
import sys
import time
import uuid

import pytest
import torch

from effdl.models import GPT, GPTConfig
from effdl.parallel import collectives, cost, data_parallel, group, pipeline, sharded, tensor


def _children() -> set[int]:
    """Processes whose parent is this one (Linux ``/proc``), but multiprocessing's resource tracker, which lives
    as long as this process by design."""
    pids = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat, open(f"/proc/{entry}/cmdline") as cmdline:
                ours = int(stat.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
                if ours and "resource_tracker" not in cmdline.read():
                    pids.add(int(entry))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def _gpt(n_kv_head: int | None = None) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, context=16, n_layer=2, n_head=4, n_embd=32, n_kv_head=n_kv_head))


def _batches(steps: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randint(32, (8, 16), generator=generator), torch.randint(32, (8, 16), generator=generator))
            for _ in range(steps)]  # fmt: skip


@pytest.fixture(scope="module")
def worked():
    """Every strategy on 2 processes, in one job (starting processes is the slow part); rank 0's records."""
    before = _children()
    results = group.run_workers(_everything, timeout_s=240, model=_gpt(), gqa=_gpt(n_kv_head=2), batches=_batches())
    assert _children() <= before, "a worker outlived run_workers"
    return results


def _everything(model: GPT, gqa: GPT, batches: list) -> dict:
    return {
        "ddp": data_parallel.ddp_versus_single(copy.deepcopy(model), batches, lr=0.1, accumulate=2, bucket_cap_mb=0.05,
                                               optimizer="sgd"),  # fmt: skip
        "ddp_sync_every": data_parallel.ddp_versus_single(model, batches, 1e-3, 2, no_sync=False, bucket_cap_mb=0.05),
        "zero": {s: sharded.memory_per_rank(model, batches[:1], s, blocks="blocks") for s in sharded.STRATEGIES},
        "tp": tensor.tp_versus_dense(model, batches[0][0]),
        "tp_gqa": tensor.tp_versus_dense(gqa, batches[0][0]),
        "bubbles": pipeline.bubble_sweep(256, 2, 64, [2, 4], ["gpipe", "1f1b"], steps=1),
        "pipeline_gradients": {s: pipeline.gradient_difference(64, 2, 32, 4, s) for s in ("gpipe", "1f1b")},
        "collectives": collectives.collective_sweep([4096, 65536], repeats=2),
        "straggler": collectives.straggler_timings(1024, late_s=0.05, repeats=1),
    }


def test_ddp_equals_one_process_and_no_sync_saves_all_reduces(worked):
    accumulated, synced = worked[0]["ddp"], worked[0]["ddp_sync_every"]
    assert accumulated["relative_difference"] <= 1e-5 and synced["relative_difference"] <= 1e-5
    assert accumulated["losses"] == pytest.approx(accumulated["single_losses"], abs=1e-5)
    assert accumulated["allreduces_per_step"] > 1  # small buckets: several per backward pass
    # one set of buckets per micro-batch (DDP re-forms its buckets after the first backward pass: not exactly 2x)
    assert synced["allreduces_per_step"] > 1.8 * accumulated["allreduces_per_step"]
    assert worked[0]["ddp"]["losses"] == worked[1]["ddp"]["losses"]  # every rank sees the global loss
    assert accumulated["losses"][-1] < accumulated["losses"][0]  # and it trains
    with pytest.raises(ValueError, match="optimizer"):
        data_parallel.make_optimizer("lamb", [torch.nn.Parameter(torch.zeros(1))], 0.1)


def test_zero_stages_shard_optimizer_then_gradients_then_parameters(worked):
    rows = worked[0]["zero"]
    full = rows["single"]
    assert rows["ddp"]["parameters"] == full["parameters"] and rows["ddp"]["optimizer"] == full["optimizer"]
    assert rows["zero1"]["optimizer"] < 0.6 * full["optimizer"] and rows["zero1"]["gradients"] == full["gradients"]
    for stage in ("zero2", "zero3"):
        assert rows[stage]["parameters"] <= 0.55 * full["parameters"]
        assert rows[stage]["gradients"] <= 0.55 * full["gradients"]
    assert rows["zero2"]["parameters_in_backward"] == full["parameters"]  # kept gathered until backward
    assert rows["zero3"]["parameters_in_backward"] < full["parameters"]
    total = {s: sum(r[k] for k in ("parameters", "gradients", "optimizer")) for s, r in rows.items()}
    assert total["zero3"] <= 0.55 * total["single"]
    assert rows["zero3"]["losses"][0] == pytest.approx(rows["ddp"]["losses"][0], abs=1e-6)


@pytest.mark.parametrize("case", ["tp", "tp_gqa"])
def test_tensor_parallel_gpt_equals_dense_with_two_all_reduces_per_block(worked, case):
    record = worked[0][case]
    assert record["max_difference"] <= 1e-5 and record["checkpoint_equal"]
    assert record["forward"] == {"c10d_functional.all_reduce": 2 * record["blocks"]}
    assert record["forward_bytes"] == 2 * record["blocks"] * 8 * 16 * 32 * 4  # (batch, time, width) float32
    assert record["local_parameter_bytes"] < record["dense_parameter_bytes"]


def test_pipeline_computes_one_process_gradients_and_measures_a_bubble(worked):
    assert max(worked[r]["pipeline_gradients"][s] for r in (0, 1) for s in ("gpipe", "1f1b")) <= 1e-5
    for row in worked[0]["bubbles"]:
        assert row["ideal"] == pytest.approx(1 / (row["microbatches"] + 1))
        assert 0 < row["bubble"] < 1 and row["wall_s"] > 0


def test_collectives_are_timed_and_a_straggler_inflates_an_unbarriered_clock(worked):
    rows = worked[0]["collectives"]
    assert {r["collective"] for r in rows} == set(collectives.COLLECTIVES) and all(r["seconds"] > 0 for r in rows)
    late = worked[0]["straggler"]
    assert late["without_barrier"] > 0.03 > late["with_barrier"]


def test_torchrun_runs_the_program_and_leaves_no_process(tmp_path):
    out = tmp_path / "tp.json"
    before = _children()
    printed = group.torchrun(["tp", "--out", str(out), "--timeout", "60"], nproc=2, timeout_s=180)
    assert "tp on 2 processes" in printed and _children() <= before
    record = json.loads(out.read_text())
    assert record["world"] == 2 and all(r["tp"]["max_difference"] <= 1e-5 for r in record["ranks"])


def _marked(marker: str) -> list[int]:
    """Processes of any parent whose command line contains ``marker`` (Linux ``/proc``)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as cmdline:
            if marker.encode() in cmdline.read():
                pids.append(int(entry))
    return pids


def _gone(marker: str, within_s: float = 5.0) -> bool:
    """Whether every process marked ``marker`` has exited (polled for at most ``within_s``)."""
    deadline = time.monotonic() + within_s
    while _marked(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _marked(marker)


def test_a_job_that_fails_or_hangs_raises_and_is_killed():
    before = _children()
    with pytest.raises(RuntimeError, match="exit status 3"):
        group.run_commands([[sys.executable, "-c", "raise SystemExit(3)"]], timeout_s=30)
    with pytest.raises(RuntimeError, match="did not finish"):
        group.run_commands([[sys.executable, "-c", "import time; time.sleep(60)"]], timeout_s=0.5)
    assert _children() <= before
    with pytest.raises(ValueError, match="timeout_s"):
        group.run_commands([["true"]], timeout_s=0)
    with pytest.raises(ValueError, match="nproc"):
        group.torchrun_command(["ddp"], nproc=0)


def test_a_hung_torchrun_job_leaves_no_worker(tmp_path):
    """torchrun starts its workers in sessions of their own: killing torchrun's group alone would orphan them."""
    marker = str(tmp_path / f"hung-{uuid.uuid4().hex}-")  # in every worker's command line, and its start file
    sleep = "import os, sys, time; open(sys.argv[1] + os.environ['LOCAL_RANK'], 'w').close(); time.sleep(60)"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{group.free_port()}", "--max-restarts", "0", "--no-python",
               sys.executable, "-c", sleep, marker]  # fmt: skip
    with pytest.raises(RuntimeError, match="did not finish"):
        group.run_commands([command], timeout_s=10)
    assert all(os.path.exists(f"{marker}{r}") for r in (0, 1)), "the workers had not started: raise timeout_s"
    assert _gone(marker), "a torchrun worker outlived run_commands"


def test_torchrun_command_meets_at_one_loopback_endpoint_per_job():
    nodes = [group.torchrun_command(["ddp"], nproc=1, port=29500, nnodes=2, node_rank=n) for n in (0, 1)]
    for node, command in enumerate(nodes):
        assert command[command.index("--rdzv-endpoint") + 1] == "127.0.0.1:29500"
        assert command[command.index("--node-rank") + 1] == str(node)
        assert command[-3:] == ["-m", "effdl.parallel", "ddp"]


def test_qkv_order_gives_each_rank_whole_heads_and_inverts():
    order = tensor.qkv_order(n_embd=8, n_head=4, n_kv_head=2, ranks=2)  # head size 2: q 8 rows, k and v 4 each
    assert order.tolist() == [0, 1, 2, 3, 8, 9, 12, 13, 4, 5, 6, 7, 10, 11, 14, 15]
    assert torch.equal(order[torch.argsort(order)], torch.arange(16))
    with pytest.raises(ValueError, match="ranks"):
        tensor.qkv_order(8, 4, 2, ranks=4)


def test_sampler_repeats_epochs_without_set_epoch():
    without = data_parallel.epoch_orders(100, 2, 0, 3, set_epoch=False)
    assert without[0] == without[2]
    with_epoch = [data_parallel.epoch_orders(100, 2, rank, 3, set_epoch=True) for rank in (0, 1)]
    assert with_epoch[0][0] != with_epoch[0][1]
    assert all(sorted(with_epoch[0][e] + with_epoch[1][e]) == list(range(100)) for e in range(3))  # a partition
    with pytest.raises(ValueError, match="world"):
        data_parallel.local_slice((torch.zeros(5), torch.zeros(5)), 0, 2)


def test_alpha_beta_fit_recovers_a_line():
    sizes = [1e3, 1e4, 1e5, 1e6]
    alpha, beta = collectives.fit_alpha_beta(sizes, [2e-5 + n * 1e-9 for n in sizes])
    assert alpha == pytest.approx(2e-5, rel=1e-6) and beta == pytest.approx(1e-9, rel=1e-6)
    with pytest.raises(ValueError, match="sizes_bytes"):
        collectives.fit_alpha_beta([1.0], [1.0])
    with pytest.raises(ValueError, match="name"):
        collectives.time_collective("broadcast", 16)


def test_cost_model_follows_zero_and_the_ring_formulas():
    assert cost.memory_per_gpu("ddp", 1e9, 64) == 16e9
    assert cost.memory_per_gpu("zero1", 1e9, 8) == pytest.approx(4e9 + 12e9 / 8)
    assert cost.memory_per_gpu("zero2", 1e9, 8) == pytest.approx(2e9 + 14e9 / 8)
    assert cost.memory_per_gpu("zero3", 1e9, 8) == pytest.approx(2e9)
    link = cost.Link("test", bandwidth=1e9, latency=1e-6)
    assert cost.ring_all_reduce_s(4e9, 4, link) == pytest.approx(6e-6 + 1.5 * 4)
    assert cost.ring_all_gather_s(4e9, 4, link) == pytest.approx(3e-6 + 0.75 * 4)
    assert cost.comm_per_step_s("zero3", 1e9, 8) == pytest.approx(1.5 * cost.comm_per_step_s("ddp", 1e9, 8))
    assert cost.link_for(8) is cost.NVLINK4 and cost.link_for(16) is cost.INFINIBAND_NDR
    assert cost.scaling_efficiency("ddp", 1e9, 8) > cost.scaling_efficiency("ddp", 1e9, 64)
    assert cost.strategy_for(1e8, 8) == "ddp" and cost.strategy_for(1e12, 8) == "zero3+tp/pp"
    for bad in ({"strategy": "zero4"}, {"params": 0}, {"gpus": 0}):
        args = {"strategy": "ddp", "params": 1e9, "gpus": 8} | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            cost.memory_per_gpu(**args)


def test_pipeline_arguments_are_checked():
    assert pipeline.ideal_bubble(4, 12) == pytest.approx(3 / 15)
    with pytest.raises(ValueError, match="microbatches"):
        pipeline.ideal_bubble(2, 0)
    with pytest.raises(ValueError, match="schedule"):
        pipeline.measure_bubble(8, 1, 8, 2, schedule="zb")
    with pytest.raises(ValueError, match="strategy"):
        sharded.wrap(torch.nn.Linear(2, 2), "zero4", 1e-3)
    with pytest.raises(ValueError, match="accumulate"):
        data_parallel.train_ddp(torch.nn.Linear(2, 2), [], 1e-3, accumulate=0)

"""effdl.experiments.parallel_training: the arithmetic on the workers' records (ZeRO ratios, bubble gaps, the
alpha-beta fits, the pitfalls' measures), the claims failing on broken records, the cost table and the exercises'
self-checks. The torchrun jobs themselves run in tests/test_parallel.py and in the notebook."""

import pytest

from effdl import claims
from effdl.experiments import parallel_training as ex


def _bubble(schedule: str, m: int, bubble: float, wall_s: float = 0.2) -> dict:
    return {"schedule": schedule, "microbatches": m, "stages": 2, "bubble": bubble, "wall_s": wall_s,
            "ideal": 1 / (m + 1)}  # fmt: skip


def _rank(bubble_gap: float = 0.01, gradient: float = 1e-7) -> dict:
    rows = [_bubble(s, m, 1 / (m + 1) + bubble_gap) for s in ex.SCHEDULES for m in ex.MICROBATCHES]
    zero = [{"strategy": s, "parameters": p, "gradients": p, "optimizer": 2 * p, "parameters_in_backward": p}
            for s, p in (("single", 100), ("ddp", 100), ("zero2", 50), ("zero3", 50))]  # fmt: skip
    zero.insert(2, {"strategy": "zero1", "parameters": 100, "gradients": 100, "optimizer": 100,
                    "parameters_in_backward": 100})  # fmt: skip
    sweep = [{"collective": c, "bytes": n, "seconds": 1e-4 + n / 1e9} for c in ("all_reduce", "all_gather",
             "reduce_scatter") for n in (1e3, 1e5, 1e7)]  # fmt: skip
    ddp = {"losses": [3.0, 2.5], "single_losses": [3.0, 2.5], "relative_difference": 2e-7, "allreduces_per_step": 1}
    return {"ddp": {"sgd": ddp, "adamw": ddp | {"relative_difference": 3e-6}},
            "lr-pitfall": ddp | {"relative_difference": 1e-2}, "zero": zero,
            "tp": {"max_difference": 1e-7, "forward": {"all_reduce": 4}, "backward": {"all_reduce": 4}, "blocks": 2,
                   "checkpoint_equal": True},
            "pipeline": {"bubbles": rows, "gradient_difference": {"gpipe": gradient, "1f1b": gradient}},
            "oversubscribed": _bubble("gpipe", 8, 0.5, wall_s=0.6),
            "collectives": {"sweep": sweep, "straggler": {"without_barrier": 0.051, "with_barrier": 0.001,
                                                          "late_s": 0.05}}}  # fmt: skip


@pytest.fixture
def fake(monkeypatch):
    """The workers' records of a run that behaved, in place of a torchrun job."""
    records = [_rank(), _rank()]
    monkeypatch.setattr(ex, "records", lambda: records)
    return records


def test_accessors_read_rank_zero_and_average_the_stages(fake):
    fake[1]["pipeline"]["bubbles"][0]["bubble"] += 0.1  # the second stage idled longer at gpipe, m=2
    rows = ex.bubbles()
    assert rows[0]["bubble"] == pytest.approx(1 / 3 + 0.01 + 0.05)
    gaps = ex.bubble_gaps(rows)
    assert gaps[("gpipe", 2)] == pytest.approx(0.06) and gaps[("1f1b", 8)] == pytest.approx(0.01)
    assert ex.zero_ratios(ex.zero()) == pytest.approx({"single": 1, "ddp": 1, "zero1": 0.75, "zero2": 0.5,
                                                       "zero3": 0.5})  # fmt: skip
    assert ex.allreduces_per_block(ex.tp()) == 2
    alpha, beta = ex.alpha_beta(ex.collective_timings())["all_gather"]
    assert alpha == pytest.approx(1e-4) and beta == pytest.approx(1e-9)
    assert ex.oversubscribed_slowdown() == pytest.approx(3.0)
    assert ex.lateness_counted() == pytest.approx(1.0)
    assert ex.lr_drift(ex.scaled_lr(), ex.ddp()) == pytest.approx(1e-2 / 2e-7)
    assert ex.lr_drift({"relative_difference": 1e-3}, {"relative_difference": 0.0}) == pytest.approx(1e9)


def test_claims_hold_on_a_good_run(fake):
    ex.check_ddp(ex.ddp(), ex.ddp("adamw"))
    ex.check_zero(ex.zero())
    ex.check_tp(ex.tp())
    ex.check_collectives(ex.collective_timings())
    ex.check_bubbles(ex.bubbles())
    ex.check_pitfalls(ex.scaled_lr(), ex.ddp())


@pytest.mark.parametrize(("broken", "check"), [
    (lambda r: r["ddp"]["sgd"].update(relative_difference=1e-3), lambda: ex.check_ddp(ex.ddp(), ex.ddp("adamw"))),
    (lambda r: r["ddp"]["adamw"].update(relative_difference=1e-2), lambda: ex.check_ddp(ex.ddp(), ex.ddp("adamw"))),
    (lambda r: r["zero"][4].update(optimizer=200), lambda: ex.check_zero(ex.zero())),
    (lambda r: r["tp"].update(forward={"all_reduce": 6}), lambda: ex.check_tp(ex.tp())),
    (lambda r: r["tp"].update(max_difference=1e-3), lambda: ex.check_tp(ex.tp())),
    (lambda r: r["pipeline"]["gradient_difference"].update(gpipe=1e-2), lambda: ex.check_bubbles(ex.bubbles())),
    (lambda r: r["pipeline"]["bubbles"][0].update(bubble=0.1), lambda: ex.check_bubbles(ex.bubbles())),
    (lambda r: r["lr-pitfall"].update(relative_difference=2e-7), lambda: ex.check_pitfalls(ex.scaled_lr(), ex.ddp())),
    (lambda r: r["collectives"]["straggler"].update(without_barrier=0.002),
     lambda: ex.check_pitfalls(ex.scaled_lr(), ex.ddp())),
])  # fmt: skip
def test_claims_fail_on_a_broken_run(fake, broken, check):
    broken(fake[0])
    with pytest.raises(claims.ClaimFailed):
        check()


def test_two_nodes_must_train_what_one_node_trains():
    one = {"losses": [3.0, 2.5], "relative_difference": 1e-7}
    assert ex.check_two_nodes(dict(one), one) == 0
    with pytest.raises(claims.ClaimFailed):
        ex.check_two_nodes({"losses": [3.0, 2.4], "relative_difference": 1e-7}, one)


def test_set_epoch_pitfall_is_measured_in_process():
    assert ex.repeated_epoch_share(set_epoch=False) == 1
    assert ex.repeated_epoch_share(set_epoch=True) == 0


def test_cost_table_needs_more_sharding_for_bigger_models():
    table = ex.cost_table()
    assert len(table) == len(ex.MODEL_SIZES) * len(ex.GPU_COUNTS)
    on_8 = [r["needs"] for r in table if r["gpus"] == 8]
    order = ["ddp", "zero1", "zero2", "zero3", "zero3+tp/pp"]
    assert [order.index(n) for n in on_8] == sorted(order.index(n) for n in on_8) and on_8[0] == "ddp"
    assert all(0 < r["ddp_efficiency"] <= 1 and r["zero3_gb"] <= r["ddp_gb"] for r in table)


def test_self_checks_accept_the_right_answer_and_reject_a_wrong_one():
    assert ex.self_check_bubble(3 / 15) and not ex.self_check_bubble(3 / 12)
    right = 7e9 * (2 + 14 / 64)
    assert ex.self_check_zero_bytes(right) and not ex.self_check_zero_bytes(7e9 * 16 / 64)
    assert ex.self_check_strategy("zero2") and not ex.self_check_strategy("ddp")


def test_sizes_reach_the_workers_as_arguments():
    args = ex.pipeline_args((2, 4), ("gpipe",))
    assert args[args.index("--microbatches") + 1 : args.index("--schedules")] == ["2", "4"]
    assert args[args.index("--width") + 1] == str(ex.PIPE_WIDTH)
    assert ex.ddp_args()[ex.ddp_args().index("--accumulate") + 1] == str(ex.ACCUMULATE)

"""effdl.experiments.serving: the metrics arithmetic (differences of scrapes, histogram buckets, the time split),
Little's law and the self-checks on made-up runs, the refusals' parsing, and the load helpers against two real
classifier servers (the small CNN; SmolLM2 is left to the notebook)."""

import asyncio
import dataclasses

import httpx
import pytest

from effdl.experiments import serving as ex
from effdl.serve.load import LoadReport, Outcome
from effdl.serve.metrics import Metrics


def _report(latencies_s: list[float], wall_s: float, statuses: list[int] | None = None) -> LoadReport:
    statuses = statuses or [200] * len(latencies_s)
    return LoadReport([Outcome(s, t, complete=s == 200) for s, t in zip(statuses, latencies_s, strict=True)], wall_s)


def _metrics(batches: list[tuple[int, float]], requests_s: list[float]) -> ex.Scrape:
    metrics = Metrics()
    for images, seconds in batches:
        metrics.classifier_batch(images, seconds)
    for seconds in requests_s:
        metrics.latency.labels("/v1/classify").observe(seconds)
    return ex.parse_metrics(metrics.exposition().decode())


def test_differences_of_scrapes_give_one_run_and_its_batch_histogram():
    before = _metrics([(1, 0.001)], [0.002])
    after = _metrics([(1, 0.001), (3, 0.002), (7, 0.004), (40, 0.01)], [0.002] + [0.005] * 50)
    run = ex.difference(after, before)
    assert ex.sample(run, "effdl_batch_size_count", queue="classify") == 3
    assert ex.sample(run, "effdl_batch_size_sum", queue="classify") == 50
    assert ex.sample(run, "effdl_model_seconds_sum", queue="classify") == pytest.approx(0.016)
    assert ex.sample(run, "no_such_metric") == 0
    histogram = ex.batch_histogram(run)
    assert {bound: n for bound, n in histogram.items() if n} == {4.0: 1, 8.0: 1, 64.0: 1}
    assert sum(histogram.values()) == 3


def test_a_run_splits_each_request_into_nested_model_server_and_client_seconds():
    metrics = _metrics([(2, 0.004), (2, 0.004)], [0.01] * 4)
    run = ex.Run(_report([0.02] * 4, wall_s=0.05), metrics)
    assert run.model_s() == pytest.approx(0.002)  # 8 ms of forward passes shared by 4 answers
    assert run.server_s() == pytest.approx(0.01) and run.client_s() == pytest.approx(0.02)
    assert run.mean_batch() == 2 and ex.split_holds(run)
    slow_model = ex.Run(_report([0.02] * 4, 0.05), _metrics([(1, 0.05)] * 4, [0.01] * 4))
    assert not ex.split_holds(slow_model)


def _study(throughput_1: float = 400, throughput_dynamic: float = 600) -> ex.ClassifierStudy:
    """Batch-1 serving whose 8 clients each wait 8 / throughput_1 s, and a dynamic server at 32 clients."""
    latency = 8 / throughput_1
    batch1 = {c: ex.Run(_report([latency] * 400, wall_s=1.0), _metrics([(1, 0.001)] * 400, [latency / 2] * 400))
              for c in (1, 8, 32)}  # fmt: skip
    dynamic = {32: ex.Run(_report([0.05] * int(throughput_dynamic), 1.0),
                          _metrics([(3, 0.002), (9, 0.004), (20, 0.008)], [0.02] * 32))}  # fmt: skip
    return ex.ClassifierStudy({"batch 1": batch1, "dynamic": dynamic}, _report([0.05] * 10, 0.1), {})


def test_littles_law_and_the_speedup_on_made_up_runs():
    study = _study()
    assert study.littles_law() == pytest.approx(1.0)
    assert study.speedup() == pytest.approx(1.5)
    assert study.lost() == 0 and study.errors() == 0


def test_cpu_per_request_is_pooled_over_the_headline_run_and_the_runs_in_turns():
    study = _study()
    one = dataclasses.replace(study.sweeps["batch 1"][32], server_cpu_s=0.4)  # 400 answers: 1 ms each
    study.sweeps["batch 1"][32], study.sweeps["dynamic"][32] = one, dataclasses.replace(one, server_cpu_s=0.2)
    assert study.cpu_ratio() == pytest.approx(0.5)
    study.cpu_runs = {"batch 1": [dataclasses.replace(one, server_cpu_s=1.2)], "dynamic": [one]}
    assert study.server_cpu_per_request("batch 1") == pytest.approx(1.6 / 800)
    assert study.cpu_ratio() == pytest.approx(0.6 / 1.6) and len(study.runs()) == 4 + 2


def test_the_self_checks_accept_the_right_answer_and_reject_a_wrong_one(monkeypatch):
    monkeypatch.setattr(ex, "classifier_study", _study)
    assert ex.self_check_littles_law(20.0) and not ex.self_check_littles_law(40.0)
    bound = (4 * 1 + 16 * 1 + 32 * 1) / 3  # one pass each in the buckets <= 4, <= 16 and <= 32
    assert ex.self_check_batch_bound(bound) and not ex.self_check_batch_bound(32 / 3)  # the true mean
    share = 0.001 / 0.02
    assert ex.self_check_model_share(share) and not ex.self_check_model_share(0.5)


def test_refusals_are_read_from_fastapi_422_openai_errors_and_plain_text():
    missing = httpx.Response(422, json={"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]})
    assert ex._refusal("no messages", missing) == ex.Refusal("no messages", 422, "messages", "Field required")
    busy = httpx.Response(429, json={"error": {"message": "busy", "param": None}}, headers={"Retry-After": "1"})
    assert ex._refusal("burst", busy).retry_after == "1"
    large = httpx.Response(413, text="Content Too Large")
    assert ex._refusal("large", large) == ex.Refusal("large", 413, None, "Content Too Large")
    table = ex.outcome_table(_report([0.1] * 5, 1.0, [200, 429, 429, 504, 0]))
    assert table == {"answered": 1, "refused (429)": 2, "timed out (504)": 1, "other errors": 0, "lost": 1}


def test_in_thread_runs_a_coroutine_even_inside_a_running_event_loop():
    async def inside() -> int:
        return ex.in_thread(lambda: asyncio.sleep(0, result=7))

    assert asyncio.run(inside()) == 7


def test_load_runs_and_spread_load_against_two_real_servers():
    args = ["--model", "none", "--classifier", "cnn-fmnist", "--log-level", "warning", *ex.DYNAMIC]
    with ex.serving_many([args, args], threads=1) as servers:
        run = ex.load_run(servers[0], "/v1/classify", ex.classify_payloads(24), 8)
        spread = ex.in_thread(lambda: ex.run_load([s.url for s in servers], "/v1/classify",
                                                  ex.classify_payloads(10), 4))  # fmt: skip
        served = [ex.sample(ex.scrape(s.url), "effdl_requests_total", route="/v1/classify", status="200")
                  for s in servers]  # fmt: skip
    assert run.report.statuses() == {200: 24} and ex.split_holds(run) and run.mean_batch() >= 1
    assert 0 < run.server_cpu_per_request() < run.client_s() * 8 and run.client_cpu_per_request() > 0
    assert spread.statuses() == {200: 10} and served[0] > 24 and served[1] > 0 and sum(served) == 24 + 10

"""The experiments of ``chap-serve`` (``notebooks/11_serving.ipynb``): the book's models behind
``python -m effdl.serve``, each server a subprocess on a free port of 127.0.0.1 (:mod:`effdl.serve.launch`), always
stopped, loaded by :func:`effdl.serve.load.run_load` from this process.

Every server process runs its model on one intra-op thread (``OMP_NUM_THREADS=1``): on a 2-core CPU the load
generator needs the other core, and two processes that each spin two OpenMP threads on two cores slow each other
down by orders of magnitude. Each study starts its servers together, measures, and stops them before it returns,
so a failed claim (checked afterwards) never leaves a server running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import torch
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from effdl import claims, data, models, zoo
from effdl.config import pick
from effdl.experiments._shared import speed_comparison  # noqa: F401 (the notebook's words for a speed ratio)
from effdl.serve.launch import Server, serving, serving_many
from effdl.serve.load import LoadReport, Outcome, run_load

NOTEBOOK = "11_serving"

CLASSIFIER = "resnet-fmnist"
SERVER_THREADS = 1  # intra-op threads per server process (see the module's docstring)
QUIET = ("--log-level", "warning")
BATCH_ONE = ("--max-batch", "1")
DYNAMIC = ("--max-batch", "64", "--max-wait-ms", "5")
ROOMY_QUEUE = ("--queue-size", "1024")  # more than any load here sends at once: nothing is refused
CONCURRENCY = pick(fast=(1, 8, 32), full=(1, 2, 4, 8, 16, 32, 64))
CLASSIFY_REQUESTS = pick(fast=200, full=3000)  # requests per load run
HEADLINE_CONCURRENCY = 32
CPU_ROUNDS = 2  # more load runs of both servers at the headline concurrency, taking turns, to pool CPU seconds over
BATCHING_TARGET = 1.3  # the book's aim: dynamic batching 1.3x batch-1 serving's throughput at concurrency 32 ...
P99_TARGET_MS = 100.0  # ... with a p99 latency within 100 ms

GENERATION_REQUESTS = pick(fast=8, full=32)
GENERATION_CONCURRENCY = 8
GENERATION_TOKENS = pick(fast=16, full=64)  # max_tokens of each request (a reply may stop earlier)
CONTINUOUS_TARGET = 3.0  # the book's aim: continuous batching 3x the tokens/s of one request at a time
BOUNDED_QUEUE = 1  # requests waiting in the pitfall's bounded one-at-a-time server (the default, 64, holds all 8)
QUESTIONS = (
    "Name three fruits.", "What is the capital of France?", "Write a short poem about the sea.",
    "Why is the sky blue?", "Give me a tip for learning to cook.", "What does a compiler do?",
    "Describe a cat in two sentences.", "How do plants make food?",
)  # fmt: skip
PROBE_INTERVAL_S = 0.05


# --- servers and loads (sec-serve-api, sec-serve-load) ----------------------------------------------------------


def classifier_server(*limits: str) -> list[str]:
    """The arguments of ``python -m effdl.serve`` for the chapter's classifier alone, under ``limits``."""
    return ["--model", "none", "--classifier", CLASSIFIER, *QUIET, *limits]


def text_server(*limits: str, classifier: str = CLASSIFIER) -> list[str]:
    """The arguments for SmolLM2-135M-Instruct (and ``classifier``), under ``limits``."""
    return ["--model", "smollm2", "--classifier", classifier, *QUIET, *limits]


@contextlib.contextmanager
def serving_smollm2(*limits: str) -> Iterator[Server]:
    """SmolLM2 and the classifier behind one server, for the chapter's first calls; stopped on exit."""
    with serving(*text_server(*limits), threads=SERVER_THREADS) as server:
        yield server


def in_thread(coroutine: Callable[[], Awaitable]) -> object:
    """Run ``coroutine()`` to its end on an event loop of its own, in a worker thread: the same call works from a
    script and from a notebook, whose own event loop is already running."""
    with ThreadPoolExecutor(1) as worker:
        return worker.submit(asyncio.run, coroutine()).result()


@functools.cache
def client_images(count: int = 64) -> torch.Tensor:
    """The first ``count`` test images as a client sends them: pixels in [0, 1]."""
    images, _ = data.fashion_mnist("test", limit=count).tensors
    return images * data.FMNIST_STD + data.FMNIST_MEAN


def classify_payloads(count: int) -> list[dict]:
    """``count`` request bodies of ``/v1/classify``, cycling through 64 test images (784 pixels to 4 decimals)."""
    bodies = [{"image": [round(p, 4) for p in image.flatten().tolist()]} for image in client_images()]
    return [bodies[i % len(bodies)] for i in range(count)]


def local_labels(count: int = 64) -> list[int]:
    """What the classifier predicts for the first ``count`` test images, run here without a server."""
    images = client_images(count)
    model = zoo.pretrained(CLASSIFIER).model.cpu().eval()
    with torch.no_grad():
        return model((images - data.FMNIST_MEAN) / data.FMNIST_STD).argmax(-1).tolist()


def served_labels(url: str, count: int = 64) -> list[int]:
    """The labels the server at ``url`` answers for the same images, one request each."""
    with httpx.Client(base_url=url, timeout=30) as http:
        return [http.post("/v1/classify", json=body).json()["label"] for body in classify_payloads(count)]


def check_api(whole: str, streamed: str, served: list[int], local: list[int]) -> None:
    """The stream carries the whole reply's text (greedy decoding), and the served classifier answers as the model
    does run here."""
    claims.claim("streamed reply equals the whole reply", float(streamed == whole), "==", full=1, fast=1)
    agreement = sum(a == b for a, b in zip(served, local, strict=True)) / len(local)
    claims.claim("served labels equal to the model's, run here", agreement, "==", full=1, fast=1)


def chat_payloads(count: int, max_tokens: int, stream: bool = True) -> list[dict]:
    """``count`` chat requests (one question each, cycling) for SmolLM2, streamed by default."""
    return [{"messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], "max_tokens": max_tokens,
             "stream": stream} for i in range(count)]  # fmt: skip


# --- what the server measures about itself (sec-serve-metrics) --------------------------------------------------

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Scrape:
    """Every sample of a Prometheus text exposition: ``(name, sorted labels) -> value``."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def scrape(url: str) -> Scrape:
    """Every sample of the server's ``GET /metrics``."""
    return parse_metrics(httpx.get(f"{url}/metrics", timeout=30).text)


def sample(scraped: Scrape, name: str, **labels: str) -> float:
    """The value of sample ``name`` with exactly ``labels`` (0 if the server has not reported it yet)."""
    return scraped.get((name, tuple(sorted(labels.items()))), 0.0)


def difference(after: Scrape, before: Scrape) -> Scrape:
    """What each counter, gauge and histogram sample gained between two scrapes."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def batch_histogram(scraped: Scrape, queue: str = "classify") -> dict[float, float]:
    """Forward passes per batch-size bucket (``le`` upper bounds, not cumulative) of ``effdl_batch_size``."""
    cumulative = sorted((float(dict(labels)["le"]), value) for (name, labels), value in scraped.items()
                        if name == "effdl_batch_size_bucket" and dict(labels)["queue"] == queue)  # fmt: skip
    counts, below = {}, 0.0
    for bound, value in cumulative:
        counts[bound], below = value - below, value
    return counts


@dataclasses.dataclass(frozen=True)
class Run:
    """One load run against one server: the client's report, what the server's metrics gained meanwhile, and the
    CPU seconds the server process spent on it."""

    report: LoadReport
    metrics: Scrape
    route: str = "/v1/classify"
    server_cpu_s: float = float("nan")

    @property
    def answered(self) -> int:
        return len(self.report.ok())

    def model_s(self) -> float:
        """Seconds of classifier forward passes per answered request (a batch's time shared by its images)."""
        return sample(self.metrics, "effdl_model_seconds_sum", queue="classify") / self.answered

    def server_s(self) -> float:
        """Mean seconds from the request's arrival in the server to its response's last byte."""
        seconds = sample(self.metrics, "effdl_request_seconds_sum", route=self.route)
        return seconds / sample(self.metrics, "effdl_request_seconds_count", route=self.route)

    def client_s(self) -> float:
        """Mean seconds from the client's send to the answer's last byte."""
        return statistics.fmean(o.latency_s for o in self.report.ok())

    def server_cpu_per_request(self) -> float:
        """CPU seconds of the server process (all its threads) per answered request."""
        return self.server_cpu_s / self.answered

    def client_cpu_per_request(self) -> float:
        """CPU seconds of the load generator per answered request."""
        return self.report.cpu_s / self.answered

    def mean_batch(self, queue: str = "classify") -> float:
        """Images per forward pass (rows per generation step for ``generate``) during the run."""
        count = sample(self.metrics, "effdl_batch_size_count", queue=queue)
        return sample(self.metrics, "effdl_batch_size_sum", queue=queue) / count

    def tokens_per_s(self) -> float:
        """Tokens the generator made per second of the run."""
        return sample(self.metrics, "effdl_tokens_generated_total") / self.report.wall_s

    def errors(self) -> int:
        """Answers of status 500 or more."""
        return sum(o.status >= 500 for o in self.report.outcomes)


def load_run(server: Server, path: str, payloads: Sequence[dict], concurrency: int, timeout_s: float = 60.0) -> Run:
    """:func:`run_load` against ``server``, with its metrics scraped and its CPU time read before and after."""
    before, server_cpu = scrape(server.url), server.cpu_seconds()
    report = in_thread(lambda: run_load(server.url, path, payloads, concurrency, timeout_s, deadline_s=600))
    server_cpu = server.cpu_seconds() - server_cpu
    return Run(report, difference(scrape(server.url), before), path, server_cpu)


async def run_with_probe(url: str, path: str, payloads: Sequence[dict], concurrency: int,
                         interval_s: float = PROBE_INTERVAL_S) -> tuple[LoadReport, list[float]]:  # fmt: skip
    """:func:`run_load`, and meanwhile ``GET /health`` every ``interval_s``: the report and each probe's
    seconds, which tell how long the server's event loop leaves a newcomer waiting."""
    done = asyncio.Event()

    async def probe() -> list[float]:
        waits = []
        async with httpx.AsyncClient(base_url=url, timeout=120) as http:
            while not done.is_set():
                start = time.perf_counter()
                await http.get("/health")
                waits.append(time.perf_counter() - start)
                await asyncio.sleep(interval_s)
        return waits

    prober = asyncio.create_task(probe())
    try:
        report = await run_load(url, path, payloads, concurrency, timeout_s=120, deadline_s=600)
    finally:
        done.set()
    return report, await prober


# --- the classifier under load: batching and replicas (sec-serve-load, sec-serve-batching, sec-serve-replicas) ---


@dataclasses.dataclass
class ClassifierStudy:
    """Load runs of the classifier: batch-1 serving and dynamic batching at each concurrency (``sweeps``), and the
    load spread over two replicas of the dynamic server at concurrency 32, with every process's memory, and
    ``cpu_runs``: more runs of both servers at the headline concurrency, taken in turns, for their CPU time."""

    sweeps: dict[str, dict[int, Run]]
    replicas: LoadReport
    rss: dict[str, list[int]]
    cpu_runs: dict[str, list[Run]] = dataclasses.field(default_factory=dict)

    def throughput(self, server: str) -> dict[int, float]:
        return {c: run.report.throughput() for c, run in self.sweeps[server].items()}

    def p99_ms(self, server: str) -> dict[int, float]:
        return {c: 1e3 * run.report.latency(99) for c, run in self.sweeps[server].items()}

    def speedup(self, concurrency: int = HEADLINE_CONCURRENCY) -> float:
        """Dynamic batching's throughput over batch-1 serving's."""
        return self.throughput("dynamic")[concurrency] / self.throughput("batch 1")[concurrency]

    def server_cpu_per_request(self, server: str) -> float:
        """``server``'s CPU seconds per answered request at :data:`HEADLINE_CONCURRENCY`, pooled over its sweep's
        run and its ``cpu_runs``: one run alone can catch a slow moment of the machine."""
        runs = [self.sweeps[server][HEADLINE_CONCURRENCY], *self.cpu_runs.get(server, [])]
        return sum(run.server_cpu_s for run in runs) / sum(run.answered for run in runs)

    def cpu_ratio(self) -> float:
        """The server's CPU seconds per answered request, dynamic batching over batch-1 serving."""
        return self.server_cpu_per_request("dynamic") / self.server_cpu_per_request("batch 1")

    def runs(self) -> list[Run]:
        swept = [run for sweep in self.sweeps.values() for run in sweep.values()]
        return swept + [run for runs in self.cpu_runs.values() for run in runs]

    def lost(self) -> int:
        return sum(run.report.lost() for run in self.runs()) + self.replicas.lost()

    def errors(self) -> int:
        return sum(run.errors() for run in self.runs()) + sum(o.status >= 500 for o in self.replicas.outcomes)

    def littles_law(self, server: str = "batch 1", concurrency: int = 8) -> float:
        """Throughput times mean latency over the number of clients: 1 when every client always waits."""
        run = self.sweeps[server][concurrency]
        return run.report.throughput() * run.client_s() / concurrency


def sweep(server: Server, concurrencies: Sequence[int] = CONCURRENCY, requests: int = CLASSIFY_REQUESTS,
          ) -> dict[int, Run]:  # fmt: skip
    """One load run per concurrency, lowest first, after a warm-up at the highest (the first batch of each size
    prepares its kernels, milliseconds each)."""
    load_run(server, "/v1/classify", classify_payloads(8 * max(concurrencies)), max(concurrencies))
    return {c: load_run(server, "/v1/classify", classify_payloads(requests), c) for c in concurrencies}


def runs_in_turns(servers: dict[str, Server], rounds: int = CPU_ROUNDS, requests: int = CLASSIFY_REQUESTS,
                  ) -> dict[str, list[Run]]:  # fmt: skip
    """``rounds`` load runs of each of ``servers`` at :data:`HEADLINE_CONCURRENCY`, the servers taking turns in
    each round, so a slow moment of the machine falls on all of them alike."""
    runs: dict[str, list[Run]] = {name: [] for name in servers}
    for _ in range(rounds):
        for name, server in servers.items():
            runs[name].append(load_run(server, "/v1/classify", classify_payloads(requests), HEADLINE_CONCURRENCY))
    return runs


@functools.cache
def classifier_study() -> ClassifierStudy:
    """Batch-1 serving and dynamic batching swept over :data:`CONCURRENCY` and then run :data:`CPU_ROUNDS` more times
    in turns at the headline concurrency, and two replicas of the dynamic server."""
    configs = {"batch 1": [*BATCH_ONE, *ROOMY_QUEUE], "dynamic": [*DYNAMIC, *ROOMY_QUEUE],
               "replica 1": [*DYNAMIC, *ROOMY_QUEUE], "replica 2": [*DYNAMIC, *ROOMY_QUEUE]}  # fmt: skip
    with serving_many([classifier_server(*args) for args in configs.values()], threads=SERVER_THREADS) as started:
        servers = dict(zip(configs, started, strict=True))
        sweeps = {name: sweep(servers[name]) for name in ("batch 1", "dynamic")}
        cpu_runs = runs_in_turns({name: servers[name] for name in sweeps})
        urls = [servers[name].url for name in ("replica 1", "replica 2")]
        in_thread(lambda: run_load(urls, "/v1/classify", classify_payloads(8 * HEADLINE_CONCURRENCY),
                                   HEADLINE_CONCURRENCY))  # warm-up  # fmt: skip
        replicas = in_thread(lambda: run_load(urls, "/v1/classify", classify_payloads(CLASSIFY_REQUESTS),
                                              HEADLINE_CONCURRENCY, deadline_s=600))  # fmt: skip
        rss = {"one process": [servers["dynamic"].rss_bytes()],
               "two processes": [servers[name].rss_bytes() for name in ("replica 1", "replica 2")]}  # fmt: skip
    return ClassifierStudy(sweeps, replicas, rss, cpu_runs)


def check_batching(study: ClassifierStudy) -> None:
    """Dynamic batching against batch-1 serving at concurrency 32: the book's targets, and what must hold."""
    speedup, p99 = study.speedup(), study.p99_ms("dynamic")[HEADLINE_CONCURRENCY]
    claims.target("dynamic batching / batch-1 throughput, concurrency 32", speedup, ">=", BATCHING_TARGET, unit="x",
                  section="sec-serve-split")  # fmt: skip
    claims.target("dynamic batching p99 latency, concurrency 32", p99, "<=", P99_TARGET_MS, unit="ms",
                  section="sec-serve-split")  # fmt: skip
    claims.claim("images per forward pass, dynamic batching at concurrency 32",
                 study.sweeps["dynamic"][HEADLINE_CONCURRENCY].mean_batch(), ">=", full=4, fast=2)  # fmt: skip
    claims.claim("server CPU per request, dynamic batching / batch 1, concurrency 32", study.cpu_ratio(), "<=",
                 full=0.7, fast=0.8, unit="x")  # fmt: skip
    claims.claim("server errors (5xx) in the load runs", study.errors(), "==", full=0, fast=0)
    claims.claim("lost requests in the load runs", study.lost(), "==", full=0, fast=0)


def check_littles_law(study: ClassifierStudy) -> None:
    """In a closed loop each client always has one request out, so throughput x latency = clients."""
    law = study.littles_law()
    claims.claim("throughput x mean latency / clients, batch 1 at concurrency 8", law, ">=", full=0.9, fast=0.8)
    claims.claim("throughput x mean latency / clients, batch 1 at concurrency 8 (upper)", law, "<=", full=1.02,
                 fast=1.02)  # fmt: skip


def split_holds(run: Run) -> bool:
    """The model's share of a request lies inside the server's, which lies inside the client's."""
    return run.model_s() <= run.server_s() <= run.client_s()


def check_split(study: ClassifierStudy) -> None:
    runs = study.runs()
    claims.claim("load runs where model <= server <= client seconds per request",
                 sum(map(split_holds, runs)) / len(runs), "==", full=1, fast=1)  # fmt: skip


def replica_speedup(study: ClassifierStudy) -> float:
    """Two replicas' throughput over one process's, at concurrency 32."""
    return study.replicas.throughput() / study.throughput("dynamic")[HEADLINE_CONCURRENCY]


# --- generation: continuous batching and a blocked event loop (sec-serve-batching, sec-serve-pitfalls) ---------


def blocking_app() -> FastAPI:
    """A common mistake: SmolLM2's ``generate`` called inside an ``async`` handler. While it runs, the event loop
    that should read other requests, answer ``/health`` and stream tokens is blocked. Serve it with ``python -m
    uvicorn --factory effdl.experiments.serving:blocking_app``."""
    model, tokenizer = models.smollm2()
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> dict:
        prompt = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():  # the mistake: seconds of arithmetic on the event loop's own thread
            out = model.generate(ids, max_new_tokens=body["max_tokens"], do_sample=False)
        reply = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        return {"choices": [{"message": {"content": reply}}]}

    return app


@dataclasses.dataclass
class GenerationStudy:
    """SmolLM2 at concurrency 8: continuous batching (8 rows) against one request at a time, with a queue that
    holds every client and with one of :data:`BOUNDED_QUEUE` (streamed chats); and the blocking app against the
    continuous server (whole chats); ``/health`` probed during each."""

    runs: dict[str, Run]
    probes: dict[str, list[float]]

    def speedup(self) -> float:
        return self.runs["continuous"].tokens_per_s() / self.runs["one at a time"].tokens_per_s()

    def first_token_ms(self, server: str, q: float) -> float:
        return 1e3 * self.runs[server].report.first_token(q)

    def step_ms(self, server: str) -> float:
        """Mean milliseconds per scheduler step (the run's wall time over its steps)."""
        run = self.runs[server]
        return 1e3 * run.report.wall_s / sample(run.metrics, "effdl_batch_size_count", queue="generate")

    def probe_ms(self, server: str, q: float = 99) -> float:
        """The ``q``-th percentile of the ``/health`` probes' latency, in milliseconds."""
        return 1e3 * float(np.percentile(self.probes[server], q))


@functools.cache
def generation_study() -> GenerationStudy:
    """The four SmolLM2 servers start together; each is measured alone while the others idle."""
    arg_lists = [text_server("--max-batch", str(GENERATION_CONCURRENCY), classifier="none"),
                 text_server(*BATCH_ONE, classifier="none"),
                 text_server(*BATCH_ONE, "--queue-size", str(BOUNDED_QUEUE), classifier="none")]  # fmt: skip
    blocking = ["effdl.experiments.serving:blocking_app", "--factory", *QUIET]
    with (serving_many(arg_lists, threads=SERVER_THREADS) as (continuous, one, bounded),
          serving_many([blocking], module="uvicorn", threads=SERVER_THREADS) as (blocked,)):  # fmt: skip
        payloads = chat_payloads(GENERATION_REQUESTS, GENERATION_TOKENS)
        runs, probes = {}, {}
        for name, server in (("continuous", continuous), ("one at a time", one), ("bounded queue", bounded)):
            load_run(server, "/v1/chat/completions", payloads[:2], 2)  # warm-up
            before = scrape(server.url)
            report, probes[name] = in_thread(lambda url=server.url: run_with_probe(
                url, "/v1/chat/completions", payloads, GENERATION_CONCURRENCY))  # fmt: skip
            runs[name] = Run(report, difference(scrape(server.url), before), "/v1/chat/completions")
        whole = chat_payloads(GENERATION_REQUESTS // 2, GENERATION_TOKENS, stream=False)
        for name, url in (("blocking handler", blocked.url), ("effdl.serve", continuous.url)):
            in_thread(lambda url=url: run_load(url, "/v1/chat/completions", whole[:1], 1))  # warm-up
            report, probes[name] = in_thread(lambda url=url: run_with_probe(
                url, "/v1/chat/completions", whole, len(whole)))  # fmt: skip
            runs[name] = Run(report, {}, "/v1/chat/completions")
    return GenerationStudy(runs, probes)


def check_generation(study: GenerationStudy) -> None:
    claims.target("continuous batching / one at a time, SmolLM2 tokens/s at concurrency 8", study.speedup(), ">=",
                  CONTINUOUS_TARGET, unit="x", section="sec-serve-batching")  # fmt: skip
    claims.claim("continuous batching / one at a time, SmolLM2 tokens/s at concurrency 8", study.speedup(), ">=",
                 full=2, fast=1.7, unit="x")  # fmt: skip
    failed = sum(run.report.lost() + run.errors() for run in study.runs.values())
    claims.claim("lost or failed generation requests", failed, "==", full=0, fast=0)


def check_queues(study: GenerationStudy) -> float:
    """Overload of one-at-a-time generation: a queue that holds every client answers each late, one of
    :data:`BOUNDED_QUEUE` answers few, soon, and refuses the rest with 429, losing none. Returns the ratio of the
    answered requests' p99 latencies."""
    unbounded, bounded = study.runs["one at a time"].report, study.runs["bounded queue"].report
    ratio = unbounded.latency(99) / bounded.latency(99)
    claims.claim("p99 latency of answered requests, queue of all 8 clients / queue of 1", ratio, ">=", full=2,
                 fast=1.5, unit="x")  # fmt: skip
    claims.claim("bounded queue under overload: refused with 429", bounded.statuses()[429], ">", full=0, fast=0)
    return ratio


def check_blocking(study: GenerationStudy) -> float:
    """``/health`` waits behind whole generations when the handler blocks the event loop; returns the ratio of
    the probes' p99."""
    ratio = study.probe_ms("blocking handler") / study.probe_ms("effdl.serve")
    claims.claim("/health p99 under generation load, blocking handler / effdl.serve", ratio, ">=", full=10, fast=5,
                 unit="x")  # fmt: skip
    return ratio


# --- limits (sec-serve-limits) ----------------------------------------------------------------------------------

LIMITS = ("--max-batch", "4", "--max-wait-ms", "50", "--queue-size", "4", "--timeout", "1", "--max-prompt-tokens",
          "64", "--max-body-bytes", "65536")  # fmt: skip
BURST = 64  # concurrent classify requests against a queue of 4
COUNTING = "Count from 1 to 500, separated by commas."  # an answer far longer than 1 s of decoding


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A request that breaks a limit: what it does, the status it got, the field or setting named, the message,
    the ``Retry-After`` header and whether a stack trace leaked."""

    what: str
    status: int
    param: str | None
    message: str
    retry_after: str | None = None
    traceback: bool = False


def _refusal(what: str, response: httpx.Response) -> Refusal:
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if "detail" in body:  # FastAPI's 422: a list of errors, each with the location of the field
        first = body["detail"][0]
        return Refusal(what, response.status_code, ".".join(map(str, first["loc"][1:])), first["msg"],
                       traceback="Traceback" in response.text)  # fmt: skip
    error = body.get("error", {})
    return Refusal(what, response.status_code, error.get("param"), error.get("message", response.text[:80]),
                   response.headers.get("retry-after"), "Traceback" in response.text)  # fmt: skip


def refusals(url: str) -> list[Refusal]:
    """One request over each limit of a server started with :data:`LIMITS`."""
    chat = "/v1/chat/completions"
    question = [{"role": "user", "content": QUESTIONS[0]}]
    requests = {
        "chat without messages": (chat, {"max_tokens": 8}),
        "max_tokens of 0": (chat, {"messages": question, "max_tokens": 0}),
        "a 27-row image": ("/v1/classify", {"image": [[0.0] * 28] * 27}),
        "a prompt of 100 words": (chat, {"messages": [{"role": "user", "content": "word " * 100}]}),
        "max_tokens over the limit": (chat, {"messages": question, "max_tokens": 1000}),
        "a body of 100 kB": ("/v1/completions", {"prompt": "x" * 100_000}),
        "a long answer within 1 s": (chat, {"messages": [{"role": "user", "content": COUNTING}], "max_tokens": 256}),
    }
    with httpx.Client(base_url=url, timeout=30) as http:
        return [_refusal(what, http.post(path, json=body)) for what, (path, body) in requests.items()]


@dataclasses.dataclass
class LimitsStudy:
    refusals: list[Refusal]
    burst: LoadReport


@functools.cache
def limits_study() -> LimitsStudy:
    """Each limit broken once, then :data:`BURST` classify requests at once against a queue of 4."""
    with serving(*text_server(*LIMITS), threads=SERVER_THREADS) as server:
        return LimitsStudy(refusals(server.url), in_thread(lambda: run_load(
            server.url, "/v1/classify", classify_payloads(BURST), BURST, deadline_s=60)))  # fmt: skip


def check_limits(study: LimitsStudy) -> None:
    expected = (422, 422, 422, 400, 400, 413, 504)
    documented = sum(r.status == status for r, status in zip(study.refusals, expected, strict=True))
    claims.claim("limit requests answered with the documented status", documented, "==", full=7, fast=7)
    claims.claim("stack traces in the refusals", sum(r.traceback for r in study.refusals), "==", full=0, fast=0)
    burst = study.burst
    refused = [o for o in burst.outcomes if o.status == 429]
    claims.claim(f"{BURST} requests at once against a queue of 4: refused with 429", len(refused), ">", full=0, fast=0)
    claims.claim("429s without Retry-After", sum(o.retry_after is None for o in refused), "==", full=0, fast=0)
    claims.claim("burst: lost, timed-out or 5xx requests", burst.lost() + sum(o.status >= 500 for o in burst.outcomes),
                 "==", full=0, fast=0)  # fmt: skip


def outcome_table(report: LoadReport) -> dict[str, int]:
    """How a run's requests ended: answered, refused (429), timed out (504), other errors, lost."""
    statuses = report.statuses()
    return {"answered": len(report.ok()), "refused (429)": statuses[429], "timed out (504)": statuses[504],
            "other errors": sum(n for s, n in statuses.items() if s >= 400 and s not in (429, 504)),
            "lost": report.lost()}  # fmt: skip


def first_token_s(outcomes: Sequence[Outcome]) -> list[float]:
    """The streams' times to first token, in seconds."""
    return [o.first_token_s for o in outcomes if o.first_token_s is not None]


# --- exercises ---------------------------------------------------------------------------------------------------


def self_check_littles_law(answer_ms: float, concurrency: int = 8) -> bool:
    """Exercise 1: is ``answer_ms`` the mean latency Little's law predicts for batch-1 serving at ``concurrency``
    from its throughput alone (within 5 %)?"""
    run = classifier_study().sweeps["batch 1"][concurrency]
    right = 1e3 * concurrency / run.report.throughput()
    problems = [] if abs(answer_ms - right) <= 0.05 * right else [f"{answer_ms:.2f} ms is not clients / throughput"]
    return claims.self_check(problems, f"{right:.2f} ms predicted, {1e3 * run.client_s():.2f} ms measured")


def self_check_batch_bound(answer: float) -> bool:
    """Exercise 2: is ``answer`` the upper bound on the mean images per forward pass of the dynamic server at
    concurrency 32 that its batch-size histogram gives (each forward counted at its bucket's upper bound)?"""
    run = classifier_study().sweeps["dynamic"][HEADLINE_CONCURRENCY]
    counts = batch_histogram(run.metrics)
    right = sum(bound * n for bound, n in counts.items() if bound != float("inf")) / sum(counts.values())
    problems = [] if abs(answer - right) <= 0.01 * right else [f"{answer:.2f} is not the buckets' weighted bound"]
    return claims.self_check(problems, f"{right:.2f} images at most; the true mean is {run.mean_batch():.2f}")


def self_check_model_share(answer: float, concurrency: int = 1) -> bool:
    """Exercise 3: is ``answer`` the fraction of the client's latency that batch-1 serving spends in the model at
    ``concurrency`` (within 0.02)?"""
    run = classifier_study().sweeps["batch 1"][concurrency]
    right = run.model_s() / run.client_s()
    problems = [] if abs(answer - right) <= 0.02 else [f"{answer:.3f} is not model seconds / client seconds"]
    return claims.self_check(problems, f"{right:.3f}")


def bench() -> None:
    """The chapter's rows: dynamic batching against batch-1 serving (targets and claims), Little's law, the time
    split, replicas, the queue pitfall, continuous batching on SmolLM2, the blocked event loop and the limits."""
    study = classifier_study()
    check_batching(study)
    check_littles_law(study)
    check_split(study)
    claims.measure("two replicas / one process, throughput at concurrency 32", replica_speedup(study), "x")
    claims.measure("resident memory per classifier process", statistics.fmean(study.rss["two processes"]) / 2**20,
                   "MiB")  # fmt: skip
    generation = generation_study()
    check_generation(generation)
    check_queues(generation)
    check_blocking(generation)
    for name in ("continuous", "one at a time"):
        claims.measure(f"SmolLM2 time to first token p99, {name}", generation.first_token_ms(name, 99), "ms")
    check_limits(limits_study())

"""effdl.serve: OpenAI's own client talks to a live server whose answers equal generating each prompt alone; the
schema holds for generated requests and no answer is a 500; limits refuse with the documented status (400, 413,
422, 429, 504); a client that leaves a stream stops its generation within a few tokens; the classifier batches
concurrent requests and answers as the model does one by one and reports its forward seconds; the launcher starts
servers as subprocesses and always stops them. Tiny models, no downloads, every server shut down."""

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import schemathesis
import torch
import uvicorn
from hypothesis import HealthCheck, settings
from torch import nn

from effdl.data import CharTokenizer
from effdl.infer import generate
from effdl.models import GPT, GPTConfig
from effdl.serve import ImageModel, Limits, TextModel, create_app, launch
from effdl.serve.load import run_load

TOKENIZER = CharTokenizer("\n" + "".join(chr(c) for c in range(32, 127)))
NAME = "tiny-gpt"


def _gpt(delay_s: float = 0.0, fail: bool = False) -> GPT:
    """A small GPT with noisy weights (an untrained one repeats one token); ``delay_s`` slows each forward pass,
    ``fail`` makes it raise."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, context=128, n_layer=2, n_head=4, n_embd=32)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    if delay_s or fail:
        model.lm_head = _Slow(model.lm_head, delay_s, fail)
    return model


class _Slow(nn.Module):
    def __init__(self, inner: nn.Module, delay_s: float, fail: bool) -> None:
        super().__init__()
        self.inner, self.delay_s, self.fail = inner, delay_s, fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("secret internal detail")
        time.sleep(self.delay_s)
        return self.inner(x)


def _classifier() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10)).eval()


def _greedy(model: GPT, prompt: str, new_tokens: int) -> str:
    ids = TOKENIZER.encode(prompt)[None]
    return TOKENIZER.decode(generate(model, ids, new_tokens)[0, ids.shape[1] :])


@contextlib.contextmanager
def serving(app, startup_s: float = 10.0):
    """``app`` under uvicorn on a free port of 127.0.0.1 in a thread; its base URL. Always shut down."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + startup_s
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        assert not thread.is_alive(), "the server did not shut down"


def _wait_until(condition, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


LIMITS = Limits(max_batch=4, queue_size=64, max_prompt_tokens=40, max_tokens=16, timeout_s=30, max_body_bytes=20_000)


@pytest.fixture(scope="module")
def model() -> GPT:
    return _gpt()


@pytest.fixture(scope="module")
def app(model):
    return create_app(TextModel(NAME, model, TOKENIZER), ImageModel("tiny-cnn", _classifier()), LIMITS)


@pytest.fixture(scope="module")
def server(app):
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=30) as client:
        yield client


def test_openai_client_completes_chats_and_streams_the_same_text(client, model):
    assert [m.id for m in client.models.list()] == [NAME]
    done = client.completions.create(model=NAME, prompt="To be", max_tokens=12)
    assert done.choices[0].text == _greedy(model, "To be", 12)
    assert done.choices[0].finish_reason == "length"
    assert (done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens) == (5, 12, 17)

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"}]
    chat = client.chat.completions.create(model=NAME, messages=messages, max_tokens=10)
    assert chat.choices[0].message.content == _greedy(model, "Be brief.\nWho are you?\n", 10)
    assert chat.usage.prompt_tokens == len("Be brief.\nWho are you?\n")

    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == chat.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length" and chunks[-1].usage.completion_tokens == 10
    pieces = client.completions.create(model=NAME, prompt="To be", max_tokens=12, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == done.choices[0].text


def test_a_stop_string_ends_the_reply_before_it(client, model):
    reference = _greedy(model, "To be", 16)
    stop = reference[5:7]
    done = client.completions.create(model=NAME, prompt="To be", max_tokens=16, stop=[stop, "\x7f"])
    assert done.choices[0].text == reference[: reference.index(stop)]
    assert done.choices[0].finish_reason == "stop"
    pieces = client.completions.create(model=NAME, prompt="To be", max_tokens=16, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == done.choices[0].text


def test_every_concurrent_request_gets_its_own_complete_answer(server, model):
    prompts = [("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[i % 26] * (1 + i % 7)) + "xyz"[: i % 4] for i in range(64)]
    payloads = [{"model": NAME, "prompt": p, "max_tokens": 4 + i % 9, "stream": i % 2 == 1}
                for i, p in enumerate(prompts)]  # fmt: skip
    report = asyncio.run(run_load(server, "/v1/completions", payloads, concurrency=16, timeout_s=30, deadline_s=60))
    assert report.statuses() == {200: 64} and report.lost() == 0
    for payload, outcome in zip(payloads, report.outcomes, strict=True):
        assert outcome.text == _greedy(model, payload["prompt"], payload["max_tokens"])
    assert all(o.first_token_s is not None and o.first_token_s <= o.latency_s for o in report.outcomes[1::2])
    assert report.throughput() > 0 and report.latency(50) <= report.latency(99)


def test_overload_is_refused_with_429_and_retry_after_not_lost():
    limits = Limits(max_batch=2, queue_size=2, max_prompt_tokens=20, max_tokens=8, timeout_s=30)
    app = create_app(TextModel(NAME, _gpt(delay_s=0.01), TOKENIZER), limits=limits)
    payloads = [{"model": NAME, "prompt": "Hello", "max_tokens": 8}] * 24
    with serving(app) as url:
        report = asyncio.run(run_load(url, "/v1/completions", payloads, concurrency=24, timeout_s=20, deadline_s=30))
    refused = [o for o in report.outcomes if o.status == 429]
    assert refused and all(o.retry_after == "1" and "busy" in o.error for o in refused)
    assert report.statuses()[200] >= limits.queue_size and set(report.statuses()) == {200, 429} and report.lost() == 0
    assert len({o.text for o in report.ok()}) == 1


def test_a_request_over_its_deadline_is_answered_504_and_leaves_the_batch():
    app = create_app(TextModel(NAME, _gpt(delay_s=0.05), TOKENIZER), limits=Limits(timeout_s=0.3, max_tokens=40))
    with serving(app) as url:
        start = time.monotonic()
        response = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 40}, timeout=10)
        assert response.status_code == 504 and time.monotonic() - start < 2
        assert response.json()["error"]["type"] == "timeout" and "0.3 s" in response.json()["error"]["message"]
        assert _wait_until(lambda: not app.state.generation.batcher.running, 2)
        assert app.state.generation.batcher.tokens_generated < 15


def test_a_client_that_leaves_a_stream_stops_its_generation_within_a_few_tokens():
    app = create_app(TextModel(NAME, _gpt(delay_s=0.02), TOKENIZER), limits=Limits(max_tokens=100))
    batcher = app.state.generation.batcher
    with serving(app) as url, httpx.Client(timeout=10) as http:
        body = {"prompt": "Hi", "max_tokens": 100, "stream": True}
        with http.stream("POST", f"{url}/v1/completions", json=body) as response:
            read = 0
            for line in response.iter_lines():
                read += line.startswith("data: ")
                if read == 5:
                    break
        assert _wait_until(lambda: not batcher.running, 3)
        assert batcher.tokens_generated <= read + 5, "generation went on after the client left"


def test_accepted_requests_finish_when_the_server_shuts_down():
    app = create_app(TextModel(NAME, _gpt(delay_s=0.01), TOKENIZER), limits=Limits(max_tokens=30))
    answers = []
    with serving(app) as url:
        thread = threading.Thread(target=lambda: answers.append(
            httpx.post(f"{url}/v1/completions", json={"prompt": "Hi", "max_tokens": 30}, timeout=10)))  # fmt: skip
        thread.start()
        assert _wait_until(lambda: app.state.generation.batcher.running, 5)
    thread.join(10)
    assert answers[0].status_code == 200 and len(answers[0].json()["choices"][0]["text"]) == 30


def test_the_classifier_batches_concurrent_requests_and_answers_as_the_model_does():
    model = _classifier()
    app = create_app(classifier=ImageModel("tiny-cnn", model, [f"class {i}" for i in range(10)]),
                     limits=Limits(max_batch=8, max_wait_ms=50))  # fmt: skip
    images = torch.rand(16, 1, 28, 28)
    bodies = [{"image": image[0].tolist() if i % 2 else image.flatten().tolist()} for i, image in enumerate(images)]

    async def classify_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            return await asyncio.gather(*(http.post("/v1/classify", json=body) for body in bodies))

    with serving(app) as url:
        responses = asyncio.run(classify_all(url))
    with torch.no_grad():
        expected = torch.cat([model(image[None]).softmax(-1) for image in images])
    for response, probabilities in zip(responses, expected, strict=True):
        answer = response.json()
        assert answer["label"] == int(probabilities.argmax()) and answer["class_name"] == f"class {answer['label']}"
        torch.testing.assert_close(torch.tensor(answer["probabilities"]), probabilities, atol=1e-5, rtol=1e-4)
    forwards = app.state.metrics.registry.get_sample_value("effdl_batch_size_count", {"queue": "classify"})
    assert forwards <= 8, f"16 concurrent requests took {forwards} forward passes"


def test_bad_requests_get_the_status_and_field_and_never_a_trace(server):
    def post(path: str, **kwargs) -> httpx.Response:
        response = httpx.post(f"{server}{path}", timeout=10, **kwargs)
        assert "Traceback" not in response.text
        return response

    missing = post("/v1/chat/completions", json={"model": NAME})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "messages"]
    zero = post("/v1/completions", json={"prompt": "Hi", "max_tokens": 0})
    assert zero.status_code == 422 and zero.json()["detail"][0]["loc"] == ["body", "max_tokens"]
    pixels = post("/v1/classify", json={"image": [[0.0] * 28] * 27})
    assert pixels.status_code == 422 and pixels.json()["detail"][0]["loc"][:2] == ["body", "image"]

    long_prompt = post("/v1/completions", json={"prompt": "x" * 41})
    assert long_prompt.status_code == 400 and "limit of 40" in long_prompt.json()["error"]["message"]
    assert long_prompt.json()["error"]["param"] == "prompt"
    many = post("/v1/completions", json={"prompt": "Hi", "max_tokens": 17})
    assert many.status_code == 400 and "limit of 16" in many.json()["error"]["message"]
    assert many.json()["error"]["param"] == "max_tokens"
    unknown = post("/v1/completions", json={"prompt": "naïve"})
    assert unknown.status_code == 400 and "vocabulary" in unknown.json()["error"]["message"]
    sampled = post("/v1/completions", json={"prompt": "Hi", "temperature": 0.7})
    assert sampled.status_code == 400 and sampled.json()["error"]["param"] == "temperature"

    huge = {"prompt": "x" * 30_000}
    assert post("/v1/completions", json=huge).status_code == 413
    chunked = post("/v1/completions", content=iter([b'{"prompt": "', b"x" * 30_000, b'"}']))
    assert chunked.status_code == 413


def test_a_failing_model_is_a_generic_500_and_the_server_goes_on():
    app = create_app(TextModel(NAME, _gpt(fail=True), TOKENIZER), limits=Limits(max_tokens=8))
    with serving(app) as url:
        for _ in range(2):
            response = httpx.post(f"{url}/v1/completions", json={"prompt": "Hi"}, timeout=10)
            assert response.status_code == 500 and response.json()["error"]["message"] == "internal server error"
            assert "secret" not in response.text and "Traceback" not in response.text


def test_metrics_count_requests_by_route_and_status(server):
    httpx.get(f"{server}/health", timeout=10)
    httpx.get(f"{server}/no/such/path", timeout=10)
    text = httpx.get(f"{server}/metrics", timeout=10).text
    assert 'effdl_requests_total{route="/health",status="200"}' in text
    assert 'effdl_requests_total{route="unmatched",status="404"}' in text
    assert "effdl_request_seconds_bucket" in text and 'effdl_queue_depth{queue="generate"}' in text
    assert "effdl_tokens_generated_total" in text and 'effdl_batch_size_count{queue="generate"}' in text


# 400 answers a schema-valid request over a token limit or outside the character vocabulary (neither is in the
# schema); 413 answers any request, valid or not, whose body is too large
SCHEMA_CONFIG = schemathesis.Config.from_dict({"checks": {
    "positive_data_acceptance": {"expected-statuses": ["2XX", 400, 413]},
    "negative_data_rejection": {"expected-statuses": [400, 413, 422]},
}})  # fmt: skip
schema = schemathesis.openapi.from_dict(
    create_app(TextModel(NAME, _gpt(), TOKENIZER), ImageModel("tiny-cnn", _classifier()), LIMITS).openapi(),
    config=SCHEMA_CONFIG,
)


@schema.parametrize()
@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_generated_requests_conform_to_the_schema_and_never_get_a_500(case, server):
    response = case.call_and_validate(base_url=server, timeout=10)
    assert response.status_code < 500 and "Traceback" not in response.text


def test_the_classifier_reports_its_forward_seconds_per_batch():
    app = create_app(classifier=ImageModel("tiny-cnn", _classifier()), limits=Limits(max_batch=4, max_wait_ms=20))
    bodies = [{"image": torch.rand(784).tolist()} for _ in range(8)]
    with serving(app) as url:
        report = asyncio.run(run_load(url, "/v1/classify", bodies, concurrency=8, timeout_s=10, deadline_s=30))
    assert report.statuses() == {200: 8}
    registry = app.state.metrics.registry
    forwards = registry.get_sample_value("effdl_model_seconds_count", {"queue": "classify"})
    assert forwards == registry.get_sample_value("effdl_batch_size_count", {"queue": "classify"}) and forwards <= 4
    model_s = registry.get_sample_value("effdl_model_seconds_sum", {"queue": "classify"})
    served_s = registry.get_sample_value("effdl_request_seconds_sum", {"route": "/v1/classify"})
    assert 0 < model_s < served_s


def test_run_load_keeps_each_outcome_in_its_payloads_order_and_counts_the_unsent_as_lost(server, model):
    payloads = [{"model": NAME, "prompt": p, "max_tokens": 3} for p in ("A", "BB", "CCC", "DDDD", "EEEEE")]
    report = asyncio.run(run_load(server, "/v1/completions", payloads, concurrency=2, timeout_s=30))
    assert [o.text for o in report.outcomes] == [_greedy(model, p["prompt"], 3) for p in payloads]
    late = asyncio.run(run_load(server, "/v1/completions", payloads, concurrency=1, deadline_s=1e-9))
    assert late.lost() >= len(payloads) - 1 and late.statuses()[0] >= len(payloads) - 1
    with pytest.raises(ValueError, match="concurrency"):
        asyncio.run(run_load(server, "/v1/completions", payloads, concurrency=0))


# --- the launcher: servers as subprocesses ----------------------------------------------------------------------


def test_serving_starts_a_subprocess_on_a_free_port_and_stops_it_even_when_the_block_raises():
    quiet = ("--model", "none", "--classifier", "none", "--log-level", "warning")
    with pytest.raises(RuntimeError, match="inside"), launch.serving(*quiet, threads=1) as server:
        assert server.url.startswith("http://127.0.0.1:") and server.process.poll() is None
        assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok", "generator": None,
                                                                         "classifier": None}  # fmt: skip
        assert server.rss_bytes() > 10 * 2**20 and server.cpu_seconds() > 0
        raise RuntimeError("a failure inside the block")
    assert server.process.poll() is not None, "the server outlived its block"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/health", timeout=2)


def test_serving_many_starts_servers_together_on_different_ports():
    quiet = ["--model", "none", "--classifier", "none", "--log-level", "warning"]
    with launch.serving_many([quiet, quiet], threads=1) as servers:
        assert len({s.url for s in servers}) == 2
        assert all(httpx.get(f"{s.url}/health", timeout=10).status_code == 200 for s in servers)
    assert all(s.process.poll() is not None for s in servers)


def test_a_server_that_cannot_start_raises_with_its_log():
    with pytest.raises(RuntimeError, match="exited with status 2(.|\n)*invalid choice"):
        with launch.serving("--model", "no-such-model", startup_s=60):
            pass


def test_a_server_that_ignores_sigterm_is_killed(tmp_path):
    ignores = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(9)"
    )
    log = tmp_path / "log"
    process = subprocess.Popen([sys.executable, "-c", ignores], stdout=log.open("wb"))
    server = launch.Server("http://127.0.0.1:1", process, log)
    assert _wait_until(lambda: log.read_text() == "up\n", 10)
    assert server.stop(stop_s=0.5) == -signal.SIGKILL

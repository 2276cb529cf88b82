"""The experiments of ``chap-distill-lm`` (``notebooks/07_distillation_lm.ipynb``): a char-level GPT about four
times smaller than the book's ``gpt-shakespeare``, taught by it, against the same student trained on the text
alone.

Every student trains with :func:`effdl.zoo.train_gpt`, the teacher's own loop and recipe (fewer steps), on
:func:`effdl.device`; token-level KD runs the teacher beside it batch by batch
(:class:`~effdl.distill.online.TeacherBatches`), sequence-level KD trains on text the teacher wrote. Every model is
scored in bits per character on the same held-out windows, and differences get a standard error from the
per-window differences (one seed per student: a student costs minutes on a 2-core CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from effdl import claims, data, lm, models, stats, zoo
from effdl.bench import param_count
from effdl.config import device, pick, seed_everything
from effdl.distill import KDLoss, kd_divergence
from effdl.distill.online import TeacherBatches
from effdl.experiments._shared import lm_suite

NOTEBOOK = "07_distillation_lm"

TEACHER = "gpt-shakespeare"
STUDENT = pick(fast={"n_layer": 1, "n_embd": 40}, full={"n_layer": 2, "n_embd": 128})  # about 4x fewer weights
STEPS = pick(fast=60, full=300)  # every student's optimizer steps, 32 windows of the teacher's context each
WARMUP = pick(fast=6, full=30)
SEEDS = pick(fast=(0, 1), full=(0, 1, 2))
TEMPERATURE = 1.0  # a language model's next-character distribution is already soft: no heating
ALPHAS = (0.5, 1.0)  # the share of the KD term, chosen on the validation split (seed 0)
SAMPLE = pick(fast=(8, 64), full=(32, 256))  # sequence-level KD: (streams, characters each) of teacher text
PROMPT = 8  # real characters that start each stream of teacher text (then dropped)
METHODS = ("alone", "token KD", "sequence KD", "same-size real text")
GAP_TARGET = 0.25  # the book's aim: token-level KD closes at least 25 % of the bits-per-character gap


@functools.cache
def teacher() -> nn.Module:
    """The trained char-level GPT of ``chap-quant-llm``, in eval mode on :func:`effdl.device`."""
    return zoo.pretrained(TEACHER).model.eval().to(device())


def student_recipe(seed: int = 0) -> zoo.Recipe:
    """The student's recipe: the teacher's, with :data:`STUDENT`'s shape, :data:`STEPS` steps and seed ``seed``."""
    return zoo.recipe(TEACHER, **STUDENT, steps=STEPS, warmup=WARMUP, seed=seed)


def teacher_steps() -> int:
    """The optimizer steps the teacher trained for (its zoo recipe)."""
    return zoo.recipe(TEACHER).train["steps"]


def _streams(length: int, seed: int) -> torch.Tensor:
    """:data:`SAMPLE`'s number of ``length``-character windows from random places in the train split."""
    train_split = data.shakespeare().split("train")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(train_split) - length, (SAMPLE[0],), generator=gen)
    return torch.stack([train_split[s : s + length] for s in starts.tolist()])


def teacher_streams(temperature: float = 1.0, streams: int | None = None, seed: int = 0) -> torch.Tensor:
    """``streams`` (default :data:`SAMPLE`'s) rows of :data:`SAMPLE`'s length written by the teacher at
    ``temperature`` (0: greedy), each started by :data:`PROMPT` real characters that are dropped afterwards.
    Without a KV cache (the inference chapter builds one) every new character costs a forward pass over the whole
    context, so the sample is small. Written once per process for each set of arguments."""
    return _teacher_streams(float(temperature), streams or SAMPLE[0], seed)


@functools.cache
def _teacher_streams(temperature: float, streams: int, seed: int) -> torch.Tensor:
    prompts = _streams(PROMPT, seed)[:streams]
    seed_everything(seed)
    sampled = teacher().generate(prompts.to(device()), SAMPLE[1], temperature=temperature)
    return sampled[:, PROMPT:].cpu()


def teacher_text(seed: int = 0) -> torch.Tensor:
    """Sequence-level KD's training text (``sec-distill-lm-sequence``): :func:`teacher_streams` sampled at
    temperature 1, joined into one token stream."""
    return teacher_streams(1.0, seed=seed).flatten()


def same_size_text(seed: int = 0) -> torch.Tensor:
    """As much real text as :func:`teacher_text` holds, in as many streams from random places of the train split."""
    return _streams(SAMPLE[1], seed + 1).flatten()


def student(method: str, seed: int = 0, alpha: float = 1.0) -> nn.Module:
    """The student GPT trained from seed ``seed`` by ``method`` (:data:`METHODS`) through
    :func:`effdl.zoo.train_gpt`, the teacher's own loop: on the train split alone; on it with the teacher's
    next-character distribution at every position as the target (token-level KD at :data:`TEMPERATURE`, ``alpha``
    of the loss; the teacher runs batch by batch); on a small sample of teacher text (sequence-level KD); or on
    real text of the same size. Trained once per process: do not modify it."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return _student(method, seed, alpha if method == "token KD" else None)


@functools.cache
def _student(method: str, seed: int, alpha: float | None) -> nn.Module:
    rec = student_recipe(seed)
    seed_everything(seed)
    model = zoo.build(rec.arch)
    if method == "token KD":
        zoo.train_gpt(model, rec.train, loss=KDLoss(TEMPERATURE, alpha), validate=False,
                      wrap=lambda batches: TeacherBatches(batches, teacher()))  # fmt: skip
    else:
        tokens = {"alone": None, "sequence KD": teacher_text(), "same-size real text": same_size_text()}[method]
        zoo.train_gpt(model, rec.train, tokens=tokens, validate=False)
    return model.eval()


@functools.cache
def windows(split: str = "test") -> list:
    """Held-out windows of the teacher's context: ``chap-prune-structured``'s test windows, or as many from the
    validation split (for choices)."""
    test = lm_suite(TEACHER)[1]
    if split == "test":
        return test
    tokens, context = data.shakespeare().split(split), teacher().cfg.context
    return lm.token_windows(tokens, context, sum(len(x) for x, _ in test), batch_size=32)


def bits_per_char(model: nn.Module, split: str = "test") -> torch.Tensor:
    """Bits per character of ``model`` on each held-out window of ``split``: its mean next-character loss / ln 2."""
    return lm.window_losses(model, windows(split)) / math.log(2)


def choose_alpha() -> float:
    """The share of the KD term in :data:`ALPHAS` with the lowest validation bits per character, seed 0."""
    return min(ALPHAS, key=lambda a: bits_per_char(student("token KD", 0, a), "val").mean().item())


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Test bits per character of the teacher and of each method, per held-out window (``windows``) and, for the
    methods run from several seeds, the mean of each seed (``seeds``)."""

    windows: dict[str, torch.Tensor]  # "teacher" and each method (seed 0), bits per character on each window
    seeds: dict[str, list[float]]  # method -> mean bits per character of each seed

    def mean(self, label: str) -> float:
        runs = self.seeds.get(label)
        return sum(runs) / len(runs) if runs else self.windows[label].mean().item()

    def gain(self, label: str, over: str = "alone") -> stats.Difference:
        """``over`` minus ``label`` in bits per character (positive: ``label`` is better): over seeds when both
        were run from several, else paired over the held-out windows of seed 0."""
        if label in self.seeds and over in self.seeds:
            return stats.difference_of_means(self.seeds[over], self.seeds[label])
        spread = stats.spread((self.windows[over] - self.windows[label]).tolist())
        return stats.Difference(spread.mean, spread.se, spread.n - 1)

    def gap_closed(self, label: str = "token KD") -> float:
        """(alone − label) / (alone − teacher) in bits per character: the share of the gap ``label`` closes."""
        return (self.mean("alone") - self.mean(label)) / (self.mean("alone") - self.mean("teacher"))


def compare(alpha: float) -> Comparison:
    """Test bits per character of the teacher and of every method (``sec-distill-lm-kd``): the student alone and
    token-level KD at ``alpha`` from each of :data:`SEEDS`, sequence-level KD and its same-size control from
    seed 0."""
    per_window = {"teacher": bits_per_char(teacher())}
    per_window |= {m: bits_per_char(student(m, 0, alpha)) for m in METHODS}
    seeds = {m: [per_window[m].mean().item()] + [bits_per_char(student(m, s, alpha)).mean().item() for s in SEEDS[1:]]
             for m in ("alone", "token KD")}  # fmt: skip
    return Comparison(per_window, seeds)


def check(result: Comparison) -> stats.Difference:
    """The claim of ``sec-distill-lm-kd`` (token-level KD lowers the student's bits per character, mean of seeds)
    and the book's targets (by more than two standard errors over seeds; at least 25 % of the gap closed)."""
    gain = result.gain("token KD")
    claims.claim("student alone minus token KD, bits per character (mean of seeds)", gain.value, ">", full=0.0,
                 fast=-0.05)  # fmt: skip
    claims.target("char-GPT token KD gain over the student alone, in standard errors",
                  gain.value / gain.se if gain.se else math.inf, ">", 2.0, section="sec-distill-lm-kd")  # fmt: skip
    claims.target("char-GPT token KD gap closed", result.gap_closed(), ">=", GAP_TARGET, section="sec-distill-lm-kd")
    return gain


# --- pitfalls (sec-distill-lm-pitfalls) -------------------------------------------------------------


PITFALL_STREAMS = pick(fast=4, full=8)  # greedy streams written for the repetition pitfall


def vocabularies() -> dict[str, int]:
    """The sizes of the two vocabularies, how many of SmolLM2's tokens are one character of the char GPT's, and how
    many are strings of several characters: a KL divergence between their next-token distributions is not defined,
    the two sum over different sets (``sec-distill-lm-setup``)."""
    _, tokenizer = models.smollm2()
    chars = set(data.shakespeare().tokenizer.chars)
    pieces = [tokenizer.decode([i]) for i in range(len(tokenizer))]
    return {"char GPT": len(chars), "SmolLM2": len(tokenizer),
            "SmolLM2 tokens that are one of its characters": sum(piece in chars for piece in pieces),
            "SmolLM2 tokens of several characters": sum(len(piece) > 1 for piece in pieces)}  # fmt: skip


def check_vocabularies(vocab: dict[str, int]) -> float:
    """The claim of ``sec-distill-lm-setup``: every character of the char GPT is also a SmolLM2 token."""
    return claims.claim("char-GPT characters that are no SmolLM2 token",
                        vocab["char GPT"] - vocab["SmolLM2 tokens that are one of its characters"], "==", full=0,
                        fast=0)  # fmt: skip


def distinct_ngrams(streams: torch.Tensor, n: int = 8) -> float:
    """Mean over rows of a ``(streams, length)`` token tensor of the share of its ``n``-grams that are distinct:
    near 1 for varied text, low for text that repeats itself."""
    if streams.ndim != 2 or streams.shape[1] < n:
        raise ValueError(f"streams must be (streams, length >= {n}), got {tuple(streams.shape)}")
    shares = [len(set(map(tuple, row.unfold(0, n, 1).tolist()))) / (len(row) - n + 1) for row in streams]
    return sum(shares) / len(shares)


def repetition() -> dict[str, float]:
    """:func:`distinct_ngrams` of :data:`PITFALL_STREAMS` streams of real text, of teacher text sampled at
    temperature 1 and of greedy teacher text from the same prompts (``sec-distill-lm-pitfalls``)."""
    return {"real text": distinct_ngrams(_streams(SAMPLE[1], 1)[:PITFALL_STREAMS]),
            "teacher, sampled": distinct_ngrams(teacher_streams(1.0)[:PITFALL_STREAMS]),
            "teacher, greedy": distinct_ngrams(teacher_streams(0.0, PITFALL_STREAMS))}  # fmt: skip


def memorized(method: str = "sequence KD") -> dict[str, float]:
    """Bits per character of the ``method`` student (seed 0) on the text it trained on and on the test windows: a
    small training text is overfitted (``sec-distill-lm-sequence``)."""
    text = {"sequence KD": teacher_text(), "same-size real text": same_size_text()}[method]
    context = teacher().cfg.context
    seen = lm.token_windows(text, context, (len(text) - 1) // context, batch_size=32)
    model = student(method)
    return {"training text": (lm.window_losses(model, seen) / math.log(2)).mean().item(),
            "test": bits_per_char(model).mean().item()}  # fmt: skip


def check_sequence(result: Comparison, seen: dict[str, dict[str, float]]) -> None:
    """The claims of ``sec-distill-lm-sequence``: teacher text teaches more than as much real text (fast mode's
    weak teacher writes poor text); a small sample of it does not replace the training split (the sequence-KD
    student is worse than the student alone), and it is overfitted (the student scores far better on its own
    training text than on the test windows)."""
    claims.claim("same-size real text minus sequence KD, test bits per character",
                 result.gain("sequence KD", "same-size real text").value, ">", full=0.0, fast=-0.1)  # fmt: skip
    claims.claim("sequence KD minus student alone, test bits per character", -result.gain("sequence KD").value,
                 ">", full=0.1, fast=0.0)  # fmt: skip
    by_heart = seen["sequence KD"]["test"] - seen["sequence KD"]["training text"]
    claims.claim("sequence-KD student, test minus training-text bits per character", by_heart, ">", full=0.5,
                 fast=0.1)  # fmt: skip


def check_repetition(variety: dict[str, float]) -> float:
    """The claim of ``sec-distill-lm-pitfalls``: greedy teacher text repeats itself, keeping under half as many
    distinct 8-grams as sampled teacher text."""
    return claims.claim("distinct 8-grams, greedy / sampled teacher text",
                        variety["teacher, greedy"] / variety["teacher, sampled"], "<", full=0.5, fast=0.5)  # fmt: skip


@torch.no_grad()
def per_batch_kl_ratio() -> float:
    """``F.kl_div(..., reduction="batchmean")`` on unflattened ``(batch, time, vocabulary)`` logits over the right
    KD divergence, on one batch of test windows (``sec-distill-lm-pitfalls``), claimed to be the window's length."""
    x, _ = windows()[0]
    log_q = torch.log_softmax(student("alone")(x.to(device())), -1)
    log_p = torch.log_softmax(teacher()(x.to(device())), -1)
    wrong = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    ratio = (wrong / kd_divergence(log_q, log_p, 1.0)).item()
    claims.claim("|batch-only KL / right KL / window length - 1|", abs(ratio / x.shape[1] - 1), "<=", full=1e-3,
                 fast=1e-3)  # fmt: skip
    return ratio


def decode(tokens: torch.Tensor) -> str:
    """Characters of char-GPT token ids."""
    return data.shakespeare().tokenizer.decode(tokens)


# --- self-checks for the exercises -------------------------------------------------------------------


def self_check_gap_closed(answer: float, result: Comparison, tolerance: float = 0.01) -> bool:
    """Exercise 1: is ``answer`` the share of the bits-per-character gap that token-level KD closed?"""
    right = result.gap_closed()
    problems = [] if abs(answer - right) <= tolerance else [
        f"{answer:.3f} is not (alone − KD) / (alone − teacher) of the means"]  # fmt: skip
    return claims.self_check(problems, f"token-level KD closed {right:.1%} of the gap")


def self_check_token_kd(kd_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                        temperature: float = 2.0, alpha: float = 0.5) -> bool:  # fmt: skip
    """Exercise 2: does ``kd_loss(student_logits, teacher_logits, targets)`` on ``(batch, time, vocabulary)``
    logits equal the library's token-level KD loss, every position one example?"""
    gen, positions = torch.Generator().manual_seed(0), 16
    student_logits = 3 * torch.randn(4, positions, 84, generator=gen)
    teacher_logits = 3 * torch.randn(4, positions, 84, generator=gen)
    targets = torch.randint(0, 84, (4, positions), generator=gen)
    expected = KDLoss(temperature, alpha)(student_logits, (targets, teacher_logits)).item()
    yours = float(kd_loss(student_logits, teacher_logits, targets))
    problems = []
    if abs(yours - expected) > 1e-4 * max(1.0, abs(expected)):
        per_batch = expected + (positions - 1) * alpha * kd_divergence(student_logits, teacher_logits, temperature)
        hint = " (divide the KL by batch × time, not by batch)" if abs(yours - per_batch.item()) < 1e-3 else ""
        problems.append(f"{yours:.5f} instead of {expected:.5f}{hint}")
    return claims.self_check(problems, f"{yours:.5f}, token-level KD at T={temperature:g}, alpha={alpha:g}")


def self_check_student(model: nn.Module, max_weights: int, max_bits: float) -> bool:
    """Exercise 3: at most ``max_weights`` weights and at most ``max_bits`` test bits per character?"""
    weights, bits = param_count(model), bits_per_char(model.eval()).mean().item()
    problems = [f"{weights:,} weights, more than {max_weights:,}"] if weights > max_weights else []
    if bits > max_bits:
        problems.append(f"{bits:.4f} bits per character, above {max_bits:.4f}")
    return claims.self_check(problems, f"{weights:,} weights, {bits:.4f} bits per character")


def bench() -> None:
    """The rows of ``chap-distill-lm``: the student's size, the bits per character of every method, token KD's
    gain and share of the gap."""
    claims.measure("teacher / student weights", param_count(teacher()) / param_count(student("alone")), "x")
    alpha = claims.measure("token KD alpha chosen on validation", choose_alpha())
    result = compare(alpha)
    for label in ("teacher", *METHODS):
        claims.measure(f"{label} test bits per character", result.mean(label))
    check(result)

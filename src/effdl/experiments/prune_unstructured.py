"""The experiments of ``chap-prune-unstructured`` (``notebooks/05_prune_unstructured.ipynb``): one-shot
and iterative pruning of the Fashion-MNIST baselines, sensitivity, storage, and the lottery ticket.

The notebook and :func:`bench` call the same functions, and the same ``check_*`` functions assert the
chapter's claims in both. The ``self_check_*`` functions check a student's answers to the exercises.

Models, scores and fine-tuning live on :func:`effdl.device` (a GPU where there is one). The sparse-kernel
timings (:func:`crossover`, Exercise 5) measure ``torch.sparse.mm`` on the CPU, the device this chapter's
verdict on unstructured sparsity is about; ``chap-prune-structured`` measures the GPU's 2:4 kernels where there
is a GPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from effdl import bench as measure_bench
from effdl import claims, stats, train, zoo
from effdl.config import device, pick, seed_everything
from effdl.experiments._shared import fmnist_accuracy, fmnist_batches, fmnist_correct, score_batches
from effdl.prune import recipes, storage
from effdl.prune.masks import (
    MaskKeeper,
    Masks,
    Scores,
    apply_masks_,
    global_masks,
    layer_sparsity,
    magnitude_scores,
    polynomial_sparsity,
    prunable,
    sparsity,
)

NOTEBOOK = "05_prune_unstructured"

# label -> (score, scope) of the one-shot curves in ``sec-prune-unstructured-scores``
VARIANTS = {
    "random": ("random", "global"),
    "magnitude (layer-wise)": ("magnitude", "layer"),
    "magnitude (global)": ("magnitude", "global"),
    "Taylor (global)": ("taylor", "global"),
    "OBD (global)": ("obd", "global"),
}


def baseline(name: str = "resnet-fmnist") -> nn.Module:
    """A trained baseline of ``chap-measuring`` in eval mode on :func:`effdl.device`, its convolution weights
    channels-last (faster on a CPU and on a GPU's tensor cores, the same results)."""
    return zoo.pretrained(name).model.eval().to(device(), memory_format=torch.channels_last)


def resnet() -> nn.Module:
    """The chapter's model: the ``resnet-fmnist`` baseline."""
    return baseline("resnet-fmnist")


def sparsities() -> list[float]:
    """The sparsities of the one-shot curves: 50 % to 98 % in full mode, three of them in fast mode."""
    return pick(fast=[0.5, 0.8, 0.9], full=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98])


def all_scores(model: nn.Module, batches: list) -> dict[str, Scores]:
    """Every score of :data:`effdl.prune.recipes.METHODS` for ``model``, computed once on ``batches``."""
    return {method: recipes.scores_for(model, method, batches) for method in recipes.METHODS}


def oneshot(model: nn.Module, scores: dict[str, Scores], batches: list, points: list[float],
            variants: dict[str, tuple[str, str]] | None = None) -> dict[str, list[float]]:  # fmt: skip
    """Test accuracy of ``model`` pruned once to each sparsity of ``points`` (BN re-estimated on ``batches``),
    for each label -> (score, scope) of ``variants`` (default :data:`VARIANTS`), ``sec-prune-unstructured-scores``."""
    return {label: [fmnist_accuracy(recipes.prune_oneshot(model, scores[method], s, scope, batches)) for s in points]
            for label, (method, scope) in (variants or VARIANTS).items()}  # fmt: skip


def finetuned(model: nn.Module, scores: dict[str, Scores], batches: list, points: list[float],
              variants: dict[str, tuple[str, str]] | None = None) -> dict[str, list[float]]:  # fmt: skip
    """As :func:`oneshot`, each pruned model then fine-tuned for one epoch on 500 (fast) or 3,000 (full)
    training images with its mask kept; by default random, global magnitude and OBD in full mode (the floor, the
    cheap score and the costly one: 18 fine-tunings, within the chapter's 15 minutes), every variant on a GPU,
    two in fast mode."""
    tune = finetuner(1, lr=0.01, train_limit=pick(fast=500, full=3000, gpu=5000))
    variants = variants or pick(fast={k: VARIANTS[k] for k in ("magnitude (global)", "OBD (global)")},
                                full={k: VARIANTS[k] for k in ("random", "magnitude (global)", "OBD (global)")},
                                gpu=VARIANTS)  # fmt: skip
    return {label: [fmnist_accuracy(recipes.finetune_masked(
        recipes.prune_oneshot(model, scores[method], s, scope, batches), tune)) for s in points]
        for label, (method, scope) in variants.items()}  # fmt: skip


def scope_table(model: nn.Module, scores: dict[str, Scores], batches: list,
                target: float = 0.9) -> dict[tuple[str, str], torch.Tensor]:  # fmt: skip
    """Per-image test correctness of magnitude, Taylor and OBD one-shot at ``target``, ranked globally and
    per layer (BN re-estimated): ``(method, scope) -> bool tensor``, for McNemar's test."""
    return {(method, scope): fmnist_correct(recipes.prune_oneshot(model, scores[method], target, scope, batches))
            for method in ("magnitude", "taylor", "obd") for scope in ("global", "layer")}  # fmt: skip


def gradient_scores_vs_magnitude(table: dict[tuple[str, str], torch.Tensor], scope: str = "global") -> stats.Paired:
    """McNemar's test of the better of Taylor and OBD against magnitude in ``scope`` (a :func:`scope_table`)."""
    best = max(("taylor", "obd"), key=lambda m: int(table[m, scope].sum()))
    return stats.mcnemar(table[best, scope], table["magnitude", scope])


def obd_prediction(model: nn.Module, scores: dict[str, Scores], batches: list,
                   points: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)) -> list[dict]:  # fmt: skip
    """OBD's predicted loss increase of a whole mask (the sum of ``½ h_ii w_i²`` over the removed weights)
    against the increase measured on the same training ``batches``, for the OBD and the magnitude masks at
    each sparsity (BN *not* re-estimated: the formula is tested as it is), ``sec-prune-unstructured-scores``."""
    dense = train.evaluate(model, batches)["loss"]
    rows = []
    for s in points:
        for method in ("magnitude", "obd"):
            masks = global_masks(scores[method], s)
            predicted = sum(float((scores["obd"][n] * (1 - m)).sum()) for n, m in masks.items())
            pruned = apply_masks_(copy.deepcopy(model), masks)
            rows.append({"sparsity": s, "mask": method, "predicted": predicted,
                         "measured": train.evaluate(pruned, batches)["loss"] - dense})  # fmt: skip
    return rows


def finetuner(epochs: int, lr: float = 0.01, train_limit: int | None = None) -> recipes.Finetune:
    """The chapter's fine-tuning, ``epochs`` of :func:`effdl.train.finetune`, as a ``finetune(model)`` function."""
    return lambda model: train.finetune(model, epochs, lr=lr, train_limit=train_limit)


def default_rounds() -> int:
    """Prune/fine-tune rounds (and epochs of fine-tuning) of ``sec-prune-unstructured-iterative``: 2 fast, 6 full."""
    return pick(fast=2, full=6)


def iterative_vs_oneshot(model: nn.Module, final: float = 0.9, rounds: int | None = None, lr: float = 0.05,
                         train_limit: int | None = None) -> dict[str, nn.Module]:  # fmt: skip
    """``sec-prune-unstructured-iterative``'s comparison at one budget: ``rounds`` epochs of fine-tuning either
    after one prune to ``final``, or spread over ``rounds`` prune/fine-tune steps along the cubic schedule.
    Full mode fine-tunes on the whole train split, fast mode on 1,000 images."""
    steps = rounds or default_rounds()
    schedule = [polynomial_sparsity(k, steps, final) for k in range(1, steps + 1)]
    limit = train_limit or pick(fast=1000, full=None)
    return {
        "one-shot": recipes.prune_finetune(copy.deepcopy(model), [final], finetuner(steps, lr, limit)),
        "iterative": recipes.prune_finetune(copy.deepcopy(model), schedule, finetuner(1, lr, limit)),
    }


@dataclass(frozen=True)
class Comparison:
    """Test accuracies of a few models on the same test images, McNemar's test of the first two named,
    and the sparsity of each model (counted from its tensors)."""

    accuracy: dict[str, float]
    sparsity: dict[str, float]
    paired: stats.Paired

    def drop(self, name: str, reference: str = "dense") -> float:
        """Accuracy of ``reference`` minus that of ``name``, in points."""
        return 100 * (self.accuracy[reference] - self.accuracy[name])


def compare(models: dict[str, nn.Module], a: str, b: str) -> Comparison:
    """Evaluate ``models`` once on the test split; McNemar's test compares model ``a`` with model ``b``."""
    correct = {name: fmnist_correct(model) for name, model in models.items()}
    return Comparison({name: c.sum().item() / c.numel() for name, c in correct.items()},
                      {name: sparsity(model) for name, model in models.items()},
                      stats.mcnemar(correct[a], correct[b]))  # fmt: skip


def pruned_pair(name: str = "resnet-fmnist", final: float = 0.9) -> tuple[dict[str, nn.Module], Comparison]:
    """The dense baseline ``name`` and its :func:`iterative_vs_oneshot` pair, compared (iterative vs one-shot)."""
    dense = baseline(name)
    models = {"dense": dense, **iterative_vs_oneshot(dense, final=final)}
    return models, compare(models, "iterative", "one-shot")


def sensitivity(model: nn.Module) -> tuple[list[float], dict[str, list[float]]]:
    """``sec-prune-unstructured-sensitivity``: each layer alone pruned by magnitude, accuracy on the first 2,000
    images of the validation split (1,000 in fast mode; all 5,000 on a GPU: a standard error under a point is
    enough to tell a fragile layer from a robust one); returns the sparsities and the scan."""
    points = pick(fast=[0.5, 0.99], full=[0.5, 0.8, 0.9, 0.95, 0.99])
    val = fmnist_batches("val")[: pick(fast=1, full=2, gpu=5)]
    return points, recipes.sensitivity_scan(model, points, val)


def storage_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of ``model``'s prunable weights stored dense, as a bitmask and as CSR
    (``sec-prune-unstructured-storage``)."""
    weights = [m.weight.detach() for m in prunable(model).values()]
    formats = {"dense": storage.dense_bytes, "bitmask": storage.bitmask_bytes, "CSR": storage.csr_bytes}
    return {fmt: sum(fn(w) for w in weights) for fmt, fn in formats.items()}


def crossover(batches: tuple[int, ...] = (64, 1)) -> tuple[list[float], dict[int, list[float]]]:
    """Dense time / CSR ``torch.sparse.mm`` time for a square weight (512 fast, 1,024 full) at several
    densities and each batch size, timed interleaved (:func:`effdl.prune.storage.sparse_vs_dense`)."""
    size = pick(fast=512, full=1024)
    densities = pick(fast=[0.01, 0.1, 0.5], full=[0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5])
    ratios = {}
    for batch in batches:
        inputs = torch.randn(size, batch)
        times = [storage.sparse_vs_dense(storage.random_sparse(size, size, d), inputs,
                                         min_run_time=pick(fast=0.02, full=0.3)) for d in densities]  # fmt: skip
        ratios[batch] = [dense / sparse for dense, sparse in times]
    return densities, ratios


def stale_bn(model: nn.Module, scores: dict[str, Scores], points: list[float]) -> list[float]:
    """Test accuracy of global magnitude pruning at each of ``points`` *without* re-estimating BatchNorm."""
    return [fmnist_accuracy(recipes.prune_oneshot(model, scores["magnitude"], s)) for s in points]


def emptied_layer(model: nn.Module, scores: dict[str, Scores], batches: list,
                  target: float = 0.98) -> tuple[str, float, float]:  # fmt: skip
    """The pitfall of global ranking: ``(emptiest layer, its sparsity, test accuracy)`` at ``target``
    (BN re-estimated)."""
    pruned = recipes.prune_oneshot(model, scores["magnitude"], target, "global", batches)
    name, zeros = max(layer_sparsity(pruned).items(), key=lambda kv: kv[1])
    return name, zeros, fmnist_accuracy(pruned)


def ticket_epochs() -> int:
    """Epochs of the lottery ticket's shortened ``cnn-fmnist`` recipe: 1 fast, 4 full."""
    return pick(fast=1, full=4)


def lottery_ticket(name: str, target: float, epochs: int) -> Comparison:
    """Frankle & Carbin's experiment (``sec-prune-unstructured-ticket``) on baseline ``name`` trained for ``epochs``
    (on 8,000 images in fast mode).

    The mask is global magnitude pruning of the trained dense model; the *winning ticket* trains the
    surviving weights from their original initial values, the *control* the same mask from a new
    random initialization, both with the dense model's own recipe. McNemar compares ticket and control.
    """
    dense = zoo.pretrained(name, epochs=epochs, train_limit=pick(fast=8000, full=None))
    masks = global_masks(magnitude_scores(dense.model), target)
    models = {"dense": dense.model.to(device())}
    for label, seed in (("ticket", dense.recipe.train["seed"]), ("random reinit", dense.recipe.train["seed"] + 1)):
        seed_everything(seed)  # the dense run's own starting point for the ticket, a fresh draw for the control
        initial = zoo.build(dense.recipe.arch).state_dict()
        model = recipes.rewind_(zoo.build(dense.recipe.arch), initial, masks)
        seed_everything(dense.recipe.train["seed"])  # the same data order for both
        with MaskKeeper(model, masks):
            zoo.train_fmnist(model, dense.recipe.train)
        models[label] = model.to(device(), memory_format=torch.contiguous_format).eval()
    return compare({"ticket": models["ticket"], "random reinit": models["random reinit"], "dense": models["dense"]},
                   "ticket", "random reinit")  # fmt: skip


# --- the chapter's claims, asserted by the notebook and by bench() -------------------------------------------


def check_scores(curves: dict[str, list[float]], points: list[float]) -> float:
    """Claim: global magnitude beats random by a wide margin at every sparsity from 50 % to 90 %."""
    gaps = [100 * (m - r) for s, m, r in zip(points, curves["magnitude (global)"], curves["random"], strict=True)
            if 0.5 <= s <= 0.9]  # fmt: skip
    return claims.claim("magnitude (global) - random, smallest gap at 50-90 %", min(gaps), ">=",
                        full=20.0, fast=20.0, unit="pt")  # fmt: skip


def check_bn(stale: float, fresh: float) -> float:
    """Claim: re-estimating BatchNorm after a one-shot 80 % magnitude prune beats keeping the stale statistics."""
    return claims.claim("BN re-estimated - stale BN, magnitude 80 %", 100 * (fresh - stale), ">=",
                        full=20.0, fast=20.0, unit="pt")  # fmt: skip


def check_obd(rows: list[dict], at: float = 0.7) -> float:
    """Claim: OBD's diagonal prediction underestimates the loss increase its own mask causes at ``at``."""
    row = next(r for r in rows if r["mask"] == "obd" and r["sparsity"] == at)
    return claims.claim(f"OBD mask at {at:.0%}: measured / predicted loss increase", row["measured"] / row["predicted"],
                        ">=", full=10.0, fast=10.0)  # fmt: skip


def check_sparsity(result: Comparison, target: float = 0.9, group: str = "resnet") -> float:
    """Claim: one-shot and iterative pruning of ``group`` reach ``target`` counted from the tensors (within 1e-3)."""
    worst = max(abs(result.sparsity[k] - target) for k in ("one-shot", "iterative"))
    return claims.claim(f"{group} |sparsity - {target:g}|, one-shot and iterative", worst, "<=",
                        full=1e-3, fast=1e-3)  # fmt: skip


def check_storage(sizes: dict[str, int]) -> float:
    """Claim: CSR stores the 90 % sparse weights in well under the dense bytes (about 0.3 of them by the formula)."""
    return claims.claim("CSR bytes / dense bytes at 90 %", sizes["CSR"] / sizes["dense"], "<=", full=0.4, fast=0.4)


def check_ticket(result: Comparison) -> float:
    """Claim: the winning ticket trains to within a small gap of the dense model."""
    return claims.claim("ticket gap to dense", result.drop("ticket"), "<=", full=1.0, fast=3.0, unit="pt")


# --- self-checks for the exercises -------------------------------------------------------------------------------


def self_check_capped_masks(capped_masks: Callable[[Scores, float, float], Masks], target: float | None = None,
                            cap: float | None = None, min_accuracy: float = 0.6) -> bool:  # fmt: skip
    """Exercise 1: does ``capped_masks(scores, sparsity, cap)`` prune exactly ``target`` of the ResNet's weights
    by global magnitude, no layer beyond ``cap``, and keep ``min_accuracy`` after BN re-estimation? By default
    98 % with a 99 % cap; 90 % with a 95 % cap in fast mode, whose small baseline does not survive 98 %."""
    target = pick(fast=0.9, full=0.98) if target is None else target
    cap = pick(fast=0.95, full=0.99) if cap is None else cap
    model, batches = resnet(), score_batches()
    masks = capped_masks(magnitude_scores(model), target, cap)
    total, worst = sparsity(masks), max(sparsity({n: m}) for n, m in masks.items())
    acc = fmnist_accuracy(recipes.recalibrate_bn(apply_masks_(copy.deepcopy(model), masks), batches))
    problems = []
    if abs(total - target) > 1e-3:
        problems.append(f"sparsity {total:.4f}, not {target}")
    if worst > cap + 1e-3:
        problems.append(f"a layer is {worst:.4f} sparse, beyond the cap {cap}")
    if acc < min_accuracy:
        problems.append(f"test accuracy {acc:.2%} is below {min_accuracy:.0%}")
    return claims.self_check(problems, f"sparsity {total:.4f}, emptiest layer {worst:.4f}, test accuracy {acc:.2%}")


def self_check_iterative(models: dict[str, nn.Module], target: float, within_2pt: bool, differ: bool) -> bool:
    """Exercise 2: ``models`` holds ``"dense"``, ``"one-shot"`` and ``"iterative"`` (as :func:`iterative_vs_oneshot`
    returns them, plus the dense model) pruned to ``target``. Are both pruned models at ``target``, counted from
    the tensors, and are your two answers right: ``within_2pt`` (is the iterative model at most 2 points below
    the dense one?) and ``differ`` (do iterative and one-shot differ measurably, by McNemar's test)?"""
    result = compare(models, "iterative", "one-shot")
    problems = [f"{k} is {result.sparsity[k]:.4f} sparse, not {target}" for k in ("one-shot", "iterative")
                if abs(result.sparsity[k] - target) > 1e-3]  # fmt: skip
    drop = result.drop("iterative")
    if within_2pt != (drop <= 2.0):
        problems.append(f"the iterative model is {drop:.2f} points below the dense one")
    if differ != result.paired.measurable:
        problems.append(f"McNemar's test of iterative against one-shot says {result.paired.verdict()}")
    return claims.self_check(problems, f"iterative {drop:.2f} points below dense; against one-shot: "
                                       f"{result.paired.verdict()} (p = {result.paired.p_value:.2g})")  # fmt: skip


def model_fisher_diagonal(model: nn.Module, batches: Iterable) -> Scores:
    """The Fisher of the model's own predictions: the mean over samples of Σ_k p_k (∂ℓ(x, k)/∂w)², the
    expectation over labels drawn from the softmax, computed exactly (one per-sample gradient per class).

    The reference answer of Exercise 3 (:func:`self_check_model_fisher`); :func:`effdl.prune.masks.fisher_diagonal`
    is the same with the observed label in place of the expectation.
    """
    model.eval()
    layers = prunable(model)
    names = [f"{n}.weight" for n in layers]
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def class_losses(weights: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, ({**params, **weights}, buffers), (x[None],))
        return -logits.log_softmax(-1)[0]  # the loss ℓ(x, k) for every class k

    per_sample = vmap(jacrev(class_losses), in_dims=(None, 0))  # name -> (batch, classes, *weight.shape)
    dev = next(model.parameters()).device
    fisher, count = {n: torch.zeros_like(m.weight) for n, m in layers.items()}, 0
    for x, _ in batches:
        x = x.to(dev)
        with torch.no_grad():
            probs = model(x).softmax(-1)
        grads = per_sample({name: params[name] for name in names}, x)
        for n in layers:
            g = grads[f"{n}.weight"]
            fisher[n] += (probs.view(*probs.shape, *[1] * (g.dim() - 2)) * g.pow(2)).sum((0, 1))
        count += len(x)
    return {n: f / max(count, 1) for n, f in fisher.items()}


def self_check_model_fisher(model_fisher: Callable[[nn.Module, Iterable], Scores], images: int = 32) -> bool:
    """Exercise 3: does ``model_fisher(model, batches)`` give the diagonal Fisher of the model's own predictions
    (the expectation over labels drawn from the softmax, exact) on ``images`` training images of the ResNet,
    within 0.1 % of the largest entry of each layer?"""
    model = resnet()
    x, y = score_batches()[0]
    batches = [(x[:images], y[:images])]
    expected, yours = model_fisher_diagonal(model, batches), model_fisher(model, batches)
    problems = []
    if set(yours) != set(expected):
        problems.append(f"the layers should be {sorted(expected)}")
    else:
        errors = {n: float((yours[n] - e).abs().max() / e.abs().max()) for n, e in expected.items()}
        worst = max(errors, key=errors.get)
        if errors[worst] > 1e-3:
            problems.append(f"layer {worst}: off by {errors[worst]:.1%} of its largest entry (sampled labels, "
                            "or the observed ones, are not the expectation)")  # fmt: skip
    return claims.self_check(problems, "the Fisher of the model's predictions, every layer within 0.1 %")


def sparse_conv_problems(ratio: float | None, faster: bool | None, margin: float = 0.1) -> list[str]:
    """What is wrong with the prediction ``faster`` (is the CSR convolution faster than ``conv(x)``?) given the
    measured ``ratio`` = dense time / CSR time; within ``margin`` of 1 either answer is accepted (too close to
    call on one machine)."""
    if faster is None or ratio is None or abs(ratio - 1) < margin:
        return []
    if faster != (ratio > 1):
        return [f"the CSR version is {'faster' if ratio > 1 else 'slower'}: conv time / yours = {ratio:.2f}"]
    return []


class _Call(nn.Module):
    """``fn(x, layer)`` as a module, so :func:`effdl.bench.compare_latency` can time it against ``layer(x)``."""

    def __init__(self, fn: Callable[[torch.Tensor, nn.Module], torch.Tensor], layer: nn.Module):
        super().__init__()
        self.fn, self.layer = fn, layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, self.layer)


def self_check_sparse_conv(sparse_conv: Callable[[torch.Tensor, nn.Conv2d], torch.Tensor], batch: int = 8,
                           faster: bool | None = None, timing_batch: int = 256) -> bool:  # fmt: skip
    """Exercise 5: does ``sparse_conv(x, conv)`` (a CSR ``torch.sparse.mm`` on the unfolded input) give the
    output of ``conv`` for the ResNet's last convolution pruned to 90 %? With ``faster`` (your prediction: is it
    faster than ``conv(x)`` at ``timing_batch``?), both are also timed interleaved and the prediction checked.
    Everything runs on the CPU, whose sparse kernels the chapter measures."""
    conv = copy.deepcopy(prunable(resnet())["stages.2.0.conv2"]).cpu()
    apply_masks_(conv, {"": global_masks(magnitude_scores(conv), 0.9)[""]})
    x = torch.randn(batch, conv.in_channels, 7, 7)
    with torch.no_grad():
        expected, yours = conv(x), sparse_conv(x, conv)
    problems = []
    if yours.shape != expected.shape or not torch.allclose(yours, expected, atol=1e-4):
        problems.append(f"output {tuple(yours.shape)} differs from conv(x) {tuple(expected.shape)} "
                        f"by up to {(yours - expected).abs().max():.2e}" if yours.shape == expected.shape
                        else f"output {tuple(yours.shape)}, expected {tuple(expected.shape)}")  # fmt: skip
    ratio = None
    if faster is not None and not problems:
        times = measure_bench.compare_latency({"conv": conv, "yours": _Call(sparse_conv, conv)},
                                              torch.randn(timing_batch, conv.in_channels, 7, 7))  # fmt: skip
        ratio = times["conv"] / times["yours"]
        problems += sparse_conv_problems(ratio, faster)
    timed = f"; conv time / yours at batch {timing_batch}: {ratio:.2f}" if ratio is not None else ""
    return claims.self_check(problems, f"the output of conv(x){timed}")


# --- make bench --------------------------------------------------------------------------------------------------


def _iterative_rows(group: str, name: str) -> dict[str, nn.Module]:
    models, result = pruned_pair(name, final=0.9)
    check_sparsity(result, group=group)
    claims.measure(f"{group} dense test accuracy", 100 * result.accuracy["dense"], "%")
    claims.measure(f"{group} iterative global sparsity", result.sparsity["iterative"])
    claims.target(f"{group} iterative 90% accuracy drop", result.drop("iterative"),
                  "<=", 1.0, unit="pt", section="sec-prune-unstructured-iterative")  # fmt: skip
    claims.measure(f"{group} one-shot+FT 90% accuracy drop", result.drop("one-shot"), "pt")
    claims.measure(f"{group} iterative - one-shot McNemar p", result.paired.p_value)
    return models


def bench() -> None:
    """The chapter's headline rows: scores at 50-90 %, stale BN, OBD's prediction, iterative pruning to 90 %
    with its storage, Taylor/OBD against magnitude, the lottery ticket."""
    model, batches = resnet(), score_batches()
    scores = all_scores(model, batches)
    points = [s for s in sparsities() if s <= 0.9]
    curves = oneshot(model, scores, batches, points, {k: VARIANTS[k] for k in ("random", "magnitude (global)")})
    check_scores(curves, points)
    check_bn(stale_bn(model, scores, [0.8])[0], curves["magnitude (global)"][points.index(0.8)])
    check_obd(obd_prediction(model, scores, batches, (0.7,)))
    check_storage(storage_bytes(_iterative_rows("resnet", "resnet-fmnist")["iterative"]))
    _iterative_rows("cnn", "cnn-fmnist")
    table = scope_table(model, scores, batches)
    for method in ("magnitude", "taylor", "obd"):
        hits = table[method, "global"]
        claims.measure(f"resnet one-shot 90% {method} accuracy", 100 * hits.sum().item() / hits.numel(), "%")
    claims.target("resnet one-shot 90%: best of Taylor/OBD - magnitude",
                  100 * gradient_scores_vs_magnitude(table).difference, ">=", 0.0, unit="pt",
                  section="sec-prune-unstructured-scores")  # fmt: skip
    ticket = lottery_ticket("cnn-fmnist", 0.8, epochs=ticket_epochs())
    check_ticket(ticket)
    claims.target("cnn ticket (20% weights) gap to dense", ticket.drop("ticket"), "<=", 0.5, unit="pt")
    claims.target("cnn ticket minus random reinit", ticket.drop("random reinit", "ticket"), ">", 0.0, unit="pt")
    claims.measure("cnn ticket - random reinit McNemar p", ticket.paired.p_value)

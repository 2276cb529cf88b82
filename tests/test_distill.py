"""effdl.distill: the KD loss against its formula, the T² correction, teachers combined, feature losses, and a
student trained through train.fit beside a frozen teacher."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effdl import train
from effdl.distill import Distiller, FeatureKDLoss, KDLoss, combine_teachers, kd_divergence
from effdl.distill.features import FeatureTap, HintRegressor, attention_loss, attention_map, hint_loss
from effdl.distill.losses import soft_targets, teacher_labels


def _logits(*shape, seed=0, scale=3.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_kd_divergence_is_the_written_formula():
    student, teacher, t = _logits(16, 10, seed=1), _logits(16, 10, seed=2), 3.0
    p, q = F.softmax(teacher / t, -1), F.softmax(student / t, -1)
    by_hand = t**2 * (p * (p.log() - q.log())).sum(-1).mean()
    assert kd_divergence(student, teacher, t).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert kd_divergence(student, teacher, t, scale=False).item() == pytest.approx(by_hand.item() / t**2, rel=1e-5)
    assert kd_divergence(teacher, teacher, t).item() == pytest.approx(0.0, abs=1e-6)


def test_reduction_mean_divides_by_the_number_of_classes_too():
    """``F.kl_div(reduction="mean")`` averages over examples *and* classes: the loss comes out ``classes`` times
    too small, so its weight against the hard-label loss is wrong by that factor."""
    student, teacher = _logits(8, 10, seed=3), _logits(8, 10, seed=4)
    log_q, log_p = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    with pytest.warns(UserWarning, match="batchmean"):  # PyTorch itself warns that "mean" is not the KL divergence
        mean = F.kl_div(log_q, log_p, reduction="mean", log_target=True)
    batchmean = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    assert batchmean.item() == pytest.approx(10 * mean.item(), rel=1e-5)
    assert kd_divergence(student, teacher, 1.0).item() == pytest.approx(batchmean.item(), rel=1e-5)


def test_t_squared_keeps_the_soft_gradient_the_same_size_at_any_temperature():
    """At high T the soft term's gradient shrinks as 1/T² (Hinton et al., 2015); multiplied by T² it does not."""
    teacher = _logits(32, 10, seed=5)

    def grad_norm(t, scale):
        student = _logits(32, 10, seed=6).requires_grad_()
        kd_divergence(student, teacher, t, scale=scale).backward()
        return student.grad.norm().item()

    assert grad_norm(20.0, True) / grad_norm(10.0, True) == pytest.approx(1.0, abs=0.05)
    assert grad_norm(20.0, False) / grad_norm(10.0, False) == pytest.approx(0.25, abs=0.02)


def test_kd_loss_mixes_soft_and_hard_terms_by_alpha():
    student, teacher, labels = _logits(12, 5, seed=7), _logits(12, 5, seed=8), torch.arange(12) % 5
    soft, hard = kd_divergence(student, teacher, 2.0), F.cross_entropy(student, labels)
    assert KDLoss(2.0, alpha=0.0)(student, (labels, teacher)).item() == pytest.approx(hard.item(), rel=1e-6)
    assert KDLoss(2.0, alpha=1.0)(student, (labels, teacher)).item() == pytest.approx(soft.item(), rel=1e-6)
    mixed = KDLoss(2.0, alpha=0.3)(student, (labels, teacher)).item()
    assert mixed == pytest.approx(0.3 * soft.item() + 0.7 * hard.item(), rel=1e-6)


def test_kd_loss_distils_a_language_model_token_by_token():
    student, teacher = _logits(2, 7, 11, seed=9), _logits(2, 7, 11, seed=10)
    labels = torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(0))
    loss = KDLoss(2.0, alpha=0.5)(student, (labels, teacher))
    flat = KDLoss(2.0, alpha=0.5)(student.reshape(14, 11), (labels.reshape(14), teacher.reshape(14, 11)))
    assert loss.item() == pytest.approx(flat.item(), rel=1e-6)


def test_the_teacher_gets_no_gradient():
    student, teacher = _logits(4, 3, seed=11).requires_grad_(), _logits(4, 3, seed=12).requires_grad_()
    KDLoss(2.0, 0.5)(student, (torch.zeros(4, dtype=torch.long), teacher)).backward()
    assert student.grad is not None and teacher.grad is None


def test_bad_arguments_are_rejected_with_their_names():
    x, y = _logits(4, 3), _logits(4, 3)
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            KDLoss(temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            soft_targets(x, bad)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha"):
            KDLoss(alpha=bad)
    with pytest.raises(ValueError, match="same shape"):
        kd_divergence(x, _logits(4, 5))
    with pytest.raises(ValueError, match="labels"):
        KDLoss()(x, (torch.zeros(3, dtype=torch.long), y))
    with pytest.raises(ValueError, match="pair"):
        KDLoss()(x, y)


def test_teacher_labels_are_the_argmax():
    teacher = _logits(6, 4, seed=13)
    assert torch.equal(teacher_labels(teacher), teacher.argmax(1))


def test_combined_teachers_average_probabilities_or_logits():
    a, b, t = _logits(5, 6, seed=14), _logits(5, 6, seed=15), 2.0
    probs = combine_teachers([a, b], "probabilities", t)
    expected = (soft_targets(a, t) + soft_targets(b, t)) / 2
    assert torch.allclose(soft_targets(probs, t), expected, atol=1e-6)
    assert torch.allclose(combine_teachers([a, b], "logits", t), (a + b) / 2, atol=1e-6)
    assert not torch.allclose(soft_targets(combine_teachers([a, b], "logits", t), t), expected, atol=1e-3)
    weighted = combine_teachers([a, b], "probabilities", t, weights=[3, 1])
    assert torch.allclose(soft_targets(weighted, t), 0.75 * soft_targets(a, t) + 0.25 * soft_targets(b, t), atol=1e-6)
    only_a = combine_teachers([a, b], "probabilities", t, weights=[1, 0])
    assert torch.allclose(soft_targets(only_a, t), soft_targets(a, t), atol=1e-6)


def test_combine_teachers_rejects_bad_arguments():
    a = _logits(3, 4)
    with pytest.raises(ValueError, match="how"):
        combine_teachers([a, a], "median")
    with pytest.raises(ValueError, match="weights"):
        combine_teachers([a, a], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        combine_teachers([a, a], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="teacher_logits"):
        combine_teachers([a, _logits(3, 5)])
    with pytest.raises(ValueError, match="teacher_logits"):
        combine_teachers([])


def test_attention_maps_are_unit_vectors_and_ignore_channel_count():
    feature = _logits(2, 8, 5, 5, seed=16)
    q = attention_map(feature)
    assert q.shape == (2, 25) and torch.allclose(q.norm(dim=1), torch.ones(2), atol=1e-6)
    doubled = torch.cat([feature, feature], 1)  # twice the channels, the same attention
    assert attention_loss(doubled, feature).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_loss(_logits(2, 8, 5, 5, seed=17), feature).item() > 0.05
    with pytest.raises(ValueError, match="size"):
        attention_loss(_logits(2, 8, 4, 4), feature)


def test_hint_loss_goes_through_the_regressor():
    student, teacher = _logits(2, 3, 4, 4, seed=18), _logits(2, 6, 4, 4, seed=19)
    regressor = HintRegressor(3, 6)
    expected = F.mse_loss(regressor(student), teacher)
    assert hint_loss(student, teacher, regressor).item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="channel"):
        HintRegressor(0, 6)


def _tiny_cnn(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(0.5),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))  # fmt: skip


def test_feature_tap_names_what_it_cannot_find():
    with pytest.raises(ValueError, match="no submodule"):
        FeatureTap(_tiny_cnn(4), ["stages.9"])


def test_distiller_keeps_the_teacher_frozen_and_in_eval_mode():
    teacher, student = _tiny_cnn(8).eval(), _tiny_cnn(2)
    x = _logits(16, 1, 6, 6, seed=20)
    distiller = Distiller(student, teacher, {"2": "2"}, x[:2], kind="hint")
    assert distiller.regressors["2"].proj.weight.shape == (8, 2, 1, 1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batches = [(x, torch.arange(16) % 4)] * 3
    train.fit(distiller, batches, loss=FeatureKDLoss(1.0, KDLoss(2.0, 0.5)), device=torch.device("cpu"),
              progress=False)  # fmt: skip
    assert not teacher.training and all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert distiller.student.training  # fit leaves the student in train mode; the teacher stayed in eval
    released = distiller.release()
    assert released is student and not released[2]._forward_hooks


def test_distillation_through_fit_pulls_the_student_toward_the_teacher():
    torch.manual_seed(0)
    teacher, student = _tiny_cnn(8).eval(), _tiny_cnn(4)
    x = _logits(64, 1, 6, 6, seed=21)
    with torch.no_grad():
        target = teacher(x)
    batches = [(x, (teacher_labels(target), target))] * 40
    before = kd_divergence(student.eval()(x), target, 2.0).item()
    train.fit(student, batches, loss=KDLoss(2.0, alpha=1.0), device=torch.device("cpu"), progress=False,
              optimizer=torch.optim.Adam(student.parameters(), lr=1e-2))  # fmt: skip
    with torch.no_grad():
        after = kd_divergence(student.eval()(x), target, 2.0).item()
    assert after < 0.5 * before


def test_teacher_batches_add_the_eval_mode_teachers_logits_on_the_fly():
    from effdl.distill.online import TeacherBatches
    from effdl.models import GPT, GPTConfig

    teacher = GPT(GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, n_embd=8, dropout=0.5)).eval()
    x = torch.randint(0, 11, (4, 8), generator=torch.Generator().manual_seed(0))
    batches = TeacherBatches([(x, x.roll(-1, 1))] * 2, teacher)
    inputs, (targets, logits) = next(iter(batches))
    assert len(batches) == 2 and torch.equal(targets, x.roll(-1, 1)) and not logits.requires_grad
    assert torch.equal(logits, teacher(x))  # dropout off: the same answer every time
    loss = KDLoss(2.0, 0.5)(GPT(teacher.cfg)(inputs), (targets, logits))  # token-level KD reads it as is
    assert loss.ndim == 0 and loss.item() > 0
    with pytest.raises(ValueError, match="teacher must be in eval mode"):
        TeacherBatches([], teacher.train())


# --- Chapter 7's experiments module: its data plumbing and the exercises' self-checks ---------------------


def test_target_batches_carry_labels_and_teacher_logits():
    from effdl.experiments import distillation as ex

    images, labels, targets = torch.randn(300, 1, 28, 28), torch.arange(300) % 10, torch.randn(300, 10)
    batches = ex.TargetBatches(images, labels, targets, seed=0)
    x, (y, t) = next(iter(batches))
    assert len(batches) == 3 and x.shape == (ex.BATCH, 1, 28, 28)
    row = (images.flatten(1) == x[0].flatten()).all(1).nonzero().item()  # the same example in all three
    assert y[0] == labels[row] and torch.equal(t[0], targets[row])
    with pytest.raises(ValueError, match="fraction"):
        ex.subset(0.0)
    with pytest.raises(ValueError, match="method"):
        ex.train_student("CNN w4", "copy the teacher", 0)


def test_trained_students_are_shared_and_kd_options_do_not_split_the_label_runs(monkeypatch):
    from effdl.experiments import distillation as ex

    calls = []
    monkeypatch.setattr(ex, "train_student", lambda *args, **kwargs: calls.append((args, kwargs)) or nn.Linear(1, 1))
    ex._trained.cache_clear()
    try:
        first = ex.trained("CNN w4", "alone", 0)
        assert ex.trained("CNN w4", "alone", 0, temperature=2.0, alpha=0.5) is first
        ex.trained("CNN w4", "KD", 0, temperature=2.0, alpha=0.5)
        ex.trained("CNN w4", "KD", 0, alpha=0.5, temperature=2.0)
        assert len(calls) == 2 and calls[1][1] == {"alpha": 0.5, "temperature": 2.0}
    finally:
        ex._trained.cache_clear()


def test_students_are_named_by_width_and_bad_names_are_refused():
    from effdl.experiments import distillation as ex

    model = ex.student("CNN w12")
    assert model.features[0][0].out_channels == 12 and len(model.features) == 2  # one block and its pooling
    assert all(ex.student(name) is not None for name in ex.CANDIDATES)
    for bad in ("CNN w0", "CNN 12", "MLP w8"):
        with pytest.raises(ValueError, match="name"):
            ex.student(bad)


def test_self_check_kd_loss_accepts_the_formula_and_names_a_missing_t_squared(capsys):
    from effdl.experiments import distillation as ex

    def by_hand(student, teacher, labels, t=4.0, alpha=0.9, squared=True):
        soft = F.kl_div(F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean")
        return alpha * (t**2 if squared else 1) * soft + (1 - alpha) * F.cross_entropy(student, labels)

    assert ex.self_check_kd_loss(by_hand)
    assert not ex.self_check_kd_loss(lambda s, t, y: by_hand(s, t, y, squared=False))
    assert "T² is missing" in capsys.readouterr().out


def test_self_check_gap_closed():
    from effdl.experiments import distillation as ex

    result = ex.Comparison(0.9, {"alone": [0.8, 0.82], "KD": [0.85, 0.85]})  # gap 0.09, KD closes 0.04
    assert result.gap_closed() == pytest.approx(0.04 / 0.09)
    assert ex.self_check_gap_closed(0.445, result)
    assert not ex.self_check_gap_closed(0.04, result)


def test_self_check_student_weighs_macs_and_accuracy(capsys):
    from effdl.experiments import distillation as ex

    model = ex.student("CNN w4")  # untrained: about chance
    macs = ex.macs(model)
    assert ex.self_check_student(model, max_macs=macs, min_accuracy=0.0)
    assert not ex.self_check_student(model, max_macs=macs - 1, min_accuracy=0.5)
    out = capsys.readouterr().out
    assert "MACs, more than" in out and "below" in out


def test_attention_distiller_needs_no_regressor_and_rejects_unknown_kinds():
    teacher, student = _tiny_cnn(8).eval(), _tiny_cnn(2)
    x = _logits(4, 1, 6, 6, seed=22)
    distiller = Distiller(student, teacher, {"2": "2"}, x[:2], kind="attention")
    out = distiller(x)
    assert len(distiller.regressors) == 0 and out.feature_loss.item() > 0 and out.logits.shape == (4, 4)
    out.feature_loss.backward()
    assert student[0].weight.grad is not None and teacher[0].weight.grad is None
    with pytest.raises(ValueError, match="kind"):
        Distiller(student, teacher, {"2": "2"}, x[:2], kind="relation")
    with pytest.raises(ValueError, match="pairs"):
        Distiller(student, teacher, {}, x[:2])


def test_multi_vs_single_picks_the_better_teacher_and_combination():
    from effdl.experiments import distillation as ex

    rows = {"from a": [0.80, 0.82], "from b": [0.84, 0.84], "both, probabilities": [0.85, 0.87],
            "both, logits": [0.83, 0.83]}  # fmt: skip
    single, both, gain = ex.multi_vs_single(rows)
    assert (single, both) == ("b", "probabilities")
    assert gain.value == pytest.approx(2.0) and gain.se == pytest.approx(1.0) and gain.dof == 1


def test_student_ensemble_gains_are_points_over_the_members():
    from effdl.experiments import distillation as ex

    result = ex.StudentEnsemble(members=[0.80, 0.82], ensemble=0.85, distilled=[0.83, 0.83])
    assert result.ensemble_gain() == pytest.approx(4.0)
    gain = result.distilled_gain()
    assert gain.value == pytest.approx(2.0) and gain.se == pytest.approx(1.0) and gain.dof == 1
    assert ex.check_ensemble(result) == pytest.approx(4.0)


# --- the language-model part (07_distillation_lm): its loop, statistics and self-checks --------------------


def test_train_gpt_takes_a_token_stream_a_loss_and_a_batch_wrapper():
    from effdl import zoo
    from effdl.distill.online import TeacherBatches
    from effdl.models import GPT, GPTConfig

    cfg = GPTConfig(vocab_size=11, context=8, n_layer=1, n_head=2, n_embd=8)
    teacher, student = GPT(cfg).eval(), GPT(cfg)
    recipe = {"steps": 10, "batch_size": 4, "lr": 1e-2, "weight_decay": 0.0, "warmup": 2, "seed": 0}
    seen = []

    def wrap(batches):
        seen.append(len(batches))
        return TeacherBatches(batches, teacher)

    tokens = torch.arange(200) % 11
    metrics = zoo.train_gpt(student, recipe, tokens=tokens, loss=KDLoss(1.0, 1.0), wrap=wrap, validate=False)
    assert seen == [2] and set(metrics) == {"train_seconds"}  # 10 steps in five passes of 2


def test_lm_comparison_uses_seeds_when_both_sides_have_them_else_paired_windows():
    from effdl.experiments import distillation_lm as ex

    windows = {"teacher": torch.tensor([2.0, 2.2]), "alone": torch.tensor([3.0, 3.4]),
               "token KD": torch.tensor([2.8, 3.0]), "sequence KD": torch.tensor([3.5, 3.7])}  # fmt: skip
    result = ex.Comparison(windows, {"alone": [3.2, 3.2], "token KD": [2.9, 2.9]})
    assert result.mean("alone") == pytest.approx(3.2) and result.mean("teacher") == pytest.approx(2.1)
    assert result.gain("token KD").value == pytest.approx(0.3) and result.gain("token KD").dof == 1
    paired = result.gain("sequence KD")  # windows: (3.0 - 3.5, 3.4 - 3.7)
    assert paired.value == pytest.approx(-0.4) and paired.se == pytest.approx(0.1) and paired.dof == 1
    assert result.gap_closed() == pytest.approx(0.3 / 1.1)
    assert ex.self_check_gap_closed(0.27, result) and not ex.self_check_gap_closed(0.3, result)
    with pytest.raises(ValueError, match="method"):
        ex.student("copy the teacher")


def test_distinct_ngrams_sees_a_loop():
    from effdl.experiments import distillation_lm as ex

    varied = torch.arange(40).view(2, 20)
    looping = torch.tensor([[1, 2] * 10, [3] * 20])
    assert ex.distinct_ngrams(varied, 4) == 1.0
    assert ex.distinct_ngrams(looping, 4) == pytest.approx((2 / 17 + 1 / 17) / 2)
    with pytest.raises(ValueError, match="streams"):
        ex.distinct_ngrams(varied[0], 4)


def test_self_check_token_kd_accepts_flattened_positions_and_names_a_batch_only_mean(capsys):
    from effdl.experiments import distillation_lm as ex

    def by_hand(student, teacher, targets, t=2.0, alpha=0.5, flatten=True):
        s, te = (student.flatten(0, 1), teacher.flatten(0, 1)) if flatten else (student, teacher)
        soft = F.kl_div(F.log_softmax(s / t, -1), F.log_softmax(te / t, -1), reduction="batchmean", log_target=True)
        hard = F.cross_entropy(student.flatten(0, 1), targets.flatten())
        return alpha * t**2 * soft + (1 - alpha) * hard

    assert ex.self_check_token_kd(by_hand)
    assert not ex.self_check_token_kd(lambda s, t, y: by_hand(s, t, y, flatten=False))
    assert "batch × time" in capsys.readouterr().out


def test_check_fit_gap_asks_that_few_labels_overfit_more_than_all_of_them():
    from effdl.claims import ClaimFailed
    from effdl.experiments import distillation as ex

    overfit = {0.1: {"train": 0.99, "test": 0.80}, 1.0: {"train": 0.90, "test": 0.89}}
    assert ex.check_fit_gap(overfit) == pytest.approx(18.0)
    with pytest.raises(ClaimFailed):
        ex.check_fit_gap({0.1: {"train": 0.85, "test": 0.85}, 1.0: {"train": 0.95, "test": 0.89}})

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from effdl import data, models, train


def _toy_classification(n=512):
    x = torch.randn(n, 8)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)


def test_token_cross_entropy_matches_torch_for_images_and_text():
    logits, y = torch.randn(5, 10), torch.randint(0, 10, (5,))
    assert torch.allclose(train.token_cross_entropy(logits, y), nn.functional.cross_entropy(logits, y))
    logits3, y3 = torch.randn(2, 7, 11), torch.randint(0, 11, (2, 7))
    ref = nn.functional.cross_entropy(logits3.transpose(1, 2), y3)
    assert torch.allclose(train.token_cross_entropy(logits3, y3), ref)
    with pytest.raises(ValueError, match="targets"):
        train.token_cross_entropy(logits3, y)


def test_fit_learns_a_separable_problem_and_records_history():
    loader = _toy_classification()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    before = train.evaluate(model, loader)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1000)
    hist = train.fit(model, loader, epochs=5, optimizer=opt, scheduler=sched, val=loader,
                     device=torch.device("cpu"), progress=False)
    assert len(hist.train_loss) == len(hist.val_accuracy) == 5 and hist.seconds > 0
    assert hist.train_loss[-1] < hist.train_loss[0]
    assert hist.val_accuracy[-1] > 0.95 > before["accuracy"]
    assert sched.last_epoch == 5 * len(loader)  # stepped once per batch


def test_fit_trains_a_gpt_with_the_same_loop_and_autocast():
    tokens = torch.arange(2000) % 5  # a periodic sequence is perfectly predictable
    batches = data.LMBatches(tokens, batch_size=8, context=16, steps=40)
    gpt = models.GPT(models.GPTConfig(vocab_size=5, context=16, n_layer=1, n_head=2, n_embd=32))
    hist = train.fit(gpt, batches, epochs=2, autocast=torch.bfloat16, grad_clip=1.0,
                     device=torch.device("cpu"), progress=False)
    metrics = train.evaluate(gpt, data.LMBatches(tokens, 8, 16, steps=5, random=False))
    assert hist.train_loss[-1] < 0.5 and metrics["accuracy"] > 0.9


def test_fit_and_evaluate_reject_bad_arguments():
    model = nn.Linear(8, 2)
    with pytest.raises(ValueError, match="epochs"):
        train.fit(model, _toy_classification(), epochs=0)
    with pytest.raises(ValueError, match="grad_clip"):
        train.fit(model, _toy_classification(), grad_clip=-1.0)
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(model, [])

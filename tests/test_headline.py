from effdl import headline


def test_rows_with_targets_say_whether_they_were_met():
    good = headline._row("resnet-fmnist", "test accuracy", 0.93, "fraction")
    bad = headline._row("gpt-shakespeare", "val loss", 1.9, "nats/char")
    plain = headline._row("machine", "memory bandwidth", 20.0, "GB/s")
    assert good.met is True and good.target == ">= 0.925"
    assert bad.met is False and bad.target == "<= 1.7"
    assert plain.met is None and plain.target == ""
    table = headline.format_table([good, bad, plain])
    assert "NO" in table and "yes" in table and len(table.splitlines()) == 4


def test_every_target_names_a_measured_row():
    groups = {"machine", "smollm2-135m", "quant-resnet", "quant-gpt", "quant-smollm2", "prune-resnet", "prune-cnn",
              "prune-gpt", "prune-smollm2", *headline.zoo.NAMES}  # fmt: skip
    assert {group for group, _ in headline.TARGETS} <= groups


def test_strict_targets_need_a_strict_improvement():
    better = headline._row("quant-gpt", "GPTQ minus RTN perplexity, int4-g128", -0.2, "pt of %")
    equal = headline._row("quant-gpt", "GPTQ minus RTN perplexity, int4-g128", 0.0, "pt of %")
    assert better.met is True and equal.met is False and better.target == "< 0"

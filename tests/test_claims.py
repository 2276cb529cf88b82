"""effdl.claims: claims raise when they fail, targets never do, and every record is kept."""

import pytest

from effdl import claims


@pytest.fixture(autouse=True)
def _fresh_records():
    claims.clear()
    yield
    claims.clear()


def test_claim_uses_the_fast_bound_in_fast_mode_and_returns_the_value(fast_mode, capsys):
    assert claims.claim("drop", 0.8, "<=", full=0.3, fast=1.0, unit="pt") == 0.8
    (record,) = claims.records()
    assert record.met is True and record.bound == 1.0
    assert capsys.readouterr().out.strip() == "claim   drop: 0.8 pt <= 1 [fast] holds"


def test_a_failing_claim_raises_with_its_name_and_bound(fast_mode):
    with pytest.raises(claims.ClaimFailed, match=r"'speed-up'.*1\.2 x is not >= 2"):
        claims.claim("speed-up", 1.2, ">=", full=3.0, fast=2.0, unit="x")
    assert claims.records()[0].met is False


def test_strict_comparisons_need_a_strict_improvement(fast_mode):
    with pytest.raises(claims.ClaimFailed):
        claims.claim("gap", 0.0, "<", full=0.0, fast=0.0)
    assert claims.claim("gap", -0.1, "<", full=0.0, fast=0.0) == -0.1


def test_collecting_records_failures_instead_of_raising(fast_mode):
    with claims.collecting():
        claims.claim("never", 0.0, ">", full=1.0, fast=1.0)
    assert [r.met for r in claims.records()] == [False]
    with pytest.raises(claims.ClaimFailed):
        claims.claim("never", 0.0, ">", full=1.0, fast=1.0)


def test_targets_never_raise_and_are_judged_only_in_full_mode(fast_mode, capsys):
    claims.target("ppl change", 12.6, "<=", 3.0, unit="%", section="sec-quant-llm-gptq")
    (record,) = claims.records()
    assert record.kind == "target" and record.met is None and record.section == "sec-quant-llm-gptq"
    assert "not judged in fast mode" in capsys.readouterr().out


def test_missed_target_line_names_the_section():
    record = claims.Record("target", "ppl change", 12.6, "%", "<=", 3.0, False, "sec-quant-llm-gptq")
    assert record.line().endswith("MISSED (see sec-quant-llm-gptq)")


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="op"):
        claims.claim("x", 1.0, "=>", full=0.0, fast=0.0)
    with pytest.raises(ValueError, match="NaN"):
        claims.measure("x", float("nan"))
    with pytest.raises(ValueError, match="op"):
        claims.target("x", 1.0, "~", 0.0)

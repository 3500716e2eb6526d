"""The hand-written Prometheus text format, checked by prometheus_client's strict parser."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral._model.exposition import OTHER, Family, fold_labels, render


def test_hostile_label_values_are_escaped_and_parse_back_exactly() -> None:
    fam = Family("corral_x_total", "counter", "help with a \\ backslash\nand a newline")
    nasty = 'a"b\\c\nd} x_total{plugin="forged"} 999'
    fam.add("", {"plugin": nasty}, 3)
    text = render([fam])
    assert text.count("\n") == 3  # HELP, TYPE, one sample: the newlines did not break out
    parsed = list(text_string_to_metric_families(text))
    assert len(parsed) == 1
    [sample] = parsed[0].samples
    assert sample.labels == {"plugin": nasty}
    assert sample.value == 3


def test_bad_names_are_refused() -> None:
    with pytest.raises(ValueError, match="bad metric family"):
        Family("9lives", "gauge", "x")
    with pytest.raises(ValueError, match="_total"):
        Family("corral_calls", "counter", "x")
    fam = Family("corral_g", "gauge", "x")
    with pytest.raises(ValueError, match="bad label name"):
        fam.add("", {"le-bad": "1"}, 1)
    with pytest.raises(ValueError, match="bad label name"):
        fam.add("", {"__name__": "1"}, 1)


def test_numbers_are_written_as_prometheus_reads_them() -> None:
    fam = Family("corral_g", "gauge", "x")
    for i, v in enumerate((1.0, 0.25, float("inf"), float("nan"), 1e20)):
        fam.add("", {"i": str(i)}, v)
    samples = next(iter(text_string_to_metric_families(render([fam])))).samples
    assert [s.value for s in samples[:3]] == [1.0, 0.25, float("inf")]
    assert samples[3].value != samples[3].value  # NaN
    assert samples[4].value == 1e20


def test_fold_keeps_the_busiest_and_folds_the_rest() -> None:
    activity = {"b": 5.0, "a": 5.0, "c": 1.0, "d": 0.0}
    assert fold_labels(activity, 2) == {"a": "a", "b": "b", "c": OTHER, "d": OTHER}
    assert set(fold_labels(activity, 10).values()) == set(activity)
    many = {f"p{i}": float(i) for i in range(1000)}
    assert len(set(fold_labels(many, 50).values())) == 51

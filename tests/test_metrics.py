"""Answers counted in the worker and handed to prometheus-client in bulk
(gateway/edge/metrics.py) read exactly as if each had been observed."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from gateway.edge import metrics

_services = itertools.count()


def latency(histogram: Histogram, service: str) -> dict[str, float]:
    """The service's samples: `_bucket<le>`, `_count` and `_sum` -> value."""
    return {
        s.name.removeprefix(histogram._name) + s.labels.get("le", ""): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if s.labels.get("service") == service and not s.name.endswith("_created")
    }


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(st.sampled_from([0.0, 0.001, 0.0025, 0.5, 30.0]), st.floats(0, 100)),
        max_size=40,
    )
)
def test_counted_in_bulk_reads_as_one_observe_per_answer(durations: list[float]) -> None:
    """Bucket edges included (`le` is <=), sums, counts, and the request counter."""
    reference = Histogram(
        "reference", "", ["service"], buckets=metrics._BOUNDS[:-1], registry=CollectorRegistry()
    )
    service = f"svc-{next(_services)}"
    requests = metrics.REQUESTS.labels(service, "/r", "200")
    for seconds in durations:
        metrics.answered(service, "/r", 200, seconds)
        reference.labels(service).observe(seconds)
    metrics.flush()
    assert requests._value.get() == len(durations)
    ours, theirs = latency(metrics.LATENCY, service), latency(reference, service)
    assert ours.keys() == theirs.keys() or not durations
    for name, value in theirs.items():
        assert abs(ours[name] - value) < 1e-6, name


def test_the_metrics_page_shows_answers_counted_a_moment_ago() -> None:
    metrics.answered("page-svc", "/p", 402, 0.0001)
    text = metrics.exposition().decode()
    assert 'farebox_requests_total{route="/p",service="page-svc",status="402"} 1.0' in text

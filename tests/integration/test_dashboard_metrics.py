"""Every metric the Grafana dashboard (components/monitoring/flts-dashboard.json) queries is one a
running FLTS service really exports: a real inference process serves a promoted model, answers
good and bad requests, a real evaluator consumes (the Kafka consumers' lag), and their live
/metrics are compared with the names in the dashboard's PromQL
(a `_bucket`, `_count` or `_sum` only where the family is a histogram, `_total` only on a counter).
The label names the queries filter and group by are ones the samples or the scrape configuration
carry. The checker itself is shown to report a made-up name."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flts_cli.stack import StackConfig
from inference_container.telemetry import ServiceMetrics
from shared.storage import ObjectStore
from tests.integration.test_evaluator import EvaluatorProcess, evaluator_env, make_topics
from tests.integration.test_inference_lifecycle import Replica
from tests.integration.test_inference_support import (
    LoggedModel,
    load_test_split,
    log_model_run,
    make_pointer,
    window_body,
    write_pointer,
)

COMPONENT = Path(__file__).resolve().parents[2] / ".kubernetes" / "components" / "monitoring"
DASHBOARD = COMPONENT / "flts-dashboard.json"
SCRAPE_CONFIG = COMPONENT / "prometheus-scrape.yaml"

# The sample names a family of each type exposes (prometheus_client strips `_total` from a
# counter's family name; `_created` is its creation time).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}

# -- PromQL: which metric and label names an expression names ------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_OFFSET = re.compile(r"\boffset\s+-?[\w$]+")
_NUMBER = re.compile(r"(?<![\w:.])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
# Whole words only (no backing off "rate(" to "rat"), and not a function: not followed by "(".
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS |= {"inf", "nan", "Inf", "NaN"}
_LABEL_IN_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(.*?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """Metric names selected in a PromQL expression: identifiers that are neither a function (name
    followed by `(`), a keyword, a number, a duration, a string nor a label name in a matcher or
    a grouping clause."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("{}", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def label_names(expr: str, legend: str = "") -> set[str]:
    """Label names an expression filters or groups by, and the ones its legend prints."""
    text = _STRING.sub('""', expr)
    names = set()
    for matchers in _MATCHERS.findall(text):
        names |= set(_LABEL_IN_MATCHER.findall(matchers))
    for grouping in _GROUPING.findall(text):
        names |= {name.strip() for name in grouping.split(",") if name.strip()}
    names |= set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend))
    return names - {"__name__"}


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(where, PromQL, legend) of every panel target and every query variable (label_values(m, l)
    becomes the selector `m` plus a grouping by `l`)."""
    queries = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels += panel.get("panels", [])
        for target in panel.get("targets", []):
            queries.append(
                (
                    f"panel {panel['title']!r} {target['refId']}",
                    target["expr"],
                    target.get("legendFormat", ""),
                )
            )
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(query)
        assert match, f"variable {variable['name']}: only label_values(metric, label) is checked: {query}"
        queries.append(
            (f"variable {variable['name']}", f"group by ({match.group(2)}) ({match.group(1)})", "")
        )
    return queries


def exported_names(exposition: str) -> tuple[set[str], set[str]]:
    """(sample names the families of an exposition can carry, label names its samples carry)."""
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
        for sample in family.samples:
            names.add(sample.name)
            labels |= set(sample.labels)
    return names, labels


def unknown_metrics(dashboard: dict[str, Any], exported: set[str]) -> dict[str, set[str]]:
    """Where each query names a metric not in `exported`."""
    missing = {}
    for where, expr, _ in dashboard_queries(dashboard):
        unknown = metric_names(expr) - exported
        if unknown:
            missing[where] = unknown
    return missing


def unknown_labels(dashboard: dict[str, Any], known: set[str]) -> dict[str, set[str]]:
    missing = {}
    for where, expr, legend in dashboard_queries(dashboard):
        unknown = label_names(expr, legend) - known
        if unknown:
            missing[where] = unknown
    return missing


def scrape_target_labels() -> set[str]:
    """Labels the shipped scrape configuration puts on every sample (plus Prometheus' own)."""
    config_map = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config = yaml.safe_load(config_map["data"]["prometheus.yml"])
    labels = {"job", "instance"}
    for job in config["scrape_configs"]:
        for rule in job.get("relabel_configs", []):
            target = rule.get("target_label", "")
            if rule.get("action", "replace") == "replace" and not target.startswith("__"):
                labels.add(target)
    return labels


def load_dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


# -- the checker can fail (no services needed) -----------------------------------------------------


def _offline_exposition() -> str:
    metrics = ServiceMetrics()
    metrics.requests.labels("/predict", "200", "A").inc()
    metrics.latency.labels("/predict", "A").observe(0.01)
    return generate_latest(metrics.registry).decode()


def test_metric_names_are_read_from_promql_without_functions_labels_or_durations() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, identifier) (rate(inference_request_seconds_bucket{route="/p",'
        ' identifier=~"$identifier"}[$__rate_interval]))) / on (pod) group_left (x) up offset 5m'
        " + 1e3 * count_over_time(inference_model_info[5m:1m]) > bool 0.5"
    )
    assert metric_names(expr) == {"inference_request_seconds_bucket", "up", "inference_model_info"}
    assert label_names(expr, "{{identifier}} {{ pod }}") == {"le", "identifier", "route", "pod", "x"}


def test_a_made_up_or_wrongly_suffixed_metric_is_reported() -> None:
    exported, _ = exported_names(_offline_exposition())
    dashboard = {
        "panels": [
            {
                "title": "fine",
                "targets": [
                    {"refId": "A", "expr": "sum(rate(inference_request_seconds_bucket[5m]))"},
                    {"refId": "B", "expr": "rate(inference_requests_total[5m]) + inference_model_ready"},
                ],
            },
            {
                "title": "made up",
                "targets": [{"refId": "A", "expr": "sum(rate(inference_requestz_total[5m]))"}],
            },
            {"title": "counter buckets", "targets": [{"refId": "A", "expr": "inference_requests_bucket"}]},
            {"title": "gauge count", "targets": [{"refId": "A", "expr": "inference_model_ready_count"}]},
            {"title": "bare counter", "targets": [{"refId": "A", "expr": "rate(inference_model_swaps[5m])"}]},
        ]
    }
    assert unknown_metrics(dashboard, exported) == {
        "panel 'made up' A": {"inference_requestz_total"},
        "panel 'counter buckets' A": {"inference_requests_bucket"},
        "panel 'gauge count' A": {"inference_model_ready_count"},
        "panel 'bare counter' A": {"inference_model_swaps"},
    }


def test_a_made_up_label_is_reported() -> None:
    _, labels = exported_names(_offline_exposition())
    dashboard = {"panels": [{"title": "p", "targets": [{"refId": "A", "expr": "sum by (station) (x)"}]}]}
    assert unknown_labels(dashboard, labels | scrape_target_labels()) == {"panel 'p' A": {"station"}}


# -- against a live service ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def identifier() -> str:
    return f"dash-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def logged(stack: StackConfig, tmp_path_factory: pytest.TempPathFactory, identifier: str) -> LoggedModel:
    return log_model_run(stack, tmp_path_factory.mktemp("model"), identifier=identifier, seed=3)


@pytest.fixture(scope="module")
def inference(
    service_env: dict[str, str],
    object_store: ObjectStore,
    logged: LoggedModel,
    identifier: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Replica]:
    """`python -m inference_container` serving the promoted model, with prediction logging on."""
    bucket = f"dash-promotion-{uuid.uuid4().hex[:8]}"
    object_store.ensure_bucket(bucket)
    write_pointer(object_store, make_pointer(logged, identifier), bucket=bucket)
    env = {
        **service_env,
        "IDENTIFIERS": identifier,
        "BUCKET_PROMOTION": bucket,
        "TOPIC_MODEL_SELECTED": f"model-selected-{identifier}",
        "INFERENCE_LOG_ENABLED": "true",
        "INFERENCE_LOG_FLUSH_S": "0.2",
    }
    replica = Replica(env, tmp_path_factory.mktemp("dashboard") / "inference.log")
    try:
        replica.wait_until(lambda: replica.status_code("/readyz") == 200, 90, "the model to load")
        yield replica
    finally:
        replica.stop()


@pytest.fixture(scope="module")
def live_metrics(inference: Replica, identifier: str) -> str:
    """/metrics after the answers a dashboard shows: forecasts, a 4xx, a 404, other routes."""
    split = load_test_split()
    headers = {"Content-Type": "application/json"}
    for start, station in ((0, identifier), (50, identifier), (100, "no-such-station")):
        body = {**window_body(split, start, inference_length=3), "identifier": station}
        httpx.post(inference.url + "/predict", content=orjson.dumps(body), headers=headers, timeout=10)
    httpx.post(inference.url + "/predict", content=b"{", headers=headers, timeout=10)
    httpx.get(inference.url + "/model", timeout=10)
    response = httpx.get(inference.url + "/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


@pytest.fixture(scope="module")
def consumer_metrics(
    stack: StackConfig,
    service_env: dict[str, str],
    object_store: ObjectStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """/metrics of `python -m eval_container`, a Kafka consumer, once it reports its group's lag."""
    topics = make_topics(stack, object_store)
    evaluator = EvaluatorProcess(
        evaluator_env(service_env, topics), tmp_path_factory.mktemp("evaluator") / "evaluator.log"
    )
    exposition = ""

    def reports_lag() -> bool:
        nonlocal exposition
        exposition = httpx.get(f"http://127.0.0.1:{evaluator.port}/metrics", timeout=10).text
        return f'topic="{topics.training}"' in exposition

    try:
        evaluator.start_ready(timeout_s=60)
        evaluator.wait_until(reports_lag, 30, "the evaluator's consumer lag on /metrics")
    finally:
        evaluator.stop()
    assert f'consumer_lag_messages{{group="{topics.group}",partition="0",topic="{topics.training}"}} 0.0' in (
        exposition
    ), "nothing was published: no lag"
    return exposition


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_live_metrics_hold_what_the_requests_did(
    live_metrics: str, identifier: str, logged: LoggedModel
) -> None:
    """The exposition read below is the running service's, after real traffic."""
    assert (
        f'inference_requests_total{{identifier="{identifier}",route="/predict",status="200"}} 2.0'
        in live_metrics
    )
    assert 'route="/predict",status="404"' in live_metrics
    assert 'route="/predict",status="400"' in live_metrics
    assert f'run_id="{logged.run_id}"' in live_metrics
    assert "inference_predicted_steps_total 6.0" in live_metrics
    assert f'inference_model_swaps_total{{identifier="{identifier}"}} 1.0' in live_metrics


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_every_metric_the_dashboard_queries_is_exported_by_a_running_service(
    live_metrics: str, consumer_metrics: str
) -> None:
    exported, _ = exported_names(live_metrics + consumer_metrics)
    dashboard = load_dashboard()
    queried = set().union(*(metric_names(expr) for _, expr, _ in dashboard_queries(dashboard)))
    assert len(queried) >= 8, f"the dashboard queries too little to be checked: {queried}"
    assert unknown_metrics(dashboard, exported) == {}


# Outside the default suite (CI time budget); `pytest -m slow` runs it.
@pytest.mark.slow
def test_every_label_the_dashboard_uses_is_on_the_samples_or_set_by_the_scrape(
    live_metrics: str, consumer_metrics: str
) -> None:
    _, labels = exported_names(live_metrics + consumer_metrics)
    known = labels | scrape_target_labels() | {"le"}
    assert unknown_labels(load_dashboard(), known) == {}

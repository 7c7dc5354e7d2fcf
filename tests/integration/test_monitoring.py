"""k8s/monitoring: the Grafana dashboard and the PrometheusRule name only series that a real run
exports (a run of configs/demo_cpu.toml is scraped), promtool accepts the rules and the dashboard's
queries, each alert fires on the failure it is for and not on a healthy run, and every overlay
includes the component."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.http import http_get
from tests.integration._deploy import K8S, OVERLAYS, one, render, tool, yaml
from tests.integration._service import demo_overrides, finish, make_dataset, popen_train, wait_for

jsonschema = pytest.importorskip("jsonschema")

MONITORING = K8S / "monitoring"
DASHBOARD = MONITORING / "partialfc-dashboard.json"
SCHEMA = Path(__file__).parent / "schemas" / "prometheusrule-monitoring-v1.json"
# Grafana's variables, as a query could see them (the syntax check needs plain PromQL).
GRAFANA_VARIABLES = {"$job": ".*", "$__rate_interval": "2m", "$__range": "1h"}
_NOT_SERIES = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
    "atan2",
}


def series_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers not called as functions, once
    label matchers, ranges, grouping clauses, offsets and strings are taken out."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\boffset\s+\w+", " ", expr)
    names = re.findall(r"(?<![\w$.])[A-Za-z_:][A-Za-z0-9_:]*\b(?!\s*\()", expr)
    return {n for n in names if n.lower() not in _NOT_SERIES}


def test_series_names_reads_selectors_and_skips_the_rest() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, job) (rate(a_bucket{job=~"$job", x="y"}[5m]))) '
        "/ on (pod) group_left b or c offset 10m > 2 * 60 and time() - d_total == +Inf"
    )
    assert series_names(expr) == {"a_bucket", "b", "c", "d_total"}


def _rules() -> list[dict[str, Any]]:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def _dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":  # label_values(METRIC, LABEL): Grafana's, not PromQL
            (metric,) = re.findall(r"label_values\((\w+),", var["query"]["query"])
            queries.append(metric)
    return queries


def _plain(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> str:
    """/metrics of a real run (configs/demo_cpu.toml) after it has evaluated and checkpointed."""
    root = tmp_path_factory.mktemp("scrape")
    data, out, log = make_dataset(root / "data"), root / "run", root / "train.log"
    port = _free_port()
    proc = popen_train(
        *demo_overrides(
            data,
            out,
            "--train.checkpoint_every=2",
            "--eval.every=2",
            f"--metrics.port={port}",
            "--metrics.host=127.0.0.1",
        ),
        log=log,
    )
    url, text = f"http://127.0.0.1:{port}/metrics", {"now": ""}

    def evaluated_and_checkpointed() -> bool:
        try:
            text["now"] = http_get(url)[1]
        except OSError:
            return False  # not listening yet
        return all(
            re.search(rf"^{name}\{{.*\}} \S+$", text["now"], re.M)
            for name in ("partialfc_eval_accuracy", "partialfc_last_checkpoint_timestamp_seconds")
        )

    try:
        wait_for(evaluated_and_checkpointed, proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        finish(proc)
    return text["now"]


def test_every_dashboard_and_alert_series_is_exported_by_a_real_run(scraped: str) -> None:
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in scraped.splitlines()
        if line and not line.startswith("#")
    }
    named = {}
    for expr in [*_dashboard_queries(), *(r["expr"] for r in _rules())]:
        for name in series_names(expr):
            named.setdefault(name, expr)
    assert {"partialfc_samples_total", "partialfc_step_duration_seconds_bucket"} <= set(named)
    missing = {name: expr for name, expr in named.items() if name not in exported}
    assert not missing, f"named but not exported by the run: {missing}"


def test_the_real_run_output_passes_promtool_check_metrics(scraped: str) -> None:
    checked = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=scraped, capture_output=True, text=True
    )
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (
        checked.stdout + checked.stderr
    )


def _check_rules(groups: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True
    )


def test_promtool_accepts_the_alert_rules(tmp_path: Path) -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    checked = _check_rules(rule["spec"]["groups"], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in checked.stdout, checked.stdout
    bad = [{"name": "x", "rules": [{"alert": "A", "expr": "sum(rate(x[5m])"}]}]
    assert _check_rules(bad, tmp_path).returncode != 0, "promtool can fail"


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # Each query as a recording rule: promtool parses it as Prometheus would.
    queries = _dashboard_queries()
    rules = [{"record": f"dashboard:q{i}", "expr": _plain(q)} for i, q in enumerate(queries)]
    checked = _check_rules([{"name": "dashboard", "rules": rules}], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# promtool's rule unit tests: each alert fires on the failure it is for, and not on a healthy
# run (one rank training 64 images a step every 10 s, checkpointing every 30 min).
HEALTHY = [
    {"series": 'partialfc_seconds_since_step{pod="p", rank="0"}', "values": "5+0x200"},
    {"series": 'partialfc_loss{pod="p", rank="0"}', "values": "3+0x200"},
    {"series": 'partialfc_samples_total{job="j", pod="p", rank="0"}', "values": "0+384x200"},
    {"series": 'partialfc_step{pod="p", rank="0"}', "values": "0+6x200"},
    {"series": 'process_start_time_seconds{pod="p"}', "values": "0+0x200"},
    {
        "series": 'partialfc_last_checkpoint_timestamp_seconds{pod="p", rank="0"}',
        "values": " ".join(str(60 * (m - m % 30)) for m in range(201)),
    },
]
FAILURES = {
    "PartialFCNoTrainingStep": (
        'partialfc_seconds_since_step{pod="p", rank="0"}',
        "5+60x200",
        {"rank": "0", "pod": "p"},
    ),
    "PartialFCLossNotFinite": (
        'partialfc_loss{pod="p", rank="0"}',
        " ".join(["3"] * 150 + ["NaN"] * 51),
        {"pod": "p", "rank": "0"},
    ),
    "PartialFCNoCheckpoint": (
        'partialfc_last_checkpoint_timestamp_seconds{pod="p", rank="0"}',
        "0+0x200",
        {"pod": "p"},
    ),
    "PartialFCThroughputHalved": (
        'partialfc_samples_total{job="j", pod="p", rank="0"}',
        " ".join(str(384 * m if m < 175 else 384 * 175 + 128 * (m - 175)) for m in range(201)),
        {"job": "j"},
    ),
}


def _alert_test(tmp_path: Path, name: str, failing: tuple | None) -> dict[str, Any]:
    series = [s for s in HEALTHY if failing is None or s["series"] != failing[0]]
    if failing is not None:
        series.append({"series": failing[0], "values": failing[1]})
    labels = {} if failing is None else failing[2]
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    alert = next(r for r in _rules() if r["alert"] == name)
    expected = [] if failing is None else [{"exp_labels": {**alert["labels"], **labels}}]
    for group in rule["spec"]["groups"]:  # templates of $value: not what is tested here
        for r in group["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "200m", "alertname": name, "exp_alerts": expected}
                ],
            }
        ],
    }


@pytest.mark.parametrize("alert", sorted(FAILURES))
@pytest.mark.parametrize("healthy", [True, False], ids=["healthy", "failing"])
def test_each_alert_fires_on_its_failure_only(tmp_path: Path, alert: str, healthy: bool) -> None:
    spec = _alert_test(tmp_path, alert, None if healthy else FAILURES[alert])
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = subprocess.run(
        [tool("promtool"), "test", "rules", str(path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_includes_the_monitoring_component(overlay: str) -> None:
    docs = render(overlay)
    board = one(docs, "ConfigMap", "partialfc-grafana-dashboard")
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(board["data"]["partialfc-dashboard.json"]) == json.loads(
        DASHBOARD.read_text()
    )
    rule = one(docs, "PrometheusRule")
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    assert [e.message for e in validator.iter_errors(rule)] == []
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "typo"
    assert list(validator.iter_errors(rule)), "the schema can fail"


def test_the_dashboard_is_provisioning_ready() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert "id" not in board and board["uid"] == "partialfc-training"  # Grafana assigns ids
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"].lower() for p in board["panels"])
    for wanted in (
        "throughput",
        "loss",
        "learning rate",
        "step time",
        "eval accuracy",
        "checkpoint",
        "by rank",
    ):
        assert wanted in titles, wanted
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}

"""The chart's monitoring and autoscaling objects: the Grafana dashboard ConfigMap, the PrometheusRule and a
KEDA ScaledObject per autoscaled model, rendered with all of it on and off; the alert rules checked with
`promtool check rules` / `promtool test rules`; the order of a scaled-in pod's shutdown read from the
rendered manifests (the consumer drains before vLLM stops; tests/e2e/test_scale_in_drain.py runs that order
with real processes).

Core objects are validated strictly against the Kubernetes schemas (`kubernetes-validate`). The custom
resources (PrometheusRule from the Prometheus Operator, ScaledObject from KEDA, ServiceMonitor) have no
schema there and the CRDs are not vendored in this repository: they are shape-checked here against what
their published CRDs (monitoring.coreos.com/v1 PrometheusRule, keda.sh/v1alpha1 ScaledObject) require:
the required fields, their types, and the known keys of the parts the chart writes.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.chart.test_chart import CHART, NAMESPACE, RELEASE, ROOT, of_kind, render

DASHBOARD = CHART / "dashboards" / "llm-dispatcher.json"
RULES = CHART / "alerts" / "llm-dispatcher.rules.yaml"
RULE_TESTS = Path(__file__).resolve().parent / "alerts"
DOCS = ROOT / "docs" / "monitoring.md"
KUBE_VERSION = "1.30.0"
CUSTOM_KINDS = {
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}

ALL_ON: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "LLM"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
    "keda": {"prometheusServerAddress": "http://prometheus.monitoring.svc:9090", "authenticationRef": "prom-auth"},
    "modelDefaults": {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}},
    "consumer": {"settings": {"shutdownGraceS": 120}},
    "models": [
        {"name": "chat", "model": "org/chat", "servedModelName": "chat"},
        {"name": "code", "model": "org/code", "autoscaling": {"maxReplicas": 6, "queueDepthPerReplica": 2},
         "consumer": {"shutdownGraceS": 600}},
        {"name": "fixed", "model": "org/fixed", "replicaCount": 2, "autoscaling": {"enabled": False}},
    ],
}  # fmt: skip


def by_name(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in of_kind(docs, kind)}


def container(sts: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def model_statefulsets(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        d["spec"]["selector"]["matchLabels"]["llm-dispatcher/model"]: d
        for d in of_kind(docs, "StatefulSet")
        if d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "inference"
    }


# ------------------------------------------------------------------------------ shape of the CRs


def _keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(obj) - allowed
    assert not unknown, f"{where}: keys the CRD does not define: {sorted(unknown)}"


def check_prometheus_rule(doc: dict[str, Any]) -> None:
    """monitoring.coreos.com/v1 PrometheusRule: spec.groups[] {name (required), interval, rules[]}; a rule has
    `expr` (required) and `alert` or `record`, `for` a duration, labels/annotations maps of strings."""
    name = doc["metadata"]["name"]
    _keys(doc["spec"], {"groups"}, name)
    assert doc["spec"]["groups"], name
    for g in doc["spec"]["groups"]:
        _keys(g, {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"}, name)
        assert isinstance(g["name"], str) and g["name"], name
        for r in g["rules"]:
            _keys(r, {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}, f"{name}/{r}")
            assert isinstance(r["expr"], str | int) and ("alert" in r) != ("record" in r), r
            if "for" in r:
                assert re.fullmatch(r"(([0-9]+)(y|w|d|h|m|s|ms))+", r["for"]), r
            for key in ("labels", "annotations"):
                assert all(isinstance(k, str) and isinstance(v, str) for k, v in r.get(key, {}).items()), r


def check_scaled_object(doc: dict[str, Any]) -> None:
    """keda.sh/v1alpha1 ScaledObject: spec.scaleTargetRef {name (required), apiVersion, kind} and triggers[]
    (required) {type, metadata (required, a map of strings), name, metricType (AverageValue|Value|Utilization),
    authenticationRef {name}}; replica counts, intervals and the HPA behavior as integers."""
    name, spec = doc["metadata"]["name"], doc["spec"]
    _keys(
        spec,
        {"scaleTargetRef", "triggers", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod",
         "idleReplicaCount", "initialCooldownPeriod", "advanced", "fallback"},
        name,
    )  # fmt: skip
    _keys(spec["scaleTargetRef"], {"name", "apiVersion", "kind", "envSourceContainerName"}, name)
    assert isinstance(spec["scaleTargetRef"]["name"], str), name
    for key in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod"):
        assert isinstance(spec.get(key, 0), int), (name, key)
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    _keys(behavior, {"scaleUp", "scaleDown"}, name)
    down = behavior["scaleDown"]
    assert 0 <= down["stabilizationWindowSeconds"] <= 3600, name
    for p in down["policies"]:
        assert set(p) == {"type", "value", "periodSeconds"} and p["type"] in ("Pods", "Percent"), p
        assert p["value"] > 0 and 0 < p["periodSeconds"] <= 1800, p
    assert spec["triggers"], name
    for t in spec["triggers"]:
        _keys(t, {"type", "name", "metadata", "metricType", "authenticationRef", "useCachedMetrics"}, name)
        assert isinstance(t["type"], str) and isinstance(t["metadata"], dict), t
        assert all(isinstance(v, str) for v in t["metadata"].values()), f"{name}: trigger metadata must be strings"
        assert t.get("metricType", "AverageValue") in ("AverageValue", "Value", "Utilization"), t
        if "authenticationRef" in t:
            _keys(t["authenticationRef"], {"name", "kind"}, name)


def check_service_monitor(doc: dict[str, Any]) -> None:
    spec = doc["spec"]
    assert isinstance(spec["selector"], dict) and spec["endpoints"], doc["metadata"]["name"]


def validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        key, name = (doc["apiVersion"], doc["kind"]), f"{doc['kind']}/{doc['metadata']['name']}"
        if key in CUSTOM_KINDS:
            assert doc["metadata"]["name"] and isinstance(doc["spec"], dict), name
            {
                "PrometheusRule": check_prometheus_rule,
                "ScaledObject": check_scaled_object,
                "ServiceMonitor": check_service_monitor,
            }.get(doc["kind"], lambda _d: None)(doc)
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is invalid for Kubernetes {KUBE_VERSION}: {exc.message} at {list(exc.path)}")


# ------------------------------------------------------------------------------------ on and off


def test_with_everything_off_no_monitoring_object_is_rendered(chart: Any) -> None:
    docs = render(chart)
    assert not of_kind(docs, "PrometheusRule") and not of_kind(docs, "ScaledObject")
    assert not [c for c in of_kind(docs, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    (sts,) = model_statefulsets(docs).values()
    assert sts["spec"]["replicas"] == 1, "without autoscaling the chart sets replicaCount"


@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["off", "on"])
def test_everything_validates_strictly_and_lints(chart: Any, values: dict[str, Any]) -> None:
    docs = render(chart, values)
    validate_all(docs)
    kinds = {d["kind"] for d in docs}
    if values:
        assert {"PrometheusRule", "ScaledObject", "ServiceMonitor", "ConfigMap"} <= kinds
    report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


def test_the_shape_checks_refuse_what_the_crds_refuse(chart: Any) -> None:
    (so,) = [d for d in of_kind(render(chart, ALL_ON), "ScaledObject") if d["metadata"]["name"].endswith("-chat")]
    bad = json.loads(json.dumps(so))
    bad["spec"]["triggers"][0]["metadata"]["threshold"] = 4
    with pytest.raises(AssertionError, match="must be strings"):
        check_scaled_object(bad)
    bad = json.loads(json.dumps(so))
    bad["spec"]["triggers"][0]["metricTyp"] = "Value"
    with pytest.raises(AssertionError, match="metricTyp"):
        check_scaled_object(bad)


# ------------------------------------------------------------------------------- the dashboard


def test_the_dashboard_configmap_holds_the_repositorys_dashboard_for_the_grafana_sidecar(chart: Any) -> None:
    (cm,) = [c for c in of_kind(render(chart, ALL_ON), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "LLM"}
    assert cm["metadata"]["namespace"] == NAMESPACE
    assert json.loads(cm["data"]["llm-dispatcher.json"]) == json.loads(DASHBOARD.read_text())
    moved = render(chart, {"grafanaDashboard": {"enabled": True, "namespace": "monitoring", "labels": {"x": "y"}}})
    (cm,) = [c for c in of_kind(moved, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["x"] == "y"


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in board["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def test_every_panel_says_what_it_shows_and_follows_the_variables() -> None:
    board = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in board["templating"]["list"]]
    assert names == ["datasource", "namespace", "model", "replica"]
    panels = [p for p in _panels(board) if p["type"] != "row"]
    assert len({p["id"] for p in _panels(board)}) == len(_panels(board)), "panel ids are unique"
    assert len(panels) >= 15
    for p in panels:
        assert len(p.get("description", "")) > 40, f"panel {p['title']!r} does not say what it shows"
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert 'namespace=~"$namespace"' in t["expr"], f"{p['title']}: not filtered by namespace"
            if "llmd_consumer_" in t["expr"]:
                assert 'replica=~"$replica"' in t["expr"], f"{p['title']}: not filtered by replica"
    titles = " ".join(p["title"] for p in panels).lower()
    for topic in ("requests/s by status", "refusals/s by reason", "queue depth", "queue wait", "time to first token",
                  "tokens/s", "in flight vs capacity", "vllm running / waiting", "kv-cache", "admission decisions",
                  "vllm metrics fresh", "usage writer", "per-key limit"):  # fmt: skip
        assert topic in titles, f"no panel on {topic}"


# ------------------------------------------------------------------------------------- the alerts


def test_the_prometheus_rule_carries_exactly_the_rules_file(chart: Any) -> None:
    (rule,) = of_kind(render(chart, ALL_ON), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "{{ $labels.model }}" in alerts[0]["annotations"]["summary"], "Prometheus templates reach Prometheus"


def test_every_alert_has_a_summary_a_description_and_a_runbook_section() -> None:
    docs = DOCS.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", docs, re.M)
    }
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "LLMDispatcherNoLiveReplica", "LLMDispatcherQueueWaitHigh", "LLMDispatcherRefusalsHigh",
        "LLMDispatcherVllmMetricsStale", "LLMDispatcherUsageRecordsDropped", "LLMDispatcherSenderNotReady",
    }  # fmt: skip
    for r in rules:
        a = r["annotations"]
        assert a["summary"] and a["description"], r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        anchor = a["runbook_url"].rsplit("#", 1)[1]
        assert a["runbook_url"].split("#")[0].endswith("/docs/monitoring.md") and anchor in anchors, r["alert"]


needs_promtool = pytest.mark.skipif(
    not shutil.which("promtool"), reason="no promtool: bash scripts/ensure-prometheus.sh"
)


@needs_promtool
def test_promtool_check_rules_accepts_the_rules_file() -> None:
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    n = len([r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]])
    assert f"SUCCESS: {n} rules found" in out.stdout


@needs_promtool
def test_promtool_test_rules_makes_every_alert_fire_and_stay_silent() -> None:
    files = sorted(RULE_TESTS.glob("*.test.yaml"))
    assert files
    tested = {
        case["alertname"]
        for f in files
        for t in yaml.safe_load(f.read_text())["tests"]
        for case in t["alert_rule_test"]
    }
    silent = {
        case["alertname"] for f in files for t in yaml.safe_load(f.read_text())["tests"]
        for case in t["alert_rule_test"] if not case.get("exp_alerts")
    }  # fmt: skip
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert tested == alerts and silent == alerts, "every alert needs a case that fires and one that stays silent"
    out = subprocess.run(
        ["promtool", "test", "rules", *map(str, files)], capture_output=True, text=True, cwd=RULE_TESTS
    )
    assert out.returncode == 0, out.stdout + out.stderr


# --------------------------------------------------------------------------------- autoscaling


def test_each_autoscaled_model_gets_a_scaled_object_on_queue_depth_and_load(chart: Any) -> None:
    docs = render(chart, ALL_ON)
    statefulsets = model_statefulsets(docs)
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in of_kind(docs, "ScaledObject")}
    assert sorted(scaled) == sorted(statefulsets[m]["metadata"]["name"] for m in ("chat", "code"))
    assert statefulsets["fixed"]["spec"]["replicas"] == 2 and "replicas" not in statefulsets["chat"]["spec"]
    for model, served, most, depth in (("chat", "chat", 3, "4"), ("code", "org/code", 6, "2")):
        sts = statefulsets[model]
        assert "replicas" not in sts["spec"], "KEDA's HPA owns the replicas"
        so = scaled[sts["metadata"]["name"]]
        spec = so["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": sts["metadata"]["name"],
        }
        assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, most)
        assert spec["cooldownPeriod"] == 600
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] == 600 and down["policies"] == [
            {"type": "Pods", "value": 1, "periodSeconds": 60}
        ], "scale-in one replica at a time"
        triggers = {t["name"]: t for t in spec["triggers"]}
        sel = f'namespace="{NAMESPACE}", model="{served}"'
        assert triggers["queue-depth"]["metricType"] == "AverageValue"
        assert triggers["queue-depth"]["metadata"]["query"] == f"max(llmd_queue_depth{{{sel}}})"
        assert triggers["queue-depth"]["metadata"]["threshold"] == depth
        assert triggers["in-flight-ratio"]["metricType"] == "Value"
        assert triggers["in-flight-ratio"]["metadata"]["query"] == (
            f"sum(llmd_consumer_in_flight{{{sel}}}) / sum(llmd_consumer_max_concurrency{{{sel}}})"
        )
        assert triggers["in-flight-ratio"]["metadata"]["threshold"] == "0.8"
        for t in triggers.values():
            assert t["type"] == "prometheus" and t["authenticationRef"] == {"name": "prom-auth"}
            assert t["metadata"]["serverAddress"] == "http://prometheus.monitoring.svc:9090"
        # The model label the queries select on is the one the consumer exports (LLMD_MODEL).
        assert env_of(container(sts, "consumer"))["LLMD_MODEL"] == served


@pytest.mark.parametrize(
    ("values", "error", "message"),
    [
        ({"modelDefaults": {"autoscaling": {"enabled": True}}}, helm.HelmError,
         r"keda.prometheusServerAddress is required"),
        ({"keda": {"prometheusServerAddress": "http://p:9090"},
          "modelDefaults": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
         helm.HelmError, r"minReplicas \(5\) is above maxReplicas \(2\)"),
        ({"modelDefaults": {"autoscaling": {"minReplicas": 0}}}, helm.HelmValuesError, r"minReplicas.*minimum"),
        ({"models": [{"name": "m", "model": "o/m", "autoscaling": {"targetUtilization": 1.5}}]},
         helm.HelmValuesError, r"targetUtilization.*maximum"),
        ({"modelDefaults": {"autoscaling": {"cooldown": 5}}}, helm.HelmValuesError,
         r"additional properties 'cooldown'"),
        ({"keda": {"prometheusServerAddress": "prometheus:9090"}}, helm.HelmValuesError, r"prometheusServerAddress"),
        ({"prometheusRule": {"enable": True}}, helm.HelmValuesError, r"additional properties 'enable'"),
    ],
    ids=["no-prometheus", "min-above-max", "min-zero", "utilization-above-1", "unknown-key", "address-not-url",
         "unknown-rule-key"],
)  # fmt: skip
def test_bad_monitoring_values_are_refused_with_a_clear_message(
    chart: Any, values: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


# ------------------------------------------------------------------------- scale-in: drain first


def shutdown_order(sts: dict[str, Any]) -> dict[str, float]:
    """What the kubelet does to a pod of this StatefulSet when it is removed (scale-in): every container's
    preStop runs, then that container gets SIGTERM; SIGKILL at terminationGracePeriodSeconds."""
    consumer, vllm = container(sts, "consumer"), container(sts, "vllm")
    command = vllm["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return {
        "consumer_sigterm": 0.0 if "lifecycle" not in consumer else float("nan"),
        "consumer_drain_ends": float(env_of(consumer)["LLMD_SHUTDOWN_GRACE_S"]),
        "vllm_sigterm": float(command[1]),
        "sigkill": float(sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]),
    }


@pytest.mark.parametrize("model", ["chat", "code", "fixed"])
def test_a_scaled_in_pod_drains_its_consumer_before_vllm_stops(chart: Any, model: str) -> None:
    sts = model_statefulsets(render(chart, ALL_ON))[model]
    t = shutdown_order(sts)
    # The consumer has no preStop: it gets SIGTERM at once, stops pulling and is not ready any more ...
    assert t["consumer_sigterm"] == 0.0
    assert container(sts, "consumer")["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # ... and lets granted requests finish for up to its grace, while vLLM keeps serving them: vLLM's
    # SIGTERM comes only after its preStop, which lasts at least as long as the consumer's drain.
    assert t["consumer_drain_ends"] == {"chat": 120, "code": 600, "fixed": 120}[model]
    assert t["consumer_sigterm"] < t["consumer_drain_ends"] <= t["vllm_sigterm"]
    # vLLM then has time to stop by itself before the kubelet kills what is left.
    assert t["sigkill"] - t["vllm_sigterm"] >= 30
    # The sender stops sending there as soon as the consumer says goodbye (ready=False heartbeat): no route
    # to a pod that is going, whatever its Service says.
    assert container(sts, "consumer")["ports"][0]["name"] == "consumer"

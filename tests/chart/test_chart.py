"""The Helm chart, rendered offline with Helm's own Go SDK (`helm-python-sdk`, no helm binary) and every
rendered manifest validated strictly against the Kubernetes 1.30 schemas (`kubernetes-validate`).

Custom resources (RabbitmqCluster from the RabbitMQ Cluster Operator, ServiceMonitor from the Prometheus
Operator) have no schema among the core Kubernetes ones: they are skipped by name (`CUSTOM_KINDS`) and
only checked for shape here.

The env-var tests import the settings classes, so the chart and the code cannot drift apart: the chart may
set only `LLMD_*` variables that `SenderSettings` / `ConsumerSettings` read, plus helper variables that
exist only to be expanded (`$(VAR)`) into one of those.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from consumer.settings import ConsumerSettings
from sender.settings import SenderSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "llm-dispatcher"
SCENARIOS = Path(__file__).resolve().parent / "scenarios"
KUBE_VERSION = "1.30.0"
RELEASE, NAMESPACE = "llmd", "ai"
CUSTOM_KINDS = {("rabbitmq.com/v1beta1", "RabbitmqCluster"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Pod", "Job"}

SENDER_REQUIRED = {"LLMD_AMQP_URL", "LLMD_DATABASE_URL", "LLMD_MODELS", "LLMD_HOST", "LLMD_PORT"}
CONSUMER_REQUIRED = {
    "LLMD_AMQP_URL", "LLMD_MODEL", "LLMD_VLLM_URL", "LLMD_ADVERTISE_URL", "LLMD_REPLICA_ID", "LLMD_HOST",
    "LLMD_PORT", "LLMD_MAX_CONCURRENCY", "LLMD_MAX_WAITING", "LLMD_MAX_KV_CACHE_USAGE",
    "LLMD_MIN_TOKENS_PER_SECOND_PER_USER", "LLMD_FORWARD_PRIORITY",
}  # fmt: skip


def _load_yaml(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "example": _load_yaml(ROOT / "values.example.yaml"),
    **{p.stem: _load_yaml(p) for p in sorted(SCENARIOS.glob("*.yaml"))},
}


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    manifests = chart.render(values=values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec(doc)["containers"] if c["name"] == name]
    return found


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def sender_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-sender")]
    return container(deployment, "sender")


def model_statefulsets(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        d for d in of_kind(docs, "StatefulSet")
        if d["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "inference"
    ]  # fmt: skip


def assert_env_matches_settings(
    env: dict[str, dict[str, Any]], settings_cls: type, required: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """LLMD_* vars are fields of the class; other vars only feed $(VAR) expansion; the class accepts the values."""
    fields = {f"LLMD_{name.upper()}" for name in settings_cls.model_fields}
    llmd = {n for n in env if n.startswith("LLMD_")}
    unknown = sorted(llmd - fields)
    assert not unknown, f"the chart sets {unknown}, which {settings_cls.__name__} does not read"
    missing = sorted(required - llmd)
    assert not missing, f"the chart does not set {missing} for {settings_cls.__name__}"
    expanded = " ".join(str(env[n].get("value", "")) for n in llmd)
    helpers = sorted(n for n in env if not n.startswith("LLMD_") and f"$({n})" not in expanded)
    assert not helpers, f"{helpers} are set but neither read by {settings_cls.__name__} nor expanded into an LLMD_ var"
    # The values must parse: e.g. a number rendered as 1.048576e+07 would be refused for an int field.
    for key in [k for k in os.environ if k.startswith("LLMD_")]:
        monkeypatch.delenv(key)
    for name in llmd:
        value = env[name].get("value")
        if value is None:  # from a Secret: a value of the right shape
            value = "postgresql+asyncpg://u:p@h:5432/d" if "DATABASE" in name else "amqp://u:p@h:5672/"
        # $(VAR) is expanded by Kubernetes from another env var (often a Secret's password): a value of the
        # right shape that is no placeholder credential, which the settings refuse outside development.
        monkeypatch.setenv(name, re.sub(r"\$\((\w+)\)", "k8s-expanded", str(value)))
    settings_cls()


# ---------------------------------------------------------------------------------------------- lint


@pytest.mark.parametrize("value_set", ["default", "example"])
def test_chart_lints_without_errors_or_warnings(value_set: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


# ------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_rendered_manifest_validates_strictly_against_kubernetes_schemas(chart: Any, value_set: str) -> None:
    docs = render(chart, VALUE_SETS[value_set])
    assert docs
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            # No core schema exists for operator CRs: checked for shape only.
            assert doc["metadata"]["name"] and isinstance(doc["spec"], dict), name
            continue
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{value_set}: {name} is invalid for Kubernetes {KUBE_VERSION}: {exc.message} at {list(exc.path)}"
            )


def test_example_values_give_two_models_and_three_token_classes(chart: Any) -> None:
    values = VALUE_SETS["example"]
    assert len(values["models"]) == 2
    assert len({t["priority"] for t in values["tokens"]}) == 3
    docs = render(chart, values)
    (secret,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-tokens")]
    seeded = json.loads(base64.b64decode(secret["data"]["tokens.json"]))
    assert seeded == values["tokens"]
    env = env_of(sender_container(docs))
    assert env["LLMD_TOKENS_FILE"]["value"] == "/etc/llm-dispatcher/tokens/tokens.json"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_one_statefulset_per_model_with_a_consumer_sidecar_per_replica(chart: Any, value_set: str) -> None:
    values = VALUE_SETS[value_set]
    models = values.get("models", chart.values["models"])
    docs = render(chart, values)
    statefulsets = model_statefulsets(docs)
    assert len(statefulsets) == len(models)
    served = []
    for model, sts in zip(
        models,
        sorted(
            statefulsets,
            key=lambda d: [m["name"] for m in models].index(
                d["spec"]["selector"]["matchLabels"]["llm-dispatcher/model"]
            ),
        ),
        strict=True,
    ):
        served_name = model.get("servedModelName") or model["model"]
        served.append(served_name)
        assert sts["spec"]["replicas"] == model.get("replicaCount", 1)
        assert [c["name"] for c in pod_spec(sts)["containers"]] == ["vllm", "consumer"]
        vllm, consumer = container(sts, "vllm"), container(sts, "consumer")
        gpus = model.get("gpus", 1)
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == gpus
        assert (f"--tensor-parallel-size={gpus}" in vllm["args"]) == (gpus > 1)
        assert vllm["args"][0] == model["model"] and f"--served-model-name={served_name}" in vllm["args"]
        env = env_of(consumer)
        assert env["LLMD_MODEL"]["value"] == served_name
        assert env["LLMD_VLLM_URL"]["value"] == "http://127.0.0.1:8000"
        # The announced address is the pod's stable name under the model's headless Service.
        (svc,) = [s for s in of_kind(docs, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
        assert svc["spec"]["clusterIP"] == "None"
        assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
        assert env["LLMD_ADVERTISE_URL"]["value"] == (
            f"http://$(POD_NAME).{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local:8000"
        )
        assert env["LLMD_REPLICA_ID"]["value"] == "$(POD_NAME)"
        probes = {p: vllm[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe")}
        assert probes == {"startupProbe": "/health", "readinessProbe": "/health"}
        budget = vllm["startupProbe"]["periodSeconds"] * vllm["startupProbe"]["failureThreshold"]
        assert budget >= 1800, "vLLM needs a long startup budget to download and load weights"
    assert json.loads(env_of(sender_container(docs))["LLMD_MODELS"]["value"]) == served


def test_model_overrides_fall_back_to_shared_defaults_key_by_key(chart: Any) -> None:
    docs = render(chart, {
        "modelDefaults": {"pvc": {"enabled": True, "storageSize": "7Gi"}, "gpuMemoryUtilization": 0.8},
        "consumer": {"settings": {"maxConcurrency": 8, "forwardPriority": True}},
        "models": [
            {"name": "a", "model": "org/a"},
            {"name": "b", "model": "org/b", "gpuMemoryUtilization": 0.5, "pvc": {"enabled": False},
             "consumer": {"forwardPriority": False}},
        ],
    })  # fmt: skip
    a, b = sorted(model_statefulsets(docs), key=lambda d: d["metadata"]["name"])
    assert "--gpu-memory-utilization=0.8" in container(a, "vllm")["args"]
    assert "--gpu-memory-utilization=0.5" in container(b, "vllm")["args"]
    assert a["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "7Gi"
    assert "volumeClaimTemplates" not in b["spec"], "false in a model must win over true in modelDefaults"
    assert env_of(container(a, "consumer"))["LLMD_FORWARD_PRIORITY"]["value"] == "true"
    assert "--scheduling-policy=priority" in container(a, "vllm")["args"]
    assert env_of(container(b, "consumer"))["LLMD_FORWARD_PRIORITY"]["value"] == "false"
    assert "--scheduling-policy=priority" not in container(b, "vllm")["args"]
    assert env_of(container(b, "consumer"))["LLMD_MAX_CONCURRENCY"]["value"] == "8"


def test_rope_scaling_reaches_vllm_as_hf_overrides(chart: Any) -> None:
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    docs = render(
        chart,
        {
            "models": [
                {
                    "name": "m",
                    "model": "org/m",
                    "ropeScaling": {"enabled": True, "jsonConfiguration": rope, "theta": 1000000},
                }
            ]
        },
    )
    (arg,) = [a for a in container(model_statefulsets(docs)[0], "vllm")["args"] if a.startswith("--hf-overrides=")]
    assert json.loads(arg.split("=", 1)[1]) == {"rope_scaling": rope, "rope_theta": 1000000}


# ------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"models": [{"name": "Bad_Name", "model": "org/m"}]}, r"/models/0/name.*does not match pattern"),
        ({"models": [{"name": "m", "model": "org/m", "replicaCount": -1}]}, r"/models/0/replicaCount.*minimum"),
        ({"sender": {"replicaCount": -1}}, r"/sender/replicaCount.*minimum"),
        ({"replicaCount": 2}, r"additional properties 'replicaCount' not allowed"),
        ({"sender": {"settings": {"queueTimeout": 5}}}, r"/sender/settings.*additional properties 'queueTimeout'"),
        ({"consumer": {"settings": {"maxConcurency": 5}}}, r"/consumer/settings.*properties 'maxConcurency'"),
        ({"models": [{"name": "m"}]}, r"/models/0.*missing propert.*model"),
        ({"database": {"type": "oracle"}}, r"/database/type'?: value must be one of 'postgresql', 'mysql'"),
        ({"rabbitmq": {"mode": "external"}}, r"/rabbitmq/external/existingSecret.*minLength"),
        ({"tokens": [{"name": "t", "token": "short", "priority": 1, "threshold": 1}]}, r"/tokens/0/token.*minLength"),
    ],
    ids=["bad-model-name", "negative-model-replicas", "negative-sender-replicas", "unknown-top-level-key",
         "unknown-sender-setting", "unknown-consumer-setting", "model-without-id", "unknown-database-type",
         "external-rabbitmq-without-secret", "short-token"],
)  # fmt: skip
def test_schema_refuses_invalid_values_with_a_clear_message(chart: Any, values: dict, message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"models": [{"name": "m", "model": "a"}, {"name": "m", "model": "b"}]}, r'name "m" appears twice'),
        ({"models": [{"name": "m", "model": "a"}, {"name": "n", "model": "a"}]}, r'servedModelName "a" appears twice'),
        ({"tokens": [{"name": "t", "token": "x" * 20, "priority": 1, "threshold": 1}],
          "existingTokensSecret": {"name": "s"}}, r"not both"),
        ({"tokens": [{"name": "t", "token": "x" * 20, "priority": 11, "threshold": 1}]}, r"above queue.maxPriority"),
    ],
    ids=["duplicate-name", "duplicate-served-name", "tokens-twice", "priority-above-max"],
)  # fmt: skip
def test_templates_refuse_what_the_schema_cannot_express(chart: Any, values: dict, message: str) -> None:
    with pytest.raises(helm.HelmError, match=message):
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)


# --------------------------------------------------------------------------------- env <-> settings


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_sender_env_vars_are_exactly_what_sender_settings_read(
    chart: Any, value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_of(sender_container(render(chart, VALUE_SETS[value_set])))
    assert_env_matches_settings(env, SenderSettings, SENDER_REQUIRED, monkeypatch)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_consumer_env_vars_are_exactly_what_consumer_settings_read(
    chart: Any, value_set: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sts in model_statefulsets(render(chart, VALUE_SETS[value_set])):
        assert_env_matches_settings(
            env_of(container(sts, "consumer")), ConsumerSettings, CONSUMER_REQUIRED, monkeypatch
        )


def test_every_settings_key_the_schema_allows_maps_to_a_settings_field(
    chart: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = chart.schema
    sample = {"integer": 7, "number": 1.5, "boolean": True}

    def every_key(props: dict[str, Any]) -> dict[str, Any]:
        return {k: (0.5 if "maximum" in p else sample[p["type"]]) for k, p in props.items()}

    sender_settings = every_key(schema["properties"]["sender"]["properties"]["settings"]["properties"])
    consumer_settings = every_key(schema["$defs"]["consumerSettings"]["properties"])
    docs = render(chart, {"sender": {"settings": sender_settings}, "consumer": {"settings": consumer_settings}})
    sender_env = env_of(sender_container(docs))
    assert_env_matches_settings(sender_env, SenderSettings, SENDER_REQUIRED, monkeypatch)
    consumer_env = env_of(container(model_statefulsets(docs)[0], "consumer"))
    assert_env_matches_settings(consumer_env, ConsumerSettings, CONSUMER_REQUIRED, monkeypatch)
    assert sender_env["LLMD_MAX_BODY_BYTES"]["value"] == "7"


def test_large_numbers_reach_the_env_in_plain_notation(chart: Any) -> None:
    docs = render(chart, {"sender": {"settings": {"maxBodyBytes": 104857600}}})
    assert env_of(sender_container(docs))["LLMD_MAX_BODY_BYTES"]["value"] == "104857600"


# ------------------------------------------------------------------------------------------ secrets


def _url_value(env: dict[str, dict[str, Any]], name: str) -> str | None:
    return env[name].get("value")


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_credentials_are_referenced_from_secrets_never_inlined(chart: Any, value_set: str) -> None:
    values = VALUE_SETS[value_set]
    docs = render(chart, values)
    literals = [t["token"] for t in values.get("tokens", [])] + ["hf_"]
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        text = yaml.safe_dump(doc)
        for literal in literals:
            assert literal not in text, f"{doc['kind']}/{doc['metadata']['name']} inlines a secret"
        for c in pod_spec(doc)["containers"]:
            for name, e in env_of(c).items():
                if re.search(r"(PASSWORD|TOKEN|SECRET|_KEY)$", name):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{c['name']}: {name} must come from a Secret"
                if name in ("LLMD_DATABASE_URL", "LLMD_AMQP_URL") and "value" in e:
                    # user:password@ parts are $(VAR)s filled from secretKeyRef vars, or no credential at all.
                    m = re.match(r"^[a-z+]+://(?P<user>[^:@/]*):(?P<password>[^@]*)@", e["value"])
                    assert m and m["password"].startswith("$(") and m["password"].endswith(")"), e["value"]
                    assert "secretKeyRef" in env_of(c)[m["password"][2:-1]]["valueFrom"]
    hf = [
        env_of(container(sts, "vllm"))["HF_TOKEN"]
        for sts in model_statefulsets(docs) if "HF_TOKEN" in env_of(container(sts, "vllm"))
    ]  # fmt: skip
    assert all(e["valueFrom"]["secretKeyRef"]["name"] for e in hf)
    if value_set == "example":
        assert hf, "the example's gated model takes its Hugging Face token from a Secret"


def test_internal_services_take_urls_from_operator_and_chart_secrets(chart: Any) -> None:
    docs = render(chart)
    env = env_of(sender_container(docs))
    assert env["AMQP_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{RELEASE}-llm-dispatcher-rabbitmq-default-user",
        "key": "password",
    }
    name = f"{RELEASE}-llm-dispatcher-rabbitmq"
    assert env["LLMD_AMQP_URL"]["value"].split(",") == [  # every node of the cluster by its headless-Service name
        f"amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@{name}-server-{i}.{name}-nodes.{NAMESPACE}.svc:$(AMQP_PORT)/"
        for i in range(3)
    ]
    single = env_of(sender_container(render(chart, {"rabbitmq": {"internal": {"replicas": 1}}})))
    assert single["LLMD_AMQP_URL"]["value"] == "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@$(AMQP_HOST):$(AMQP_PORT)/"
    assert env["LLMD_DATABASE_URL"]["value"].startswith(
        "postgresql+asyncpg://llmd:$(DB_PASSWORD)@llmd-llm-dispatcher-db:5432/"
    )
    (rabbit,) = of_kind(docs, "RabbitmqCluster")
    assert rabbit["metadata"]["name"] == f"{RELEASE}-llm-dispatcher-rabbitmq"


def test_the_internal_broker_is_a_three_node_cluster_with_a_disruption_budget(chart: Any) -> None:
    docs = render(chart)
    (rabbit,) = of_kind(docs, "RabbitmqCluster")
    assert rabbit["spec"]["replicas"] == 3
    pdbs = {d["metadata"]["name"]: d for d in of_kind(docs, "PodDisruptionBudget")}
    pdb = pdbs[rabbit["metadata"]["name"]]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == {  # the labels the operator gives its pods
        "app.kubernetes.io/name": rabbit["metadata"]["name"],
        "app.kubernetes.io/component": "rabbitmq",
    }
    single = render(chart, {"rabbitmq": {"internal": {"replicas": 1}}})
    assert rabbit["metadata"]["name"] not in {d["metadata"]["name"] for d in of_kind(single, "PodDisruptionBudget")}


def test_an_external_cluster_is_listed_node_by_node(chart: Any) -> None:
    values = {"rabbitmq": {"mode": "external", "external": {"hosts": ["r0.mq", "r1.mq"], "existingSecret": "mq"}}}
    env = env_of(sender_container(render(chart, values)))
    assert env["LLMD_AMQP_URL"]["value"] == (
        "amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@r0.mq:5672/,amqp://$(AMQP_USERNAME):$(AMQP_PASSWORD)@r1.mq:5672/"
    )


@pytest.mark.parametrize(
    ("value_set", "database_url", "amqp_url"),
    [
        ("external-services-postgresql",
         "postgresql+asyncpg://$(DB_USERNAME):$(DB_PASSWORD)@pg.databases.svc:5432/llmd?ssl=require",
         "amqps://$(AMQP_USERNAME):$(AMQP_PASSWORD)@rabbitmq.messaging.svc:5671/llmd"),
        ("external-services-mysql-url", {"name": "mysql-url", "key": "url"}, {"name": "amqp-url", "key": "url"}),
        ("internal-mysql", "mysql+aiomysql://llmd:$(DB_PASSWORD)@llmd-llm-dispatcher-db:3306/llm_dispatcher", None),
    ],
)  # fmt: skip
def test_database_and_broker_urls_follow_the_chosen_mode_and_type(
    chart: Any, value_set: str, database_url: Any, amqp_url: Any
) -> None:
    docs = render(chart, VALUE_SETS[value_set])
    env = env_of(sender_container(docs))
    for name, want in (("LLMD_DATABASE_URL", database_url), ("LLMD_AMQP_URL", amqp_url)):
        if isinstance(want, dict):
            assert env[name]["valueFrom"]["secretKeyRef"] == want
        elif want is not None:
            assert env[name]["value"] == want
    internal_db = [d for d in of_kind(docs, "StatefulSet") if d["metadata"]["name"].endswith("-db")]
    assert bool(internal_db) == (value_set == "internal-mysql")
    assert bool(of_kind(docs, "RabbitmqCluster")) == (value_set == "internal-mysql")


# ----------------------------------------------------------------------------------------- labels


def _selectors(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for d in docs:
        key = f"{d['kind']}/{d['metadata']['name']}"
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet", "PodDisruptionBudget"):
            out[key] = spec["selector"]["matchLabels"]
        elif d["kind"] == "Service":
            out[key] = spec["selector"]
        elif d["kind"] in ("NetworkPolicy", "ServiceMonitor"):
            out[key] = (spec.get("podSelector") or spec["selector"])["matchLabels"]
    return out


def test_selector_labels_stay_the_same_across_chart_versions_and_user_labels(chart: Any, tmp_path: Path) -> None:
    values = copy.deepcopy(VALUE_SETS["pvc-ingress-hpa-networkpolicy"])
    before = _selectors(render(chart, values))
    assert len(before) >= 8
    for labels in before.values():
        assert not {"helm.sh/chart", "app.kubernetes.io/version"} & labels.keys()
    bumped = tmp_path / "llm-dispatcher"
    shutil.copytree(CHART, bumped)
    meta = bumped / "Chart.yaml"
    meta.write_text(re.sub(r'^(version|appVersion): "?[0-9.]+"?$', r'\1: "9.9.9"', meta.read_text(), flags=re.M))
    values["commonLabels"] = {"team": "other", "cost-center": "42"}
    with helm.Chart.load(bumped) as other:
        docs = render(other, values)
        assert other.version == "9.9.9"
    assert _selectors(docs) == before
    for d in docs:  # user labels go to metadata only
        if d["kind"] in ("Deployment", "StatefulSet"):
            assert d["metadata"]["labels"]["cost-center"] == "42"
            assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()


# ---------------------------------------------------------------------------------------- hardening


@pytest.mark.parametrize("value_set", ["default", "internal-mysql"])
def test_every_container_runs_hardened(chart: Any, value_set: str) -> None:
    for doc in render(chart, VALUE_SETS[value_set]):
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(doc)
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        for c in spec["containers"]:
            where = f"{doc['metadata']['name']}/{c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert sc.get("runAsNonRoot", spec["securityContext"].get("runAsNonRoot")) is True, where


# --------------------------------------------------------------------------------------- optionals


def test_optional_objects_appear_only_when_enabled(chart: Any) -> None:
    default = render(chart)
    everything = render(chart, VALUE_SETS["pvc-ingress-hpa-networkpolicy"])
    for kind in ("Ingress", "HorizontalPodAutoscaler", "NetworkPolicy", "ServiceMonitor"):
        assert not of_kind(default, kind) and of_kind(everything, kind), kind
    (sender,) = of_kind(everything, "Deployment")
    assert "replicas" not in sender["spec"], "the HPA owns replicas"
    (ingress,) = of_kind(everything, "Ingress")
    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    for sts in model_statefulsets(everything):
        assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "cache"


def test_network_policies_let_only_the_sender_reach_vllm(chart: Any) -> None:
    docs = render(chart, VALUE_SETS["pvc-ingress-hpa-networkpolicy"])
    policies = {d["metadata"]["name"].rsplit("-", 1)[1]: d for d in of_kind(docs, "NetworkPolicy")}
    assert set(policies) == {"sender", "inference", "database", "rabbitmq"}
    sender_labels = _selectors(docs)[f"Deployment/{RELEASE}-llm-dispatcher-sender"]
    vllm_rules = [
        r for r in policies["inference"]["spec"]["ingress"] if {"port": "vllm", "protocol": "TCP"} in r["ports"]
    ]
    peers = [p for r in vllm_rules for p in r["from"] if "podSelector" in p]
    assert peers == [{"podSelector": {"matchLabels": sender_labels}}]
    assert "from" not in policies["sender"]["spec"]["ingress"][0], "the sender is the exposed service"


def test_helm_test_pod_checks_v1_models_with_the_first_seeded_token(chart: Any) -> None:
    docs = render(chart, VALUE_SETS["example"])
    (pod,) = of_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/v1/models" in script
    assert pod["spec"]["volumes"][0]["secret"]["secretName"].endswith("-tokens")


# ------------------------------------------------------------------------------------------- files


def _documented_paths(values_text: str) -> tuple[list[str], list[str]]:
    """(keys with their own `# --` comment, keys with no such comment on them or on an ancestor)."""
    commented, undocumented, stack = [], [], []  # stack: (indent, key, documented)
    comment = False
    for line in values_text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("# --", "- # --")):
            comment = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        m = re.match(r"^(\s*)(- )?([A-Za-z][\w./-]*):(.*)$", line)
        if not m:
            comment = False
            continue
        indent = len(m[1]) + (2 if m[2] else 0)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k, _ in stack] + [m[3]])
        if comment:
            commented.append(path)
        elif not any(d for _, _, d in stack) and m[4].split("#")[0].strip():  # parent maps need none
            undocumented.append(path)
        stack.append((indent, m[3], comment or any(d for _, _, d in stack)))
        comment = False
    return commented, undocumented


def test_every_value_is_documented_and_listed_in_the_docs_table() -> None:
    commented, undocumented = _documented_paths((CHART / "values.yaml").read_text())
    assert not undocumented, f"values without a `# --` comment on them or a parent: {undocumented}"
    table = set(re.findall(r"^\| `([^`]+)` \|", (ROOT / "docs" / "kubernetes.md").read_text(), re.M))
    missing = sorted(p for p in commented if not p.startswith("models.") and p not in table)
    assert not missing, f"docs/kubernetes.md values table lacks {missing}"


def test_standalone_rabbitmq_cluster_manifest_is_a_three_node_rabbitmqcluster_with_a_disruption_budget() -> None:
    doc, pdb = [d for d in yaml.safe_load_all((ROOT / "rabbitmq-cluster.yaml").read_text()) if d]
    assert (doc["apiVersion"], doc["kind"]) == ("rabbitmq.com/v1beta1", "RabbitmqCluster")
    assert doc["spec"]["replicas"] == 3 and doc["metadata"]["name"]
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == doc["metadata"]["name"]


# ------------------------------------------------------------------------------- falsy values kept


def test_a_shutdown_grace_of_zero_stays_zero_in_the_app_and_the_pod(chart: Any) -> None:
    docs = render(chart, {
        "sender": {"settings": {"shutdownGraceS": 0}},
        "consumer": {"settings": {"shutdownGraceS": 0}},
        "models": [{"name": "a", "model": "org/a"},
                   {"name": "b", "model": "org/b", "consumer": {"shutdownGraceS": 12}}],
    })  # fmt: skip
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-sender")]
    assert env_of(sender_container(docs))["LLMD_SHUTDOWN_GRACE_S"]["value"] == "0"
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == 0 + 15  # the preStop sleep and a margin
    a, b = sorted(model_statefulsets(docs), key=lambda d: d["metadata"]["name"])
    for sts, grace in ((a, 0), (b, 12)):
        assert env_of(container(sts, "consumer"))["LLMD_SHUTDOWN_GRACE_S"]["value"] == str(grace)
        assert container(sts, "vllm")["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(grace)]
        assert pod_spec(sts)["terminationGracePeriodSeconds"] == grace + 30


def test_a_shutdown_grace_left_out_is_the_services_own_default_and_fractions_round_up(chart: Any) -> None:
    docs = render(chart, {"sender": {"settings": {"shutdownGraceS": None}},
                          "consumer": {"settings": {"shutdownGraceS": 2.5}}})  # fmt: skip
    (deployment,) = [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-sender")]
    assert "LLMD_SHUTDOWN_GRACE_S" not in env_of(sender_container(docs)), "null leaves the app its own default"
    app_default = SenderSettings.model_fields["shutdown_grace_s"].default
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] == app_default + 15
    (sts,) = model_statefulsets(docs)
    assert env_of(container(sts, "consumer"))["LLMD_SHUTDOWN_GRACE_S"]["value"] == "2.5"
    assert container(sts, "vllm")["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "3"], "never shorter"
    assert ConsumerSettings.model_fields["shutdown_grace_s"].default == 30, "the chart's fallback is the app's default"


def _falsy_settings(props: dict[str, Any]) -> dict[str, Any]:
    """Every setting whose schema allows 0 (numbers) or false (booleans), set to that."""
    out: dict[str, Any] = {}
    for key, p in props.items():
        if p["type"] == "boolean":
            out[key] = False
        elif p["type"] in ("integer", "number") and p.get("minimum", 0) <= 0 and "exclusiveMinimum" not in p:
            out[key] = 0
    return out


def test_every_setting_set_to_zero_or_false_reaches_the_env_as_given(chart: Any) -> None:
    schema = chart.schema
    sender_settings = _falsy_settings(schema["properties"]["sender"]["properties"]["settings"]["properties"])
    consumer_settings = _falsy_settings(schema["$defs"]["consumerSettings"]["properties"])
    assert {"shutdownGraceS", "autoMigrate"} <= sender_settings.keys()
    assert {"shutdownGraceS", "maxWaiting", "forwardPriority", "reservedSlots"} <= consumer_settings.keys()
    docs = render(chart, {"sender": {"settings": sender_settings}, "consumer": {"settings": consumer_settings}})
    for env, settings in (
        (env_of(sender_container(docs)), sender_settings),
        (env_of(container(model_statefulsets(docs)[0], "consumer")), consumer_settings),
    ):
        for key, value in settings.items():
            name = "LLMD_" + re.sub(r"(?<!^)([A-Z])", r"_\1", key).upper()
            assert env[name]["value"] == json.dumps(value), f"{key}: {value!r} became {env[name]['value']!r}"


# ------------------------------------------------------------------------------------ common env


def test_sender_and_consumers_agree_on_the_shared_settings(chart: Any) -> None:
    docs = render(chart, {"queue": {"prefix": "team-a", "maxPriority": 5}, "logFormat": "text",
                          **VALUE_SETS["external-services-postgresql"]})  # fmt: skip
    shared = ("LLMD_HOST", "LLMD_LOG_FORMAT", "LLMD_QUEUE_PREFIX", "LLMD_MAX_PRIORITY", "LLMD_FAIR_LEVELS",
              "LLMD_AMQP_URL", "AMQP_USERNAME", "AMQP_PASSWORD")  # fmt: skip
    sender = env_of(sender_container(docs))
    assert sender["LLMD_QUEUE_PREFIX"]["value"] == "team-a" and sender["LLMD_MAX_PRIORITY"]["value"] == "5"
    for sts in model_statefulsets(docs):
        consumer = env_of(container(sts, "consumer"))
        assert {n: consumer[n] for n in shared} == {n: sender[n] for n in shared}
        assert consumer["LLMD_PORT"]["value"] == "9090" and sender["LLMD_PORT"]["value"] == "8080"


# ------------------------------------------------------------------------------ sender metrics port


def _sender_objects(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == f"{RELEASE}-llm-dispatcher-sender"]
    return found


@pytest.mark.parametrize("metrics_port", [None, 9100])
def test_the_sender_serves_metrics_on_its_own_port_which_the_service_monitor_scrapes(
    chart: Any, metrics_port: int | None
) -> None:
    values = copy.deepcopy(VALUE_SETS["pvc-ingress-hpa-networkpolicy"])
    if metrics_port is not None:
        values.setdefault("sender", {})["metricsPort"] = metrics_port
    want = metrics_port or chart.values["sender"]["metricsPort"]
    assert chart.values["sender"]["metricsPort"] == SenderSettings.model_fields["metrics_port"].default == 9464
    docs = render(chart, values)
    c = sender_container(docs)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8080, "metrics": want}
    assert env_of(c)["LLMD_METRICS_PORT"]["value"] == str(want)
    service = _sender_objects(docs, "Service")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert ports["metrics"]["port"] == want and ports["metrics"]["targetPort"] == "metrics"
    assert ports["http"]["targetPort"] == "http"
    monitor = _sender_objects(docs, "ServiceMonitor")
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics")]
    policy = _sender_objects(docs, "NetworkPolicy")
    by_port = {r["ports"][0]["port"]: r for r in policy["spec"]["ingress"]}
    assert set(by_port) == {"http", "metrics"}
    assert by_port["metrics"]["from"] == values.get("networkPolicy", {}).get(
        "metricsFrom", chart.values["networkPolicy"]["metricsFrom"]
    ), "metrics only from the monitoring peers"
    assert "from" not in by_port["http"], "the API stays open to everyone by default"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_the_ingress_never_routes_to_the_metrics_port(chart: Any, value_set: str) -> None:
    docs = render(
        chart,
        {
            **VALUE_SETS[value_set],
            "ingress": {
                "enabled": True,
                "hosts": [{"host": "a.example", "paths": [{"path": "/", "pathType": "Prefix"}]}],
            },
        },
    )
    ingresses = of_kind(docs, "Ingress")
    backends = [p["backend"]["service"] for i in ingresses for r in i["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(b["port"] == {"name": "http"} for b in backends)
    service = _sender_objects(docs, "Service")
    (http,) = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert http["targetPort"] == "http" != "metrics"


def test_a_metrics_port_equal_to_the_api_port_is_refused(chart: Any) -> None:
    with pytest.raises(helm.HelmError, match=r"sender.metricsPort must differ from sender.port"):
        chart.render(values={"sender": {"port": 9464}}, name=RELEASE, namespace=NAMESPACE)


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def test_every_sender_setting_in_the_values_defaults_to_the_apps_own_default(chart: Any) -> None:
    settings = chart.values["sender"]["settings"]
    schema = chart.schema["properties"]["sender"]["properties"]["settings"]["properties"]
    assert settings.keys() <= schema.keys(), "every setting in values.yaml is in the schema"
    assert {"batchRunner", "batchMaxWaiting", "batchPollIntervalS"} <= settings.keys()
    for key, value in settings.items():
        field = SenderSettings.model_fields[_snake(key)]
        assert value == field.default, f"{key}: the chart says {value!r}, the sender {field.default!r}"


# -------------------------------------------------------------------------- admin API and console


def _ingress_paths(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
    return {
        d["metadata"]["name"]: {p["path"] for r in d["spec"]["rules"] for p in r["http"]["paths"]}
        for d in of_kind(docs, "Ingress")
    }


def test_the_admin_api_and_console_are_off_every_ingress_by_default(chart: Any) -> None:
    paths = _ingress_paths(render(chart, {"ingress": {"enabled": True}}))
    assert list(paths.values()) == [{"/v1"}]


def test_the_console_ingress_routes_only_the_admin_api_and_console_on_its_own_host(chart: Any) -> None:
    docs = render(chart, VALUE_SETS["console-on"])
    paths = _ingress_paths(docs)
    (console,) = [d for d in of_kind(docs, "Ingress") if d["metadata"]["name"].endswith("-console")]
    assert paths[console["metadata"]["name"]] == {"/admin", "/console"}
    assert console["spec"]["rules"][0]["host"] == "llm-admin.internal.example.com"
    assert console["spec"]["ingressClassName"] == "internal-nginx"
    public = [ps for name, ps in paths.items() if name != console["metadata"]["name"]]
    assert public == [{"/v1"}], "the public Ingress still routes inference alone"


def test_the_first_admin_token_and_the_session_key_come_from_secrets(chart: Any) -> None:
    env = env_of(sender_container(render(chart, VALUE_SETS["console-on"])))
    assert env["LLMD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "llm-admin-token", "key": "token"}
    assert env["LLMD_ADMIN_TOKEN_NAME"]["value"] == "platform-admin"
    assert env["LLMD_CONSOLE_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "llm-console-session", "key": "key"}


def test_without_an_admin_secret_no_admin_token_is_seeded_and_the_chart_makes_the_session_key(chart: Any) -> None:
    docs = render(chart)
    env = env_of(sender_container(docs))
    assert "LLMD_ADMIN_TOKEN" not in env
    ref = env["LLMD_CONSOLE_SECRET"]["valueFrom"]["secretKeyRef"]
    (secret,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"] == ref["name"]]
    assert len(base64.b64decode(secret["data"][ref["key"]])) == 48
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_more_broker_priorities_than_rabbitmq_allows_are_refused(chart: Any) -> None:
    with pytest.raises(helm.HelmError, match=r"= 263, RabbitMQ allows at most 255"):
        render(chart, {"queue": {"maxPriority": 10, "fairLevels": 24}})
    render(chart, {"queue": {"maxPriority": 10, "fairLevels": 23}})


def test_tokens_in_the_values_may_carry_their_limits_and_roles(chart: Any) -> None:
    token = {"name": "team-a", "token": "x" * 24, "priority": 5, "threshold": 50, "rpm": 600, "tpm": 200000,
             "max_parallel": 8, "user_max_parallel": 2, "allowed_models": ["m"], "admin": False}  # fmt: skip
    docs = render(chart, {"tokens": [token]})
    (secret,) = [d for d in of_kind(docs, "Secret") if d["metadata"]["name"].endswith("-tokens")]
    assert json.loads(base64.b64decode(secret["data"]["tokens.json"])) == [token]
    with pytest.raises(helm.HelmError, match="rpm"):
        render(chart, {"tokens": [{**token, "rpm": 0}]})

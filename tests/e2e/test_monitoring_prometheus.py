"""The shipped dashboard and alert rules against a real Prometheus.

A local stack runs as real processes (vLLM simulator, consumer, sender); Debian's `prometheus` scrapes
their /metrics every second with a generated config (each target labelled with a `namespace`, as the
Prometheus Operator labels them in a cluster) and loads the shipped rules file. After a little load (served
requests, streamed and not; 429s over a token's threshold and over a per-key limit), every query of
`charts/llm-dispatcher/dashboards/llm-dispatcher.json` and every alert expression of
`charts/llm-dispatcher/alerts/llm-dispatcher.rules.yaml` is evaluated through `/api/v1/query`:

- a dashboard query (Grafana's variables replaced by match-all) must return at least one series;
- an alert expression must evaluate without error; in a healthy stack it returns nothing by design, so its
  comparisons against numbers are also made `bool` (`x > 10` → `x > bool 10`): that form returns one series
  per thing the alert watches, which proves every metric it reads exists with the labels it groups by.

`promtool check metrics` must also find nothing to say about the sender's and the consumer's /metrics.
Needs `prometheus` and `promtool` (`bash scripts/ensure-prometheus.sh`); skipped without them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from devstack.net import free_port
from devstack.processes import EXE, ProcessStack
from tests.fixtures.broker import AMQP_URL

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "charts" / "llm-dispatcher" / "dashboards" / "llm-dispatcher.json"
RULES = ROOT / "charts" / "llm-dispatcher" / "alerts" / "llm-dispatcher.rules.yaml"
MODEL = "mon-model"
NAMESPACE = "llmd-mon"

pytestmark = pytest.mark.skipif(
    not (shutil.which("prometheus") and shutil.which("promtool")),
    reason="no prometheus/promtool: run `bash scripts/ensure-prometheus.sh`",
)


# ------------------------------------------------------------------------------------ the expressions


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / target, PromQL) of every target of every panel, rows' panels included."""
    board = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                out.append((f"{p['title']} [{t['refId']}]", t["expr"]))

    walk(board["panels"])
    return out


def dashboard_variables() -> list[tuple[str, str, str]]:
    """(name, PromQL series selector, label) of every `label_values(selector, label)` query variable."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    for v in board["templating"]["list"]:
        if v["type"] != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q.strip())
        assert m, f"variable {v['name']}: only label_values(selector, label) queries are checked: {q}"
        out.append((v["name"], m[1], m[2]))
    return out


def alert_rules() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"] if "alert" in r]


def grafana_to_promql(expr: str) -> str:
    """Grafana's template variables as a dashboard showing "All" gives them to Prometheus."""
    expr = re.sub(r"\$(namespace|model|replica)\b|\$\{(namespace|model|replica)\}", ".*", expr)
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s")


def as_bool(expr: str) -> str:
    """Every comparison against a number made a `bool` one: the expression then keeps all its series."""
    number = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
    return re.sub(rf"(==|!=|>=|<=|>|<)(\s*)({number})(?![\w.])", r"\1 bool\2\3", expr)


def test_as_bool_rewrites_only_comparisons_with_numbers() -> None:
    assert as_bool('max(x{a!="1"}) < 1') == 'max(x{a!="1"}) < bool 1'
    assert as_bool("rate(y[5m]) / z > 0.05 and z > 1e-1") == "rate(y[5m]) / z > bool 0.05 and z > bool 1e-1"
    assert as_bool("a >= 10") == "a >= bool 10"


# -------------------------------------------------------------------------------------------- the stack


class Prometheus:
    def __init__(self, workdir: Path, targets: dict[str, list[str]]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [
                        {"targets": [t.removeprefix("http://")], "labels": {"namespace": NAMESPACE}} for t in urls
                    ],
                }
                for job, urls in targets.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = (workdir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {Path(self.log.name).read_text()[-2000:]}"
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError("prometheus never became ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}\n→ {r.status_code} {body}"
        return body["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def create_token(stack: ProcessStack, name: str, *args: str) -> str:
    out = subprocess.run(
        [*EXE, "tokens", "create", name, "--quiet", *args], env=stack.env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def chat(url: str, token: str, *, stream: bool = False, max_tokens: int = 8) -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    r = httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}, timeout=30)
    return r.status_code


def run_one_line_batch(url: str, token: str) -> None:
    """A batch of one line, to completion (the batch-progress panel's series)."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
    line = {"custom_id": "one", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}  # fmt: skip
    upload = client.files.create(file=("one.jsonl", json.dumps(line).encode() + b"\n"), purpose="batch")
    batch = client.batches.create(input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 30
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.monotonic() < deadline, f"the batch is still {batch.status}"
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessStack, Prometheus]]:
    workdir = tmp_path_factory.mktemp("monitoring")
    stack = ProcessStack(str(workdir), model=MODEL)
    stack.env["LLMD_AMQP_URL"] = AMQP_URL
    stack.env["LLMD_HEARTBEAT_INTERVAL_S"] = "0.5"
    prometheus = None
    try:
        sim = stack.start_sim(["--itl-base", "0.005"])
        stack.start_consumer(sim)
        stack.start_sender()
        prometheus = Prometheus(
            workdir,
            {
                "llm-dispatcher-sender": [stack.metrics_url],
                "llm-dispatcher-consumer": [c.url for c in stack.consumers],  # type: ignore[attr-defined]
                "vllm": stack.sim_urls,
            },
        )
        prometheus.wait_ready()
        served = create_token(stack, "served", "--priority", "5", "--threshold", "1000")
        shed = create_token(stack, "shed", "--priority", "1", "--threshold", "0")  # the queue always holds >= 0
        limited = create_token(stack, "limited", "--priority", "3", "--threshold", "1000", "--rpm", "1")
        stack.wait_live(served)
        statuses = [chat(stack.url, served, stream=i % 2 == 0) for i in range(12)]
        statuses += [chat(stack.url, shed) for _ in range(3)] + [chat(stack.url, limited) for _ in range(3)]
        assert statuses.count(200) == 13 and statuses.count(429) == 5, statuses
        run_one_line_batch(stack.url, served)
        # Two scrapes at least after the load, so that every rate() has its two samples.
        deadline = time.monotonic() + 30
        while not prometheus.query("count_over_time(llmd_refusals_total[1m]) >= 3"):
            assert time.monotonic() < deadline, "prometheus never scraped the sender's refusals"
            time.sleep(0.5)
        yield stack, prometheus
    finally:
        if prometheus is not None:
            prometheus.stop()
        stack.stop()


# ---------------------------------------------------------------------------------------------- tests


def test_prometheus_scrapes_every_target_and_loads_every_rule(monitored) -> None:
    _, prom = monitored
    targets = httpx.get(prom.url + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
    assert {t["labels"]["job"]: t["health"] for t in targets} == {
        "llm-dispatcher-sender": "up",
        "llm-dispatcher-consumer": "up",
        "vllm": "up",
    }, targets
    groups = httpx.get(prom.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"]}
    assert sorted(rules) == sorted(name for name, _ in alert_rules())
    unhealthy = {n: r.get("lastError") for n, r in rules.items() if r["health"] != "ok"}
    assert not unhealthy, unhealthy


@pytest.mark.parametrize(("panel", "expr"), dashboard_queries(), ids=[p for p, _ in dashboard_queries()])
def test_every_dashboard_query_returns_series(monitored, panel: str, expr: str) -> None:
    _, prom = monitored
    result = prom.query(grafana_to_promql(expr))
    assert result, f"panel {panel!r}: no series for {grafana_to_promql(expr)}"


@pytest.mark.parametrize(
    ("name", "selector", "label"), dashboard_variables(), ids=[v[0] for v in dashboard_variables()]
)
def test_every_dashboard_variable_finds_values(monitored, name: str, selector: str, label: str) -> None:
    _, prom = monitored
    values = {s["metric"].get(label) for s in prom.query(grafana_to_promql(selector))} - {None}
    expected = {"namespace": NAMESPACE, "model": MODEL, "replica": "r0"}[name]
    assert expected in values, f"variable {name}: {values}"


@pytest.mark.parametrize(("alert", "expr"), alert_rules(), ids=[a for a, _ in alert_rules()])
def test_every_alert_expression_evaluates_and_watches_existing_series(monitored, alert: str, expr: str) -> None:
    _, prom = monitored
    firing = prom.query(expr)  # errors fail here
    assert not firing, f"{alert} fires in a healthy stack: {firing}"
    watched = prom.query(as_bool(expr))
    assert watched, f"{alert}: no series behind {as_bool(expr)}"
    assert all(s["metric"].get("namespace") == NAMESPACE for s in watched), watched


@pytest.mark.parametrize("service", ["sender", "consumer"])
def test_promtool_check_metrics_is_clean_on_the_services_metrics(monitored, service: str) -> None:
    stack, _ = monitored
    url = stack.metrics_url if service == "sender" else stack.consumers[0].url  # type: ignore[attr-defined]
    text = httpx.get(url + "/metrics", timeout=10).text
    assert "llmd_" in text
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), out.stdout + out.stderr

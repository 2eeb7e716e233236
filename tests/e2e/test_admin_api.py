"""The admin API (/admin/v1) end to end over real sockets: tokens (create, list with pages, get,
update, revoke), usage aggregates and records (JSON and CSV), on SQLite, PostgreSQL and MariaDB;
who may call it (admin / other token / none), errors in OpenAI's shape with the field at fault, the
log line of every call, and inference rights on /v1."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

MODEL = "sim-model"


class Admin:
    """A stack with an admin token, and calls to the admin API with it."""

    def __init__(self, stack, token: str):
        self.stack = stack
        self.token = token
        self.http = httpx.Client(base_url=stack.url, headers={"authorization": f"Bearer {token}"}, timeout=30)

    def __getattr__(self, method: str):
        return getattr(self.http, method)


@pytest.fixture
def admin(stack_factory, database_url):
    """An admin token on a stack over each database (no replica: the token and usage routes need none)."""
    s = stack_factory(database_url=database_url)
    a = Admin(s, s.create_token("root", admin=True, inference=False))
    yield a
    a.http.close()


@pytest.fixture
def live(stack_factory):
    """An admin token and an ordinary one on a stack (SQLite) with a simulator behind one consumer."""
    s = stack_factory(heartbeat_ttl_s=5.0)  # a replica stays live through a busy machine's pauses
    s.add_consumer(MODEL, s.add_sim(model=MODEL), max_concurrency=3)
    a = Admin(s, s.create_token("root", admin=True, inference=False))
    a.user = s.create_token("user", priority=5, threshold=100)
    s.wait_models({MODEL}, a.user)
    yield a
    a.http.close()
    s.wait_idle()


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def chat(stack, token: str, **body) -> httpx.Response:
    return httpx.post(
        stack.base_url + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **body},
        headers={"authorization": f"Bearer {token}"},
        timeout=30,
    )


# -- tokens, on every database ---------------------------------------------------------------------
def test_a_token_created_through_the_api_is_shown_once_works_and_is_gone_when_revoked(admin):
    r = admin.post(
        "/admin/v1/tokens",
        json={"name": "team-a", "priority": 4, "threshold": 50, "allowed_models": [MODEL], "batch_priority": 1},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    key, token = created["key"], created["token"]
    assert key.startswith("sk-llmd-")
    assert token["name"] == "team-a" and token["priority"] == 4 and token["threshold"] == 50
    assert token["allowed_models"] == [MODEL] and token["batch_priority"] == 1
    assert token["status"] == "active" and token["enabled"] and token["inference"] and not token["admin"]
    assert "key" not in admin.get("/admin/v1/tokens/team-a").json()  # never shown again
    assert key not in admin.get("/admin/v1/tokens").text
    user = {"authorization": f"Bearer {key}"}
    assert httpx.get(admin.stack.base_url + "/models", headers=user).status_code == 200

    r = admin.patch("/admin/v1/tokens/team-a", json={"priority": 2, "allowed_models": None, "expires_at": "2099-01-01"})
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["priority"] == 2 and changed["allowed_models"] is None
    assert changed["expires_at"] == "2099-01-01T00:00:00Z" and changed["threshold"] == 50  # the rest kept
    assert admin.get("/admin/v1/tokens/team-a").json() == changed

    r = admin.delete("/admin/v1/tokens/team-a")
    assert r.status_code == 200 and r.json()["status"] == "revoked" and r.json()["enabled"] is False
    error = error_of(httpx.get(admin.stack.base_url + "/models", headers=user), 401)
    assert error["code"] == "invalid_api_key"
    names = [t["name"] for t in admin.get("/admin/v1/tokens").json()["data"]]
    assert "team-a" in names  # revoked, still listed

    r = admin.patch("/admin/v1/tokens/team-a", json={"enabled": True})
    assert r.json()["status"] == "active"
    assert httpx.get(admin.stack.base_url + "/models", headers=user).status_code == 200


def test_an_admin_token_made_through_the_api_has_no_inference_rights_unless_given(admin):
    r = admin.post("/admin/v1/tokens", json={"name": "ops", "admin": True})
    assert r.status_code == 201, r.text
    ops = r.json()
    assert ops["token"]["admin"] and not ops["token"]["inference"] and ops["token"]["priority"] == 0
    headers = {"authorization": f"Bearer {ops['key']}"}
    assert httpx.get(admin.stack.url + "/admin/v1/tokens", headers=headers).status_code == 200
    error = error_of(httpx.get(admin.stack.base_url + "/models", headers=headers), 403)
    assert error["code"] == "permission_denied"

    both = admin.post(
        "/admin/v1/tokens",
        json={"name": "ops-and-chat", "admin": True, "inference": True, "priority": 1, "threshold": 9},
    ).json()
    assert both["token"]["admin"] and both["token"]["inference"]
    headers = {"authorization": f"Bearer {both['key']}"}
    assert httpx.get(admin.stack.base_url + "/models", headers=headers).status_code == 200
    assert httpx.get(admin.stack.url + "/admin/v1/models", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": "bad name!", "priority": 1, "threshold": 1}, "name"),
        ({"name": "t", "priority": -1, "threshold": 1}, "priority"),
        ({"name": "t", "priority": "high", "threshold": 1}, "priority"),
        ({"name": "t", "priority": 1}, "threshold"),
        ({"name": "t", "priority": 1, "threshold": 1, "allowed_models": []}, "allowed_models"),
        ({"name": "t", "priority": 1, "threshold": 1, "expires_at": "next tuesday"}, "expires_at"),
        ({"name": "t", "priority": 1, "threshold": 1, "admin": "yes"}, "admin"),
        ({"name": "t", "priority": 1, "threshold": 1, "colour": "red"}, "colour"),
        ({"priority": 1, "threshold": 1}, "name"),
    ],
    ids=["name", "negative", "string", "missing-threshold", "no-models", "expiry", "admin-type", "unknown", "no-name"],
)
def test_a_bad_token_field_is_a_400_naming_it(admin, body, param):
    error = error_of(admin.post("/admin/v1/tokens", json=body), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert admin.get("/admin/v1/tokens").json()["data"][0]["name"] == "root"  # nothing created


def test_a_duplicate_name_is_409_and_an_unknown_token_404(admin):
    body = {"name": "dup", "priority": 1, "threshold": 1}
    assert admin.post("/admin/v1/tokens", json=body).status_code == 201
    assert error_of(admin.post("/admin/v1/tokens", json=body), 409)["param"] == "name"
    for r in (
        admin.get("/admin/v1/tokens/nobody"),
        admin.patch("/admin/v1/tokens/nobody", json={"priority": 1}),
        admin.delete("/admin/v1/tokens/nobody"),
    ):
        assert error_of(r, 404)["code"] == "not_found"
    assert error_of(admin.patch("/admin/v1/tokens/dup", json={"priority": None}), 400)["param"] == "priority"
    assert error_of(admin.patch("/admin/v1/tokens/dup", json={"threshold": -3}), 400)["param"] == "threshold"
    assert error_of(admin.patch("/admin/v1/tokens/dup", json={"name": "x"}), 400)["param"] == "name"
    assert error_of(admin.post("/admin/v1/tokens", content=b"{not json"), 400)["type"] == "invalid_request_error"


def test_tokens_are_listed_in_pages_by_name(admin):
    for i in range(5):
        assert admin.post("/admin/v1/tokens", json={"name": f"p{i}", "priority": 1, "threshold": 1}).status_code == 201
    seen, after, pages = [], None, 0
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = admin.get("/admin/v1/tokens", params=params).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [t["name"] for t in page["data"]]
        after, pages = page["last_id"], pages + 1
        if not page["has_more"]:
            break
    assert seen == ["p0", "p1", "p2", "p3", "p4", "root"] and pages == 3
    assert admin.get("/admin/v1/tokens", params={"after": "root"}).json() == {
        "object": "list",
        "data": [],
        "has_more": False,
        "last_id": None,
    }
    for bad in ("0", "101", "ten"):
        assert error_of(admin.get("/admin/v1/tokens", params={"limit": bad}), 400)["param"] == "limit"


# -- who may call it ------------------------------------------------------------------------------
ENDPOINTS = [
    ("GET", "/admin/v1/tokens"),
    ("POST", "/admin/v1/tokens"),
    ("GET", "/admin/v1/tokens/root"),
    ("PATCH", "/admin/v1/tokens/root"),
    ("DELETE", "/admin/v1/tokens/root"),
    ("GET", "/admin/v1/usage"),
    ("GET", "/admin/v1/usage/records"),
    ("GET", "/admin/v1/models"),
    ("GET", "/admin/v1/queues"),
    ("GET", "/admin/v1/openapi.json"),
]


def test_every_admin_endpoint_refuses_no_token_a_bad_one_and_a_non_admin_one(stack_factory):
    s = stack_factory()
    s.create_token("root", admin=True, inference=False)
    user = s.create_token("user", priority=5, threshold=10)
    revoked = s.create_token("gone", admin=True, inference=False)
    expired = s.create_token("old", admin=True, inference=False, expires_at="2001-01-01")
    s.bg.call(s.ctx.store.update_token("gone", enabled=False))
    with httpx.Client(base_url=s.url) as http:
        for method, path in ENDPOINTS:
            body = {"json": {"priority": 1}} if method in ("POST", "PATCH") else {}
            what = f"{method} {path}"
            assert error_of(http.request(method, path, **body), 401)["code"] == "invalid_api_key", what
            for bad in ("sk-llmd-nope", revoked, expired):
                r = http.request(method, path, headers={"authorization": f"Bearer {bad}"}, **body)
                assert error_of(r, 401)["type"] == "authentication_error", what
            r = http.request(method, path, headers={"authorization": f"Bearer {user}"}, **body)
            error = error_of(r, 403)
            assert error["code"] == "permission_denied" and error["type"] == "invalid_request_error", what
        assert http.get("/admin/v1/tokens/root", headers={"authorization": "Basic abc"}).status_code == 401
    # nothing was changed by the refused calls
    assert s.bg.call(s.ctx.store.get_token("root")).enabled


def test_every_admin_call_is_logged_with_the_admins_name_never_the_token(stack_factory, caplog):
    s = stack_factory()
    root = s.create_token("root", admin=True, inference=False)
    user = s.create_token("user", priority=5, threshold=10)
    with caplog.at_level(logging.INFO, logger="sender.admin"), httpx.Client(base_url=s.url) as http:
        http.get("/admin/v1/tokens", headers={"authorization": f"Bearer {root}"})
        http.patch("/admin/v1/tokens/user", json={"priority": -1}, headers={"authorization": f"Bearer {root}"})
        http.get("/admin/v1/queues", headers={"authorization": f"Bearer {user}"})
        http.get("/admin/v1/models")
    lines = [r.getMessage() for r in caplog.records if r.name == "sender.admin"]
    assert len(lines) == 4, lines
    assert lines[0].startswith("admin root: GET /admin/v1/tokens -> 200")
    assert lines[1].startswith("admin root: PATCH /admin/v1/tokens/user -> 400")
    assert lines[2].startswith("admin user: GET /admin/v1/queues -> 403")
    assert lines[3].startswith("admin -: GET /admin/v1/models -> 401")
    assert [getattr(r, "admin", None) for r in caplog.records if r.name == "sender.admin"] == [
        "root",
        "root",
        "user",
        "-",
    ], "the name is a field of its own in the JSON log too"
    assert not any(root in line or user in line for line in caplog.text.splitlines())


# -- inference rights on /v1 ----------------------------------------------------------------------
def test_an_admin_only_token_gets_403_on_every_v1_route(live):
    headers = {"authorization": f"Bearer {live.token}"}
    v1 = live.stack.base_url
    calls = [
        httpx.get(v1 + "/models", headers=headers),
        httpx.get(v1 + f"/models/{MODEL}", headers=headers),
        chat(live.stack, live.token),
        chat(live.stack, live.token, stream=True),
        httpx.post(v1 + "/completions", json={"model": MODEL, "prompt": "x"}, headers=headers),
        httpx.post(v1 + "/embeddings", json={"model": MODEL, "input": "x"}, headers=headers),
        httpx.get(v1 + "/files", headers=headers),
        httpx.post(v1 + "/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "batch"}, headers=headers),
        httpx.get(v1 + "/batches", headers=headers),
        httpx.post(
            v1 + "/batches",
            json={"input_file_id": "f", "endpoint": "/v1/chat/completions", "completion_window": "24h"},
            headers=headers,
        ),
    ]
    for r in calls:
        error = error_of(r, 403)
        assert error["code"] == "permission_denied", (r.request.method, r.request.url)
    r = chat(live.stack, live.user)
    assert r.status_code == 200, r.text  # an ordinary token still chats


# -- live state -----------------------------------------------------------------------------------
def test_models_show_the_simulators_replica_live_with_its_load(live):
    deadline = time.monotonic() + 10
    while True:  # the consumer's tokens/s needs two scrapes after a request
        assert chat(live.stack, live.user).status_code == 200
        time.sleep(0.2)  # the lease is released after the response (batched, within a few ms)
        data = live.get("/admin/v1/models").json()["data"]
        replica = data[0]["replicas"][0] if data and data[0]["replicas"] else {}
        settled = replica.get("tokens_per_second") is not None and replica.get("in_flight") == 0
        if settled or time.monotonic() > deadline:
            break
    assert [m["model"] for m in data] == [MODEL] and data[0]["queue_depth"] == 0
    assert replica["replica"] == live.stack.consumers[0].settings.replica_id
    assert replica["ready"] is True and replica["max_concurrency"] == 3 and replica["in_flight"] == 0
    assert replica["url"].startswith("http://")
    assert 0 <= replica["heartbeat_age_s"] < 2
    assert replica["admission"] == "admit"
    assert replica["tokens_per_second"] is not None and replica["tokens_per_second"] >= 0
    assert {"running", "waiting", "kv_cache_usage"} <= set(replica)


def test_queues_show_depth_capacity_and_refusals_by_reason(live):
    busy = live.stack.create_token("busy", priority=5, threshold=0)  # every request over its threshold
    assert chat(live.stack, busy).status_code == 429
    assert chat(live.stack, busy).status_code == 429
    assert chat(live.stack, "sk-llmd-unknown").status_code == 401
    assert chat(live.stack, live.user, model="no-such-model").status_code == 404
    q = live.get("/admin/v1/queues", params={"minutes": 2}).json()
    assert q["window_s"] == 120
    (row,) = q["data"]
    assert row["model"] == MODEL and row["queue_depth"] == 0
    assert row["capacity"] == 3 and row["in_flight"] == 0 and row["replicas_ready"] == 1
    assert row["refusals"] == {"queue_over_threshold": 2}
    assert row["admission"] == {live.stack.consumers[0].settings.replica_id: "admit"}
    assert q["other_refusals"] == {"invalid_api_key": 1, "model_not_found": 1}
    for bad in ("0", "16", "x"):
        assert error_of(live.get("/admin/v1/queues", params={"minutes": bad}), 400)["param"] == "minutes"


# -- OpenAPI --------------------------------------------------------------------------------------
def test_the_admin_routes_are_in_the_schema_and_their_own_schema_is_for_admins(live):
    full = live.stack.app.openapi()
    own = live.get("/admin/v1/openapi.json").json()
    paths = {
        "/admin/v1/tokens",
        "/admin/v1/tokens/{name}",
        "/admin/v1/usage",
        "/admin/v1/usage/records",
        "/admin/v1/models",
        "/admin/v1/queues",
    }
    assert paths <= set(full["paths"]) and set(own["paths"]) == paths
    post = own["paths"]["/admin/v1/tokens"]["post"]
    assert post["summary"] and set(post["responses"]) >= {"201", "400", "401", "403", "409"}
    assert "name" in post["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert {"Token", "TokenCreated", "UsageAggregate", "QueuesState", "ErrorBody"} <= set(own["components"]["schemas"])
    assert own["components"]["securitySchemes"]["AdminToken"]["scheme"] == "bearer"
    user = {"authorization": f"Bearer {live.user}"}
    assert error_of(httpx.get(live.stack.url + "/admin/v1/openapi.json", headers=user), 403)


def test_the_console_session_opens_the_admin_api_and_a_change_needs_the_console_header_from_this_origin(
    stack_factory,
):
    s = stack_factory()
    root = s.create_token("root", admin=True, inference=False)
    with httpx.Client(base_url=s.url) as browser:
        r = browser.post("/console/login", json={"token": root}, headers={"x-llmd-console": "1"})
        assert r.status_code == 200, r.text
        assert browser.get("/admin/v1/tokens").status_code == 200  # the cookie alone
        body = {"name": "made-in-console", "priority": 1, "threshold": 1}
        assert error_of(browser.post("/admin/v1/tokens", json=body), 403)["code"] == "permission_denied"
        hostile = {"x-llmd-console": "1", "origin": "http://evil.example"}
        assert error_of(browser.post("/admin/v1/tokens", json=body, headers=hostile), 403)
        assert error_of(browser.delete("/admin/v1/tokens/root"), 403)
        own = {"x-llmd-console": "1", "origin": s.url}
        assert browser.post("/admin/v1/tokens", json=body, headers=own).status_code == 201
        assert (
            browser.post(
                "/admin/v1/tokens", json=body | {"name": "no-origin"}, headers={"x-llmd-console": "1"}
            ).status_code
            == 201
        )
        s.bg.call(s.ctx.store.update_token("root", enabled=False))  # revoked: the session is over
        assert error_of(browser.get("/admin/v1/tokens"), 401)

"""The web console in a real browser: sign in, every page with live data from the simulator's stack,
a key created and revoked on the Keys page and used in between by the official `openai` client; and
what may not happen: a non-admin signing in, a page without a session, a token left in the page."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.browser.conftest import MODEL

PAGES = ("models", "playground", "keys", "usage", "queues")
LOAD = 24  # concurrent streams on the Queues page, more than the replica's 16


def stream_chat(stack, max_tokens: int) -> int:
    client = openai.OpenAI(base_url=stack.base_url, api_key=stack.alice, max_retries=0)
    chunks = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "load"}], max_tokens=max_tokens, stream=True
    )
    return sum(1 for c in chunks if c.choices and c.choices[0].delta.content)


def wait_records(stack, admin: str, n: int, timeout: float = 10) -> None:
    """The usage records are written in batches: wait until the admin API shows `n`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(stack.url + "/admin/v1/usage/records", headers={"authorization": f"Bearer {admin}"})
        if r.status_code == 200 and len(r.json()["data"]) >= n:
            return
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {n} usage records after {timeout} s")


def sign_in(page, stack, token: str, shots=None) -> None:
    page.goto(stack.url + "/console/")
    page.wait_for_url("**/console/login")
    if shots is not None:
        shots(page, "login")
    page.fill("#token", token)
    page.click("#signin button[type=submit]")


def no_secret_in_page(page, *secrets: str) -> None:
    """Neither the URL, the HTML, nor any field's value, script variable aside, holds a secret."""
    html = page.content()
    values = page.eval_on_selector_all("input, textarea", "els => els.map(e => e.value).join('\\n')")
    for secret in secrets:
        assert secret not in page.url
        assert secret not in html
        assert secret not in values


def test_an_operator_walks_through_every_page(console_stack, page, shots):
    s = console_stack
    sign_in(page, s, s.admin, shots)
    page.wait_for_url("**/console/models")

    # Models: the simulator's model and its replica, live.
    card = page.locator(f'section.model[data-model="{MODEL}"]')
    card.locator("text=1 live").wait_for()
    assert card.locator(f'tr[data-replica="{MODEL}-0"]').count() == 1
    assert "ready" in card.locator(f'tr[data-replica="{MODEL}-0"]').inner_text()
    page.locator("#who", has_text="signed in as admin").wait_for()
    no_secret_in_page(page, s.admin)
    shots(page, "models")

    # Playground: a streamed chat with alice's key, pasted into the page; TTFT and tokens/s shown.
    page.click('nav a[href="/console/playground"]')
    page.wait_for_url("**/console/playground")
    page.locator(f'#model option[value="{MODEL}"]').wait_for(state="attached")
    page.fill("#api-key", s.alice)
    page.fill("#max-tokens", "24")
    page.fill("#prompt", "Say hello to the operator.")
    page.click("#send")
    page.locator("#stat-ttft").filter(has_text=re.compile(r"\d")).wait_for()
    answer = page.locator(".msg.assistant .text").first
    page.locator("#stat-tps").filter(has_text=re.compile(r"\d")).wait_for()
    assert answer.inner_text().strip()
    assert page.locator("#stat-tokens").inner_text() == "24"
    assert re.fullmatch(r"\d+ ms|[\d.]+ s", page.locator("#stat-ttft").inner_text())
    assert s.alice not in page.content()  # the pasted key is in the field (page memory), not the document
    shots(page, "playground")

    # Keys: create one (its value shown once), use it from the openai client, revoke it: 401.
    page.click('nav a[href="/console/keys"]')
    page.wait_for_url("**/console/keys")
    page.locator('#keys tr[data-name="alice"]').wait_for()
    form = page.locator("#create-key")
    form.locator('input[name="name"]').fill("bob")
    form.locator('input[name="priority"]').fill("3")
    form.locator('input[name="threshold"]').fill("50")
    form.locator('input[name="allowed_models"]').fill(MODEL)
    form.locator("button[type=submit]").click()
    page.locator("#new-key:not([hidden])").wait_for()
    key = page.input_value("#new-key-value")
    assert key.startswith("sk-llmd-")
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=s.url)
    page.click("#copy-key")
    page.locator("#copy-status", has_text=re.compile("Copied|Selected")).wait_for()
    shots(page, "keys-new-key")
    row = page.locator('#keys tr[data-name="bob"]')
    assert row.get_attribute("data-status") == "active"
    assert MODEL in row.inner_text()

    client = openai.OpenAI(base_url=s.base_url, api_key=key, max_retries=0)
    reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.usage.completion_tokens == 4

    # Edit: a lower priority, saved through the dialog.
    row.locator("button", has_text="Edit").click()
    page.locator("#edit-dialog[open]").wait_for()
    page.fill('#edit-key input[name="priority"]', "2")
    page.click('#edit-key button[value="save"]')
    page.locator("#edit-dialog[open]").wait_for(state="detached")
    assert row.locator("td").nth(3).inner_text() == "2"

    page.click("#dismiss-key")
    assert page.input_value("#new-key-value") == ""
    no_secret_in_page(page, s.admin, key)
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button[data-revoke]").click()
    page.locator('#keys tr[data-name="bob"][data-status="revoked"]').wait_for()
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    shots(page, "keys")

    # Usage: the new requests (alice's chat, bob's request and his refused one), charts drawn, CSV link.
    s.usage_rows(3)
    page.click('nav a[href="/console/usage"]')
    page.wait_for_url("**/console/usage")
    page.locator('#records tr[data-token="bob"]').first.wait_for()
    page.locator('#records tr[data-token="alice"]').first.wait_for()
    table = page.locator(f'#usage-table tr[data-token="alice"][data-model="{MODEL}"]')
    table.wait_for()
    assert table.locator("td").nth(2).inner_text() == "1"
    page.locator("#chart-requests canvas").wait_for()
    page.locator("#chart-tokens canvas").wait_for()
    page.locator("#chart-latency canvas").wait_for()
    csv_href = page.get_attribute("#csv", "href")
    assert csv_href.startswith("/admin/v1/usage?") and "format=csv" in csv_href
    with page.expect_download() as download:
        page.click("#csv")
    assert download.value.path().read_text().splitlines()[0].startswith(("token", "day", "hour", "model"))
    shots(page, "usage")

    # Queues: under load (more streams than the replica's capacity), the depth and in-flight, live.
    page.click('nav a[href="/console/queues"]')
    page.wait_for_url("**/console/queues")
    queue = page.locator(f'section.queue[data-model="{MODEL}"]')
    queue.wait_for()
    assert queue.locator(".depth").inner_text() == "0"
    with ThreadPoolExecutor(LOAD) as pool:
        streams = [pool.submit(stream_chat, s, max_tokens=200) for _ in range(LOAD)]
        queue.locator(".meter-text", has_text="16 / 16 in flight").wait_for()
        queue.locator(".depth", has_text=re.compile(r"^[1-9]")).wait_for()  # the streams beyond capacity wait
        page.wait_for_timeout(2100)  # one more refresh: the chart has a line
        shots(page, "queues")
        assert all(f.result(timeout=60) == 200 for f in streams)
    queue.locator(".meter-text", has_text="0 / 16 in flight").wait_for()
    assert queue.locator('tr[data-replica="sim-model-0"]').count() == 1  # its admission decision

    no_secret_in_page(page, s.admin, s.alice, key)
    assert not page.problems, page.problems  # no script error, no CSP violation, no failed call

    # Signing out ends the session: the pages send back to sign-in.
    page.click("#logout")
    page.wait_for_url("**/console/login")
    page.goto(s.url + "/console/keys")
    page.wait_for_url("**/console/login")


def test_a_token_without_the_admin_role_cannot_sign_in(stack_factory, page, shots):
    s = stack_factory()
    alice = s.create_token("alice")
    sign_in(page, s, alice)
    page.locator("#signin-error .error", has_text="no admin role").wait_for()
    assert page.url.endswith("/console/login")
    assert page.context.cookies() == []
    shots(page, "login-refused")
    r = httpx.post(s.url + "/console/login", json={"token": alice}, headers={"x-llmd-console": "1"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"
    assert "set-cookie" not in r.headers
    r = httpx.post(s.url + "/console/login", json={"token": "sk-llmd-nope"}, headers={"x-llmd-console": "1"})
    assert r.status_code == 401


def test_nothing_is_readable_without_a_session(stack_factory, page):
    s = stack_factory()
    for name in (*PAGES, "", "anything/else"):
        r = httpx.get(f"{s.url}/console/{name}", follow_redirects=False)
        assert r.status_code == 303, name
        assert r.headers["location"] == "/console/login"
    assert httpx.get(s.url + "/console/session").status_code == 401
    assert httpx.get(s.url + "/admin/v1/tokens").status_code == 401
    forged = {"llmd_console": "eyJpIjoxLCJoIjoiYWJjIiwiZSI6OTk5OTk5OTk5OX0.bm9wZQ"}
    assert httpx.get(s.url + "/console/models", cookies=forged, follow_redirects=False).status_code == 303
    page.goto(s.url + "/console/usage")
    page.wait_for_url("**/console/login")
    assert page.locator("#token").is_visible()


def test_headers_cookie_and_csrf_rule(stack_factory):
    s = stack_factory()
    admin = s.create_token("admin", admin=True, inference=False)
    for path in ("/console/login", "/console/static/common.js", "/console/nothing-here"):
        r = httpx.get(s.url + path, follow_redirects=False)
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"
    login = httpx.get(s.url + "/console/login").text
    assert "<script>" not in login and "style=" not in login  # nothing inline for the CSP to allow

    with httpx.Client(base_url=s.url) as browser_like:
        r = browser_like.post("/console/login", json={"token": admin}, headers={"x-llmd-console": "1"})
        assert r.status_code == 200
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert admin not in cookie
        assert browser_like.get("/console/models").status_code == 200
        assert admin not in browser_like.get("/console/models").text
        # A state-changing call with the cookie alone (what a cross-site form could send) is refused,
        # so is one from another origin; the console's own call (with its header) goes through.
        body = {"name": "carol", "priority": 1, "threshold": 10}
        r = browser_like.post("/admin/v1/tokens", json=body)
        assert r.status_code == 403, r.text
        r = browser_like.post(
            "/admin/v1/tokens", json=body, headers={"x-llmd-console": "1", "origin": "https://evil.example"}
        )
        assert r.status_code == 403, r.text
        r = browser_like.post("/admin/v1/tokens", json=body, headers={"x-llmd-console": "1", "origin": s.url})
        assert r.status_code == 201, r.text
        # A sign-in form posted from another site is refused too.
        r = browser_like.post("/console/login", data={"token": admin}, headers={"origin": "https://evil.example"})
        assert r.status_code == 403
        assert browser_like.post("/console/logout", headers={"x-llmd-console": "1"}).status_code == 204
        assert "llmd_console" not in browser_like.cookies

        # Over https (the ingress says so), the cookie is Secure too.
        r = browser_like.post(
            "/console/login", json={"token": admin}, headers={"x-llmd-console": "1", "x-forwarded-proto": "https"}
        )
        assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]


def test_a_revoked_admin_is_signed_out(stack_factory):
    s = stack_factory()
    admin = s.create_token("admin", admin=True, inference=False)
    with httpx.Client(base_url=s.url) as browser_like:
        assert browser_like.post("/console/login", json={"token": admin}, headers={"x-llmd-console": "1"}).is_success
        assert browser_like.get("/console/session").json()["name"] == "admin"
        s.bg.call(s.ctx.store.update_token("admin", enabled=False))
        assert browser_like.get("/console/models", follow_redirects=False).headers["location"] == "/console/login"
        assert browser_like.get("/admin/v1/tokens").status_code == 401
        s.bg.call(s.ctx.store.update_token("admin", enabled=True, admin=False))  # demoted: out as well
        assert browser_like.get("/console/session").status_code == 401


def test_usage_on_every_database(stack_factory, browser_database_url, page, shots):
    """The Usage page on each backend: percentiles where the database computes them (PostgreSQL), means elsewhere."""
    s = stack_factory(database_url=browser_database_url, usage_flush_interval_s=0.1)
    upstream = s.add_sim(model=MODEL, served_model_names=[MODEL])
    s.add_consumer(MODEL, upstream)
    admin = s.create_token("admin", admin=True, inference=False)
    alice = s.create_token("alice")
    s.wait_models({MODEL}, alice)
    client = openai.OpenAI(base_url=s.base_url, api_key=alice, max_retries=0)
    for _ in range(3):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    wait_records(s, admin, 3)
    sign_in(page, s, admin)
    page.wait_for_url("**/console/models")
    page.goto(s.url + "/console/usage")
    row = page.locator(f'#usage-table tr[data-token="alice"][data-model="{MODEL}"]')
    row.wait_for()
    assert row.locator("td").nth(2).inner_text() == "3"
    assert page.locator("#records tbody tr").count() == 3
    page.locator("#chart-latency canvas").wait_for()
    percentiles = browser_database_url.startswith("postgresql")
    title = page.locator("#latency-title").inner_text()
    assert title == ("Latency (p50 / p95)" if percentiles else "Latency (means)")
    assert (" / " in row.locator("td").nth(8).inner_text()) is percentiles  # TTFT p50 / p95, else mean (max)
    shots(page, "usage")
    assert not page.problems, page.problems
    s.wait_idle()

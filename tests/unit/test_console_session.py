"""The console's session value and CSRF rule (pure): a cookie that was not issued here, was changed,
or is past its expiry names no session; a state-changing call needs the console's header and, when
the browser names one, this host as its Origin."""

from __future__ import annotations

import re

import pytest
from starlette.requests import Request

from sender.console import CSP, render_page
from sender.console.session import SessionSigner, csrf_problem

KEY = b"k" * 32
HASH = "a" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_reads_back_until_it_expires():
    clock = Clock()
    signer = SessionSigner(KEY, lifetime_s=60, clock=clock)
    value = signer.issue(7, HASH)
    session = signer.read(value)
    assert session is not None and (session.token_id, session.token_hash) == (7, HASH)
    clock.now += 61
    assert signer.read(value) is None


@pytest.mark.parametrize(
    "tamper",
    [
        lambda v: v[:-2] + ("AA" if not v.endswith("AA") else "BB"),  # another MAC
        lambda v: "eyJpIjo4" + v[8:],  # another body, same MAC
        lambda v: v.replace(".", ""),
        lambda v: "",
        lambda v: v + "." + v,
        lambda v: "x" * 600,
    ],
)
def test_a_changed_or_foreign_value_names_no_session(tamper):
    signer = SessionSigner(KEY, lifetime_s=60)
    assert signer.read(tamper(signer.issue(7, HASH))) is None
    assert SessionSigner(b"o" * 32, lifetime_s=60).read(signer.issue(7, HASH)) is None  # another key


def test_a_short_key_is_refused():
    with pytest.raises(ValueError, match="16 bytes"):
        SessionSigner(b"short", lifetime_s=60)


def request(method: str, headers: dict[str, str]) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "console.example:8080", **headers}.items()]
    return Request({"type": "http", "method": method, "path": "/admin/v1/tokens", "headers": raw, "scheme": "http"})


@pytest.mark.parametrize(
    ("method", "headers", "refused"),
    [
        ("GET", {}, False),
        ("POST", {}, True),  # the cookie alone: what a cross-site form sends
        ("POST", {"x-llmd-console": "1"}, False),
        ("PATCH", {"x-llmd-console": "1", "origin": "http://console.example:8080"}, False),
        ("DELETE", {"x-llmd-console": "1", "origin": "https://console.example:8080"}, False),  # TLS at the ingress
        ("DELETE", {"x-llmd-console": "1", "origin": "https://evil.example"}, True),
        ("POST", {"x-llmd-console": "1", "origin": "null"}, True),
        ("POST", {"x-llmd-console": "true"}, True),
    ],
)
def test_the_csrf_rule(method, headers, refused):
    assert (csrf_problem(request(method, headers)) is not None) is refused


def test_pages_carry_no_inline_script_or_style():
    assert "'unsafe-inline'" not in CSP and "frame-ancestors 'none'" in CSP
    for page in ("login", "models", "playground", "keys", "usage", "queues"):
        html = render_page(page)
        assert "<script>" not in html and "<style" not in html and " style=" not in html
        assert not re.search(r"<[^>]*\son[a-z]+=", html)  # no event handler attributes
        assert 'src="/console/static/' in html

"""The console's sign-in pieces, pure: sessions (expiry, sign-out), the rate limit, CSRF and
origin checks, where a sign-in may lead."""

from __future__ import annotations

from console import security
from console.pages.signin import safe_next


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_and_sign_out_forgets_them() -> None:
    clock = Clock()
    sessions = security.Sessions(ttl=60, clock=clock)
    token, session = sessions.create()
    assert sessions.get(token) is session
    assert sessions.get(token + "x") is None and sessions.get(None) is None and sessions.get("") is None
    clock.now += 59.9
    assert sessions.get(token) is session
    clock.now += 0.2
    assert sessions.get(token) is None  # expired, and forgotten
    assert len(sessions) == 0
    token, _ = sessions.create()
    sessions.drop(token)
    assert sessions.get(token) is None


def test_sessions_keep_only_a_digest_of_the_cookie() -> None:
    sessions = security.Sessions(ttl=60)
    token, _ = sessions.create()
    assert token not in repr(sessions.__dict__)
    other, _ = sessions.create()
    assert other != token and len(token) >= 43  # 256 bits, URL-safe base64


def test_rate_limit_is_a_sliding_window_per_client() -> None:
    clock = Clock()
    limit = security.RateLimit(3, window=60, clock=clock)
    assert [limit.attempt("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.attempt("a") == 60.0  # the 4th waits until the 1st leaves the window
    assert limit.attempt("b") == 0.0  # another client is not affected
    clock.now += 30
    assert limit.attempt("a") == 30.0
    clock.now += 30.001
    assert limit.attempt("a") == 0.0


def test_csrf_and_origin_checks() -> None:
    session = security.Session(csrf="token-1", expires_at=0)
    assert security.csrf_ok(session, "token-1")
    assert not security.csrf_ok(session, "token-2")
    assert not security.csrf_ok(session, "")
    assert not security.csrf_ok(session, None)
    assert not security.csrf_ok(session, "tökén\udcff")  # odd bytes are a wrong token, never an error
    assert security.same_origin(None, "http", "127.0.0.1:8090")
    assert security.same_origin("http://127.0.0.1:8090", "http", "127.0.0.1:8090")
    assert not security.same_origin("https://evil.example", "http", "127.0.0.1:8090")
    assert not security.same_origin("null", "http", "127.0.0.1:8090")


def test_the_content_security_policy_allows_no_inline_script() -> None:
    csp = security.SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp


def test_sign_in_leads_only_to_paths_of_the_console() -> None:
    assert safe_next("/projects/1/keys?x=1") == "/projects/1/keys?x=1"
    for target in (
        None,
        "",
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "javascript:alert(1)",
    ):
        assert safe_next(target) == "/projects"


def test_cookies_are_http_only_strict_and_secure_behind_tls() -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from console.app_helpers import is_secure, set_cookie

    plain = make_mocked_request("GET", "/")
    proxied = make_mocked_request("GET", "/", headers={"X-Forwarded-Proto": "https"})
    assert not is_secure(plain) and is_secure(proxied)
    for request, secure in ((plain, False), (proxied, True)):
        response = web.Response()
        set_cookie(response, request, security.COOKIE, "v", 60)
        morsel = response.cookies[security.COOKIE]
        assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/"
        assert morsel["max-age"] == "60" and bool(morsel["secure"]) is secure

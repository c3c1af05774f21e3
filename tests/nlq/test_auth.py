"""Tokens, roles and rate limits of the NL-query service, against the real PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cityos.nlq.auth import RateLimiter
from cityos.nlq.service import create_app
from tests.nlq import service_tools
from tests.nlq.service_tools import ScriptedAnswerer, rows

# the service's fixtures (tests/nlq/service_tools.py)
answerer, client, service_settings, tokens = (
    service_tools.answerer,
    service_tools.client,
    service_tools.service_settings,
    service_tools.tokens,
)

# (method, path, lowest role); a caller with that role or higher gets past the role check
ROUTES = [
    ("POST", "/api/v1/ask", "viewer"),
    ("GET", "/api/v1/history", "viewer"),
    ("GET", "/api/v1/actions", "operator"),
    ("GET", "/api/v1/actions/act_000000000000", "operator"),
    ("POST", "/api/v1/actions/act_000000000000/approve", "operator"),
    ("POST", "/api/v1/actions/act_000000000000/reject", "operator"),
    ("GET", "/api/v1/tokens", "admin"),
    ("POST", "/api/v1/tokens", "admin"),
    ("DELETE", "/api/v1/tokens/nobody", "admin"),
]
ROLES = ["viewer", "operator", "admin"]


def _call(client, method, path, headers):
    body = {"question": "How busy is Nippes?"} if path.endswith("/ask") else None
    if path == "/api/v1/tokens" and method == "POST":
        body = {"name": "new-viewer", "role": "viewer"}
    return client.request(method, path, json=body, headers=headers)


def test_rate_limiter_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, clock=lambda: now[0])
    assert all(limiter.take("a") is None for _ in range(60))  # a burst of a minute's worth
    assert limiter.take("a") == pytest.approx(1.0)  # then one a second
    assert limiter.take("b") is None  # per key
    now[0] += 1.0
    assert limiter.take("a") is None
    assert limiter.take("a") == pytest.approx(1.0)


@pytest.mark.integration
def test_a_token_is_stored_only_as_its_hash(tokens, database_url, pg_schema):
    token = tokens.new("operator", "alice")
    assert token.startswith("cty_") and len(token) == 4 + 43
    stored = rows(database_url, pg_schema, "SELECT t::text, token_sha256 FROM api_tokens t")
    assert len(stored) == 1
    whole_row, digest = stored[0]
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in whole_row and token[4:] not in whole_row


@pytest.mark.integration
def test_missing_unknown_or_revoked_tokens_get_401(client, tokens):
    token = tokens.new("admin", "root")
    bad = [
        {},
        {"Authorization": "Bearer cty_" + "x" * 43},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": f"Basic {token}"},
    ]
    for headers in bad:
        reply = client.post("/api/v1/ask", json={"question": "hello"}, headers=headers)
        assert reply.status_code == 401, headers
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    good = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/v1/tokens", headers=good).status_code == 200
    assert client.delete("/api/v1/tokens/root", headers=good).status_code == 200
    assert client.get("/api/v1/tokens", headers=good).status_code == 401  # revoked: at once


@pytest.mark.integration
def test_each_route_admits_its_role_and_above_and_answers_403_below(client, tokens):
    headers = {role: tokens.header(role, f"{role}-1") for role in ROLES}
    for method, path, lowest in ROUTES:
        for role in ROLES:
            reply = _call(client, method, path, headers[role])
            if ROLES.index(role) < ROLES.index(lowest):
                assert reply.status_code == 403, (method, path, role, reply.text)
                assert lowest in reply.json()["detail"]
            else:
                assert reply.status_code not in (401, 403), (method, path, role, reply.text)
        assert _call(client, method, path, {}).status_code == 401, (method, path)


@pytest.mark.integration
def test_health_needs_no_token(client):
    reply = client.get("/health")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ok", "db": "ok", "model": "loaded"}


@pytest.mark.integration
def test_a_token_over_its_rate_gets_429_with_retry_after(service_settings, tokens):
    settings = service_settings.model_copy(update={"nlq_rate_per_minute": 3})
    busy, other = tokens.header("viewer", "busy"), tokens.header("viewer", "other")
    with TestClient(create_app(settings, answerer=ScriptedAnswerer())) as client:
        codes = [client.get("/api/v1/history", headers=busy).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = client.post("/api/v1/ask", json={"question": "hi"}, headers=busy)
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["Retry-After"]) <= 20  # 3 a minute: one every 20 s
        assert client.get("/api/v1/history", headers=other).status_code == 200  # per token


@pytest.mark.integration
def test_admins_manage_tokens_over_the_api(client, tokens, database_url, pg_schema):
    admin = tokens.header("admin", "root")
    created = client.post("/api/v1/tokens", json={"name": "bob", "role": "operator"}, headers=admin)
    assert created.status_code == 201
    body = created.json()
    assert body["name"] == "bob" and body["role"] == "operator" and body["revoked_at"] is None
    bob = {"Authorization": f"Bearer {body['token']}"}
    assert client.get("/api/v1/actions", headers=bob).status_code == 200

    listed = client.get("/api/v1/tokens", headers=admin).json()["tokens"]
    assert {t["name"] for t in listed} == {"root", "bob"}
    assert all(
        set(t) == {"name", "role", "created_at", "revoked_at", "last_used_at"} for t in listed
    )
    assert next(t for t in listed if t["name"] == "bob")["last_used_at"] is not None

    again = client.post("/api/v1/tokens", json={"name": "bob", "role": "viewer"}, headers=admin)
    assert again.status_code == 409
    bad_role = client.post("/api/v1/tokens", json={"name": "eve", "role": "root"}, headers=admin)
    assert bad_role.status_code == 422
    bad_name = client.post("/api/v1/tokens", json={"name": "a b;", "role": "viewer"}, headers=admin)
    assert bad_name.status_code == 400

    assert client.delete("/api/v1/tokens/bob", headers=admin).json()["revoked_at"] is not None
    assert client.get("/api/v1/actions", headers=bob).status_code == 401
    assert client.delete("/api/v1/tokens/bob", headers=admin).status_code == 404
    stored = rows(database_url, pg_schema, "SELECT string_agg(t::text, ' ') FROM api_tokens t")
    assert body["token"] not in stored[0][0]


@pytest.mark.integration
def test_token_create_prints_the_token_and_nothing_else(service_settings, database_url, pg_schema):
    env = {
        **os.environ,
        "CITYOS_DATABASE_URL": database_url,
        "CITYOS_DATABASE_SCHEMA": pg_schema,
        "CITYOS_KAFKA_BOOTSTRAP": service_settings.kafka_bootstrap,
    }
    cityos = str(Path(sys.executable).with_name("cityos"))
    done = subprocess.run(
        [cityos, "token", "create", "--role", "operator", "--name", "eval"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = done.stdout.removesuffix("\n")
    assert token.startswith("cty_") and "\n" not in token and len(token) == 47
    stored = rows(database_url, pg_schema, "SELECT name, role, token_sha256 FROM api_tokens")
    assert stored == [("eval", "operator", hashlib.sha256(token.encode()).hexdigest())]

    listed = subprocess.run(
        [cityos, "token", "list"], env=env, capture_output=True, text=True, check=True
    )
    assert "eval" in listed.stdout and token not in listed.stdout
    subprocess.run([cityos, "token", "revoke", "eval"], env=env, check=True, capture_output=True)
    assert rows(database_url, pg_schema, "SELECT revoked_at IS NOT NULL FROM api_tokens") == [
        (True,)
    ]

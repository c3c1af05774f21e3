"""The NL-query service over HTTP: the contract's replies, bad input, failures, the audit log."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cityos.nlq import actions as actions_module
from cityos.nlq import service as service_module
from cityos.nlq.errors import SQLValidationError
from cityos.nlq.reply import Answer, Refusal
from tests.nlq import service_tools
from tests.nlq.service_tools import ScriptedAnswerer, rows, signal_draft

# the service's fixtures (tests/nlq/service_tools.py)
answerer, client, service_settings, tokens = (
    service_tools.answerer,
    service_tools.client,
    service_tools.service_settings,
    service_tools.tokens,
)

pytestmark = pytest.mark.integration

NIPPES_SPEED = Answer(
    sql="SELECT AVG(t.avg_speed_kmh) AS avg_speed_kmh FROM traffic_5m t JOIN sensors s"
    " ON s.sensor_id = t.sensor_id WHERE s.zone_id = 'cologne-stb-5'",
    columns=["avg_speed_kmh"],
    rows=[[23.4]],
    answer="The average speed in Nippes is 23.4 km/h.",
    interpretation="average speed, district Nippes, latest 5-minute window before as_of",
    shape="scalar",
    places=[{"kind": "zone", "id": "cologne-stb-5"}],
)
CONTRACT_ACTION_KEYS = {"action_id", "kind", "status", "target", "params", "reason"}

BAD_BODIES = [
    pytest.param({}, id="no question"),
    pytest.param({"question": ""}, id="empty"),
    pytest.param({"question": "  \n "}, id="blank"),
    pytest.param({"question": None}, id="null"),
    pytest.param({"question": 42}, id="number"),
    pytest.param({"question": ["how", "busy"]}, id="list"),
    pytest.param({"question": {"$ne": 1}}, id="object"),
    pytest.param({"question": "x" * 2001}, id="2001 characters"),
    pytest.param({"question": "Nippes? " * 1250}, id="10000 characters"),
    pytest.param({"question": "how busy\x00\x01\x02 is it"}, id="control characters"),
    pytest.param({"question": "\x89PNG\r\n\x1a\n\x00\x00"}, id="binary"),
    pytest.param({"question": "speed \ufffd\ufffd"}, id="undecodable bytes"),
    pytest.param({"question": "speed?", "as_of": "yesterday"}, id="as_of not ISO"),
    pytest.param({"question": "speed?", "as_of": "2016-12-19T07:55:00"}, id="as_of naive"),
    pytest.param({"question": "speed?", "as_of": 1482134100}, id="as_of number"),
    pytest.param({"question": "speed?", "as_of": "2016-13-45T99:00:00Z"}, id="as_of impossible"),
    pytest.param({"question": "speed?", "as_of": "0001-01-01T00:00:00+01:00"}, id="as_of before 1"),
    pytest.param(
        {"question": "speed?", "as_of": "9999-12-31T23:59:59-01:00"}, id="as_of after 9999"
    ),
    pytest.param([], id="array"),
    pytest.param("How busy is Nippes?", id="bare string"),
    pytest.param(7, id="bare number"),
    pytest.param(None, id="JSON null"),
]


def test_an_answer_comes_back_as_the_contract_has_it_and_is_audited(
    client, tokens, answerer, database_url, pg_schema
):
    answerer.replies["How fast is traffic in Nippes?"] = NIPPES_SPEED
    headers = tokens.header("viewer", "vera")
    reply = client.post(
        "/api/v1/ask",
        json={"question": "How fast is traffic in Nippes?", "as_of": "2016-12-19T07:55:00Z"},
        headers=headers,
    )
    assert reply.status_code == 200
    assert reply.json() == NIPPES_SPEED.to_json()
    assert answerer.asked == [
        ("How fast is traffic in Nippes?", datetime(2016, 12, 19, 7, 55, tzinfo=UTC))
    ]

    audit = rows(
        database_url,
        pg_schema,
        "SELECT token_name, role, question, as_of, reply_kind, sql, row_count, latency_ms,"
        " reply, error_id FROM nlq_audit",
    )
    assert len(audit) == 1
    name, role, question, as_of, kind, sql, row_count, latency_ms, stored, error_id = audit[0]
    assert (name, role, question) == ("vera", "viewer", "How fast is traffic in Nippes?")
    assert as_of == datetime(2016, 12, 19, 7, 55, tzinfo=UTC)
    assert (kind, sql, row_count, error_id) == ("answer", NIPPES_SPEED.sql, 1, None)
    assert latency_ms >= 0 and stored == NIPPES_SPEED.to_json()


def test_as_of_is_read_in_its_zone_and_defaults_to_now(client, tokens, answerer):
    headers = tokens.header("viewer", "vera")
    client.post(
        "/api/v1/ask",
        json={"question": "speed?", "as_of": "2016-12-19T08:55:00+01:00"},
        headers=headers,
    )
    before = datetime.now(UTC)
    client.post("/api/v1/ask", json={"question": "speed now?"}, headers=headers)
    after = datetime.now(UTC)
    (_, given), (_, default) = answerer.asked
    assert given == datetime(2016, 12, 19, 7, 55, tzinfo=UTC) and given.tzinfo is not None
    assert before - timedelta(seconds=1) <= default <= after


@pytest.mark.parametrize("body", BAD_BODIES)
def test_bad_input_gets_a_refusal_with_a_reason_never_a_500(
    client, tokens, answerer, body, database_url, pg_schema
):
    headers = {**tokens.header("viewer", "vera"), "Content-Type": "application/json"}
    reply = client.post("/api/v1/ask", content=json.dumps(body), headers=headers)
    assert reply.status_code == 200, reply.text
    payload = reply.json()
    assert payload["kind"] == "refusal" and payload["reason"] and payload["answer"]
    assert answerer.asked == []  # never reached the pipeline
    assert rows(database_url, pg_schema, "SELECT reply_kind FROM nlq_audit") == [("refusal",)]


def test_a_lone_surrogate_is_refused_and_still_audited(client, tokens, database_url, pg_schema):
    raw = b'{"question": "speed in Nippes \\ud800?"}'  # valid JSON, not storable as UTF-8
    headers = {**tokens.header("viewer", "vera"), "Content-Type": "application/json"}
    reply = client.post("/api/v1/ask", content=raw, headers=headers)
    assert reply.status_code == 200 and reply.json()["kind"] == "refusal"
    (question,) = rows(database_url, pg_schema, "SELECT question FROM nlq_audit")[0]
    assert question.startswith("speed in Nippes ")


@pytest.mark.parametrize(
    "raw",
    [b"How busy is Nippes?", b"{'question': 1}", b"\xff\xfe\x00\x01binary", b"", b"[" * 100_000],
    ids=["text", "python dict", "binary", "empty", "nested 100,000 deep"],
)
def test_a_body_that_is_not_json_gets_400_with_a_json_error(client, tokens, raw):
    headers = {**tokens.header("viewer", "vera"), "Content-Type": "application/json"}
    reply = client.post("/api/v1/ask", content=raw, headers=headers)
    assert reply.status_code == 400
    assert reply.json() == {"detail": "the request body is not JSON"}


def test_every_action_error_has_a_status_and_an_unreachable_controller_is_503() -> None:
    """Each ActionError the service can raise maps to its reply (the handler had none for the
    base class, and answered a failed rollback send with a 500)."""
    kinds = [actions_module.ActionError, *actions_module.ActionError.__subclasses__()]

    def code(kind: type) -> int:
        return next(c for k, c in service_module.ERROR_STATUS if issubclass(kind, k))

    assert {kind.__name__: code(kind) for kind in kinds} == {
        "ActionError": 400,
        "ActionNotFound": 404,
        "ActionConflict": 409,
        "ActionForbidden": 403,
        "ActuatorUnavailable": 503,
    }


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("GET", "/api/v1/actions?status=%00", "operator"),
        ("GET", "/api/v1/actions/act_%00", "operator"),
        ("POST", "/api/v1/actions/act_%01/approve", "operator"),
        ("GET", "/api/v1/geo?zone_id=nippes%00", "viewer"),
        ("DELETE", "/api/v1/tokens/%00", "admin"),
    ],
)
def test_a_control_character_in_the_path_or_a_parameter_gets_400_not_500(
    client, tokens, method, path, role
):
    reply = client.request(method, path, headers=tokens.header(role, "rita"))
    assert reply.status_code == 400, reply.text
    assert "control characters" in reply.json()["detail"]


@pytest.mark.parametrize(
    "question",
    ["Wie schnell ist der Verkehr in Nippes? 🚗", "朝阳区的空气质量怎么样", "asdf qwer zxcv"],
)
def test_other_languages_emoji_and_nonsense_reach_the_pipeline(client, tokens, answerer, question):
    reply = client.post(
        "/api/v1/ask", json={"question": question}, headers=tokens.header("viewer", "vera")
    )
    assert reply.status_code == 200 and reply.json()["kind"] == "clarification"
    assert answerer.asked[0][0] == question


@pytest.mark.parametrize(
    "failure",
    [RuntimeError("spark died"), SQLValidationError(["DELETE is not a SELECT"]), KeyError("x")],
)
def test_any_failure_of_the_pipeline_is_a_refusal_with_a_logged_error_id(
    client, tokens, answerer, failure, caplog, database_url, pg_schema
):
    answerer.replies["drop everything"] = failure
    with caplog.at_level(logging.ERROR, logger="cityos.nlq.service"):
        reply = client.post(
            "/api/v1/ask",
            json={"question": "drop everything"},
            headers=tokens.header("viewer", "v"),
        )
    assert reply.status_code == 200
    payload = reply.json()
    assert payload["kind"] == "refusal"
    ((error_id,),) = rows(database_url, pg_schema, "SELECT error_id FROM nlq_audit")
    assert error_id and error_id in payload["reason"]
    assert any(error_id in r.getMessage() and r.exc_info for r in caplog.records)
    if isinstance(failure, SQLValidationError):
        assert "DELETE is not a SELECT" in payload["reason"]
    else:
        assert "spark died" not in payload["reason"]  # internals stay in the log


def test_rows_that_are_not_json_become_a_refusal(client, tokens, answerer):
    answerer.replies["nan please"] = Answer(
        sql="SELECT 1", columns=["x"], rows=[[float("nan")]], answer="x", interpretation="x"
    )
    answerer.replies["an object please"] = object()  # not a reply at all
    headers = tokens.header("viewer", "vera")
    for question in ("nan please", "an object please"):
        reply = client.post("/api/v1/ask", json={"question": question}, headers=headers)
        assert reply.status_code == 200 and reply.json()["kind"] == "refusal", question


def test_an_instruction_from_an_operator_is_stored_as_a_proposed_action(
    client, tokens, answerer, database_url, pg_schema
):
    answerer.replies["Set phase 0 at Neusser Str. / Wilhelmstr. to 60 s"] = signal_draft(
        "32319828", 0, 60
    )
    reply = client.post(
        "/api/v1/ask",
        json={"question": "Set phase 0 at Neusser Str. / Wilhelmstr. to 60 s"},
        headers=tokens.header("operator", "olga"),
    )
    assert reply.status_code == 200
    payload = reply.json()
    assert set(payload) == {"kind", "action", "answer"} and payload["kind"] == "action"
    action = payload["action"]
    assert set(action) == CONTRACT_ACTION_KEYS
    assert action["kind"] == "signal_timing" and action["status"] == "proposed"
    assert action["target"] == {"intersection_id": "32319828"}
    assert action["params"] == {"phase_index": 0, "green_s": 60}
    assert "78 s -> 60 s" in action["reason"] and action["action_id"] in payload["answer"]
    stored = rows(database_url, pg_schema, "SELECT action_id, status, proposed_by FROM actions")
    assert stored == [(action["action_id"], "proposed", "olga")]
    audited = rows(database_url, pg_schema, "SELECT reply_kind, reply FROM nlq_audit")
    assert audited == [("action", payload)]


def test_a_viewer_cannot_propose_an_action(client, tokens, answerer, database_url, pg_schema):
    answerer.replies["Set phase 0 to 60 s"] = signal_draft("32319828", 0, 60)
    reply = client.post(
        "/api/v1/ask",
        json={"question": "Set phase 0 to 60 s"},
        headers=tokens.header("viewer", "v"),
    )
    assert reply.status_code == 200
    assert reply.json()["kind"] == "refusal" and "operator" in reply.json()["reason"]
    assert rows(database_url, pg_schema, "SELECT count(*) FROM actions") == [(0,)]


def test_a_refusal_from_the_pipeline_passes_through(client, tokens, answerer):
    refusal = Refusal(answer="I only read data.", reason="writing is not allowed")
    answerer.replies["delete all alerts"] = refusal
    reply = client.post(
        "/api/v1/ask", json={"question": "delete all alerts"}, headers=tokens.header("admin", "a")
    )
    assert reply.json() == refusal.to_json()


def test_history_holds_the_callers_own_questions_newest_first(client, tokens, answerer):
    answerer.replies["How fast is traffic in Nippes?"] = NIPPES_SPEED
    vera, olga = tokens.header("viewer", "vera"), tokens.header("operator", "olga")
    client.post("/api/v1/ask", json={"question": "How fast is traffic in Nippes?"}, headers=vera)
    client.post("/api/v1/ask", json={"question": ""}, headers=vera)
    client.post("/api/v1/ask", json={"question": "olga's question"}, headers=olga)
    items = client.get("/api/v1/history", headers=vera).json()["items"]
    assert [(i["question"], i["kind"]) for i in items] == [
        ("", "refusal"),
        ("How fast is traffic in Nippes?", "answer"),
    ]
    assert items[1]["answer"] == NIPPES_SPEED.answer and items[1]["row_count"] == 1
    assert items[1]["sql"] == NIPPES_SPEED.sql and items[1]["asked_at"].endswith("Z")
    limited = client.get("/api/v1/history?limit=1", headers=vera).json()["items"]
    assert len(limited) == 1
    assert client.get("/api/v1/history?limit=0", headers=vera).status_code == 422


def test_openapi_documents_the_routes(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/health", "/api/v1/ask", "/api/v1/actions/{action_id}/approve", "/api/v1/tokens"):
        assert path in spec["paths"], path
    ask_body = spec["paths"]["/api/v1/ask"]["post"]["requestBody"]["content"]["application/json"]
    assert "question" in ask_body["schema"]["properties"]
    assert json.dumps(spec)  # serialisable


def test_questions_asked_while_the_model_loads_get_a_refusal_that_says_so(
    service_settings, tokens, monkeypatch
):
    release, attempts = threading.Event(), []

    def build(settings):  # the real pipeline loads (or trains) a model: seconds to minutes
        attempts.append(settings)
        if len(attempts) == 1:
            raise RuntimeError("model file truncated")
        release.wait(60)
        return ScriptedAnswerer()

    monkeypatch.setattr(service_module, "_pipeline", build)
    headers = tokens.header("viewer", "vera")
    with TestClient(service_module.create_app(service_settings)) as client:
        lazy = client.app.state.answerer
        _wait_for(lambda: lazy.state == "failed")
        assert client.get("/health").json() == {
            "status": "unavailable",
            "db": "ok",
            "model": "failed",
        }
        waiting = client.post("/api/v1/ask", json={"question": "speed?"}, headers=headers)
        assert waiting.status_code == 200 and waiting.json()["kind"] == "refusal"
        assert "loading" in waiting.json()["reason"]
        _wait_for(lambda: len(attempts) == 2)  # a failed load is tried again when asked
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["model"] == "loading"

        release.set()
        _wait_for(lambda: lazy.state == "loaded")
        assert client.get("/health").status_code == 200
        ready = client.post("/api/v1/ask", json={"question": "speed?"}, headers=headers)
        assert ready.json()["kind"] == "clarification"


def _wait_for(condition, limit_s=30.0):
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_cityos_ask_prints_the_answer_the_sql_and_the_rows(service_settings, tokens):
    import uvicorn

    app = service_module.create_app(
        service_settings, answerer=ScriptedAnswerer({"How fast in Nippes?": NIPPES_SPEED})
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    api = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started)
        env = {**os.environ, "CITYOS_TOKEN": tokens.new("viewer", "cli")}
        cityos = str(Path(sys.executable).with_name("cityos"))
        done = subprocess.run(
            [cityos, "ask", "How fast in Nippes?", "--as-of", "2016-12-19T07:55:00Z", "--api", api],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert NIPPES_SPEED.answer in done.stdout
        assert "SELECT AVG(t.avg_speed_kmh)" in done.stdout and "23.4" in done.stdout
        refused = subprocess.run(
            [cityos, "ask", "hi", "--api", api, "--token", "cty_" + "x" * 43],
            env=os.environ,
            capture_output=True,
            text=True,
        )
        assert refused.returncode == 2 and "401" in refused.stderr
    finally:
        server.should_exit = True
        thread.join(timeout=30)

"""The NL-query service over HTTP, per ``shared/contracts/nlq-api.md``.

Routes (OpenAPI at ``/docs``):

- ``GET /health`` (no token): database reachable and language model loaded; 503 until both.
- ``POST /api/v1/ask`` (viewer): a question -> answer | action | clarification | refusal. Bad
  input of any kind gets a refusal with the reason, and so does any failure of the pipeline
  (with an error id that is also in the log); a body that is not JSON gets 400.
- ``GET /api/v1/history`` (viewer): the caller's latest questions and the kinds of reply.
- ``GET /api/v1/actions``, ``GET /api/v1/actions/{id}``, ``POST .../approve``, ``POST
  .../reject`` (operator).
- ``POST /api/v1/tokens``, ``GET /api/v1/tokens``, ``DELETE /api/v1/tokens/{name}`` (admin).
- the operator console, when ``cityos.nlq.console`` provides ``mount(app, settings)``.

``app.state`` holds ``settings``, ``pool`` (psycopg_pool, search_path at
``settings.database_schema``), ``rate_limiter``, ``actions`` (ActionService) and ``answerer``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import secrets
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field

from cityos import metrics
from cityos.db import psycopg_url
from cityos.nlq.actions import (
    Action,
    ActionConflict,
    ActionError,
    ActionForbidden,
    ActionNotFound,
    ActionService,
    Actuator,
    ActuatorUnavailable,
)
from cityos.nlq.audit import AskRecord, iso_utc, recent_questions, record_ask
from cityos.nlq.auth import (
    AdminDep,
    OperatorDep,
    Principal,
    RateLimiter,
    Role,
    TokenError,
    TokenInfo,
    TokenNameTaken,
    TokenNotFound,
    ViewerDep,
    create_token,
    list_tokens,
    revoke_token,
)
from cityos.nlq.errors import NLQError
from cityos.nlq.reply import ActionDraft, Answer, Answerer, Clarification, Refusal
from cityos.settings import Settings

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20  # far above any question the service accepts
ALLOWED_CONTROLS = {"\t", "\n", "\r"}
NOT_READY = Refusal(
    answer="I am not ready yet: my language model is still loading.",
    reason="the language model is loading; try again in a minute (GET /health says when)",
)
ERROR_STATUS: list[tuple[type[NLQError], int]] = [  # the first that matches, so subclasses first
    (ActionNotFound, status.HTTP_404_NOT_FOUND),
    (ActionConflict, status.HTTP_409_CONFLICT),
    (ActionForbidden, status.HTTP_403_FORBIDDEN),
    (TokenNotFound, status.HTTP_404_NOT_FOUND),
    (TokenNameTaken, status.HTTP_409_CONFLICT),
    (TokenError, status.HTTP_400_BAD_REQUEST),
    (ActuatorUnavailable, status.HTTP_503_SERVICE_UNAVAILABLE),  # the control topic took nothing
    (ActionError, status.HTTP_400_BAD_REQUEST),
]


# ---- request and response models (the contract's shapes, for /docs and the admin routes) ----


class AskRequest(BaseModel):
    question: str = Field(description="the question or instruction, in plain language")
    as_of: datetime | None = Field(
        default=None, description="the instant 'now' refers to (ISO-8601 with zone); default now"
    )


class AnswerPublic(BaseModel):
    kind: Literal["answer"]
    sql: str
    columns: list[str]
    rows: list[list[Any]]
    answer: str
    interpretation: str
    shape: Literal["scalar", "table", "time_series"]
    places: list[dict[str, str]]


class ActionPublic(BaseModel):
    action_id: str
    kind: Literal["signal_timing", "alert"]
    status: str
    target: dict[str, Any]
    params: dict[str, Any]
    reason: str


class ActionReplyPublic(BaseModel):
    kind: Literal["action"]
    action: ActionPublic
    answer: str


class ClarificationPublic(BaseModel):
    kind: Literal["clarification"]
    answer: str
    options: list[str]


class RefusalPublic(BaseModel):
    kind: Literal["refusal"]
    answer: str
    reason: str


AskReply = AnswerPublic | ActionReplyPublic | ClarificationPublic | RefusalPublic


class ActionRecordPublic(ActionPublic):
    summary: str | None
    question: str | None
    proposed_by: str
    proposed_at: str
    expires_at: str
    decided_by: str | None
    decided_at: str | None
    applied_at: str | None
    note: str | None
    what_if: dict[str, Any] | None = Field(
        default=None, description="the twin's predicted effect of a signal change (when ready)"
    )


class ActionListPublic(BaseModel):
    actions: list[ActionRecordPublic]


class RejectRequest(BaseModel):
    note: str | None = Field(default=None, max_length=500, description="why, for the audit")


class HistoryItemPublic(BaseModel):
    asked_at: str
    question: str
    as_of: str | None
    kind: str
    answer: str | None
    sql: str | None
    row_count: int | None


class HistoryPublic(BaseModel):
    items: list[HistoryItemPublic]


class TokenCreateRequest(BaseModel):
    name: str = Field(description="who holds it: 1-64 letters, digits and . _ @ -")
    role: Role


class TokenPublic(BaseModel):
    name: str
    role: Role
    created_at: str
    revoked_at: str | None
    last_used_at: str | None


class TokenCreatedPublic(TokenPublic):
    token: str = Field(description="shown once; only its SHA-256 is stored")


class TokenListPublic(BaseModel):
    tokens: list[TokenPublic]


class HealthPublic(BaseModel):
    status: Literal["ok", "unavailable"]
    db: Literal["ok", "unavailable"]
    model: Literal["loaded", "loading", "failed"]


def _token_json(info: TokenInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "role": info.role,
        "created_at": iso_utc(info.created_at),
        "revoked_at": iso_utc(info.revoked_at),
        "last_used_at": iso_utc(info.last_used_at),
    }


# ---- reading a question ----------------------------------------------------------------------


@dataclass(frozen=True)
class AskInput:
    question: str
    as_of: datetime


def _unreadable(reason: str) -> Refusal:
    return Refusal(answer="I cannot read that request.", reason=reason)


def read_ask(payload: Any, max_chars: int, now: datetime) -> AskInput | Refusal:
    """The question and ``as_of`` of an /ask body, or a refusal saying what is wrong with it."""
    if not isinstance(payload, dict):
        return _unreadable('the request must be a JSON object with a "question"')
    question = payload.get("question")
    if question is None:
        return _unreadable("there is no question in the request")
    if not isinstance(question, str):
        return _unreadable("the question must be text")
    question = question.strip()
    if not question:
        return _unreadable("the question is empty")
    if len(question) > max_chars:
        return _unreadable(f"the question has {len(question)} characters; the limit is {max_chars}")
    if any(_is_binary(char) for char in question):
        return _unreadable("the question contains control characters or binary data")
    as_of = payload.get("as_of")
    if as_of is None:
        return AskInput(question, now)
    if not isinstance(as_of, str):
        return _unreadable("as_of must be an ISO-8601 time, e.g. 2016-12-19T07:55:00Z")
    try:
        instant = datetime.fromisoformat(as_of.strip())
    except ValueError:
        return _unreadable("as_of is not an ISO-8601 time, e.g. 2016-12-19T07:55:00Z")
    if instant.tzinfo is None:
        return _unreadable("as_of needs a time zone, e.g. 2016-12-19T07:55:00Z")
    try:
        return AskInput(question, instant.astimezone(UTC))
    except OverflowError:  # 0001-01-01T00:00+01:00 is before the first representable UTC time
        return _unreadable("as_of is outside the range of times the service can read")


def _is_binary(char: str) -> bool:
    if char in ALLOWED_CONTROLS:
        return False
    return char == "\ufffd" or unicodedata.category(char) in ("Cc", "Cs")


def _question_as_received(payload: Any) -> str:
    """What the audit log records as the question, whatever the request held."""
    question = payload.get("question") if isinstance(payload, dict) else payload
    if isinstance(question, str):
        return question
    return "" if question is None else json.dumps(question, ensure_ascii=False, default=str)


async def _json_body(request: Request) -> Any:
    """The request body as JSON; 400 when it is not JSON, 413 when it is huge."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, "request body too large")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as err:  # also UnicodeDecodeError; [[[[… nested deep
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "the request body is not JSON") from err


# ---- the pieces a request needs ----------------------------------------------------------------


class LazyAnswerer:
    """The language pipeline, built once in a background thread (loading a model, or training
    it on first use, takes from seconds to many minutes); questions asked meanwhile get a
    refusal that says so, rather than waiting."""

    def __init__(self, build: Callable[[], Answerer]) -> None:
        self._build = build
        self._answerer: Answerer | None = None
        self._loading = False
        self._failed = False
        self._lock = threading.Lock()

    @classmethod
    def ready(cls, answerer: Answerer) -> LazyAnswerer:
        lazy = cls(lambda: answerer)
        lazy._answerer = answerer
        return lazy

    @property
    def state(self) -> Literal["loaded", "loading", "failed"]:
        if self._answerer is not None:
            return "loaded"
        return "failed" if self._failed and not self._loading else "loading"

    def start(self) -> None:
        """Build the pipeline in the background, unless it is built or being built."""
        with self._lock:
            if self._answerer is not None or self._loading:
                return
            self._loading = True
        threading.Thread(target=self._load, name="nlq-pipeline", daemon=True).start()

    def get(self) -> Answerer | None:
        """The pipeline, or None while it loads (a failed load is tried again)."""
        if self._answerer is None:
            self.start()
        return self._answerer

    def _load(self) -> None:
        try:
            self._answerer = self._build()
            self._failed = False
        except Exception:
            log.exception("the NL-query pipeline could not be loaded")
            self._failed = True
        finally:
            with self._lock:
                self._loading = False


def _pipeline(settings: Settings) -> Answerer:
    from cityos.nlq.pipeline import NLQPipeline  # torch and the model load only here

    return NLQPipeline.from_settings(settings)


def _pool(settings: Settings) -> ConnectionPool:
    options = f"-c search_path={settings.database_schema},public -c TimeZone=UTC"
    return ConnectionPool(
        psycopg_url(settings.database_url.get_secret_value()),
        kwargs={"options": options},
        min_size=1,
        max_size=settings.nlq_db_pool_size,
        open=False,
        check=ConnectionPool.check_connection,
        name="cityos-nlq",
    )


class Asker:
    """One /ask: the question to the pipeline, drafts to the action store, the reply audited."""

    def __init__(self, app: FastAPI) -> None:
        self._state = app.state

    def reply(self, payload: Any, principal: Principal) -> dict[str, Any]:
        settings: Settings = self._state.settings
        started = time.perf_counter()
        reading = read_ask(payload, settings.nlq_max_question_chars, datetime.now(UTC))
        error_id = None
        if isinstance(reading, Refusal):
            reply = reading.to_json()
        else:
            reply, error_id = self._answer(reading, principal)
        record = AskRecord(
            principal=principal,
            question=_question_as_received(payload),
            as_of=None if isinstance(reading, Refusal) else reading.as_of,
            reply=reply,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            error_id=error_id,
        )
        with self._state.pool.connection() as conn:
            record_ask(conn, record)
        kind = str(reply.get("kind", "refusal"))  # issue 6: requests and latency by reply kind
        metrics.NLQ_REQUESTS.labels(kind).inc()
        metrics.NLQ_LATENCY.labels(kind).observe(record.latency_ms / 1000.0)
        return reply

    def _answer(self, ask: AskInput, principal: Principal) -> tuple[dict[str, Any], str | None]:
        """The reply's JSON and, when answering failed, the error id of the logged failure."""
        try:
            answerer = self._state.answerer.get()
            if answerer is None:
                return NOT_READY.to_json(), None
            reply = answerer.ask(ask.question, ask.as_of)
            if isinstance(reply, ActionDraft):
                return self._propose(reply, principal), None
            if not isinstance(reply, Answer | Clarification | Refusal):
                raise TypeError(f"the pipeline replied with a {type(reply).__name__}")
            reply_json = jsonable_encoder(reply.to_json())
            json.dumps(reply_json, allow_nan=False)  # NaN or inf in rows: not JSON
            return reply_json, None
        except ActionForbidden as err:
            return Refusal(
                answer="I cannot act on that with your token.", reason=str(err)
            ).to_json(), None
        except Exception as err:
            error_id = secrets.token_hex(6)
            log.exception("answering failed, error id %s", error_id)
            why = str(err) if isinstance(err, NLQError) else "an internal error"
            reason = f"{why} (error id {error_id})"
            return Refusal(
                answer="Sorry, I could not answer that.", reason=reason
            ).to_json(), error_id

    def _propose(self, draft: ActionDraft, principal: Principal) -> dict[str, Any]:
        action: Action = self._state.actions.propose(draft, principal)
        if action.status == "proposed":
            answer = (
                f"Proposed: {action.reason}. Nothing changes until an operator approves "
                f"action {action.action_id}."
            )
        else:
            answer = f"Not proposed: {action.reason}."
        return {"kind": "action", "action": action.contract_json(), "answer": answer}


# ---- routes ----------------------------------------------------------------------------------


def _ask_router(asker: Asker) -> APIRouter:
    router = APIRouter(prefix="/api/v1", tags=["questions"])
    request_body = {
        "required": True,
        "content": {"application/json": {"schema": AskRequest.model_json_schema()}},
    }

    @router.post("/ask", response_model=AskReply, openapi_extra={"requestBody": request_body})
    def ask(principal: ViewerDep, payload: Annotated[Any, Depends(_json_body)]) -> JSONResponse:
        """Answer a question, or turn an instruction into a proposed action."""
        return JSONResponse(asker.reply(payload, principal))

    @router.get("/history", response_model=HistoryPublic)
    def history(
        request: Request, principal: ViewerDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
    ) -> dict[str, Any]:
        """The caller's latest questions, newest first."""
        with request.app.state.pool.connection() as conn:
            return {"items": recent_questions(conn, principal.name, limit)}

    return router


def _actions_router(actions: ActionService) -> APIRouter:
    router = APIRouter(prefix="/api/v1/actions", tags=["actions"])

    @router.get("", response_model=ActionListPublic)
    def list_actions(
        _: OperatorDep,
        status_is: Annotated[str | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> dict[str, Any]:
        """The latest actions, newest first; ``status`` filters (e.g. ``proposed``)."""
        return {"actions": [a.to_json() for a in actions.list_actions(status_is, limit)]}

    @router.get("/{action_id}", response_model=ActionRecordPublic)
    def get_action(action_id: str, _: OperatorDep) -> dict[str, Any]:
        return actions.get(action_id).to_json()

    @router.post("/{action_id}/approve", response_model=ActionRecordPublic)
    def approve(action_id: str, principal: OperatorDep) -> dict[str, Any]:
        """Approve a proposal (four eyes: not by its proposer, where two operators exist)."""
        return actions.approve(action_id, principal).to_json()

    @router.post("/{action_id}/reject", response_model=ActionRecordPublic)
    def reject(
        action_id: str,
        principal: OperatorDep,
        body: Annotated[RejectRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        """Discard a proposal, or an approved change not applied yet."""
        return actions.reject(action_id, principal, body.note if body else None).to_json()

    @router.post("/{action_id}/rollback", response_model=ActionRecordPublic)
    def rollback(action_id: str, principal: OperatorDep) -> dict[str, Any]:
        """Restore the green an applied signal change replaced (sent to the controller)."""
        return actions.rollback(action_id, principal).to_json()

    return router


def _tokens_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])

    @router.post("", response_model=TokenCreatedPublic, status_code=status.HTTP_201_CREATED)
    def create(request: Request, body: TokenCreateRequest, _: AdminDep) -> dict[str, Any]:
        """A new token; the reply is the only place it is ever shown."""
        with request.app.state.pool.connection() as conn:
            token, info = create_token(conn, body.name, body.role)
        return {**_token_json(info), "token": token}

    @router.get("", response_model=TokenListPublic)
    def list_all(request: Request, _: AdminDep) -> dict[str, Any]:
        with request.app.state.pool.connection() as conn:
            return {"tokens": [_token_json(info) for info in list_tokens(conn)]}

    @router.delete("/{name}", response_model=TokenPublic)
    def revoke(request: Request, name: str, _: AdminDep) -> dict[str, Any]:
        """Revoke the live token of ``name``."""
        with request.app.state.pool.connection() as conn:
            return _token_json(revoke_token(conn, name))

    return router


# ---- the app -----------------------------------------------------------------------------------


def create_app(
    settings: Settings, answerer: Answerer | None = None, actuator: Actuator | None = None
) -> FastAPI:
    """The service; ``answerer`` defaults to ``NLQPipeline.from_settings(settings)``, loaded
    in the background at startup (``/health`` says when it is ready)."""
    pool = _pool(settings)
    whatif = None
    if settings.nlq_whatif_minutes > 0:
        from cityos.streaming.whatif import WhatIfRunner

        whatif = WhatIfRunner(pool.connection, settings, minutes=settings.nlq_whatif_minutes)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.open()
        app.state.answerer.start()
        try:
            yield
        finally:
            if whatif is not None:
                whatif.close(wait=False)
            pool.close()

    app = FastAPI(
        title="CityOS NL-query service",
        version="1",
        description="Plain-language questions about the city's data; control actions that a "
        "person approves. Contract: shared/contracts/nlq-api.md.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.rate_limiter = RateLimiter(settings.nlq_rate_per_minute)
    app.state.actions = ActionService(pool.connection, settings, actuator, whatif=whatif)
    app.state.answerer = (
        LazyAnswerer(lambda: _pipeline(settings))
        if answerer is None
        else LazyAnswerer.ready(answerer)
    )

    @app.get("/health", response_model=HealthPublic, tags=["health"])
    def health() -> JSONResponse:
        """No token needed: 200 when the database answers and the model is loaded, else 503."""
        try:
            with pool.connection(timeout=2.0) as conn:
                conn.execute("SELECT 1")
            db = "ok"
        except psycopg.Error:  # the pool's timeout and closed errors too
            db = "unavailable"
        model = app.state.answerer.state
        ok = db == "ok" and model == "loaded"
        body = {"status": "ok" if ok else "unavailable", "db": db, "model": model}
        return JSONResponse(
            body, status_code=status.HTTP_200_OK if ok else status.HTTP_503_SERVICE_UNAVAILABLE
        )

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics() -> Response:
        """Prometheus scrape (issue 6). No token, like /health: scrapers do not hold CityOS
        tokens, and the exposition carries only counts by topic, query and reply kind (no
        questions, names, tokens or URLs). Restrict it at the network (a reverse proxy that
        does not forward /metrics), as is usual for a scrape endpoint."""
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    def _refused(_: Request, err: Exception) -> JSONResponse:
        code = next(
            (code for kind, code in ERROR_STATUS if isinstance(err, kind)),
            status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
        return JSONResponse({"detail": str(err)}, status_code=code)

    @app.middleware("http")
    async def _readable_path(request: Request, call_next: Callable[[Request], Any]) -> Response:
        """A path or query parameter with a NUL or other control character gets 400: they
        cannot be an id, a name or a status, and PostgreSQL rejects NUL in text."""
        parts = [request.scope.get("path", ""), *request.query_params.values()]
        if any(_is_binary(char) for part in parts for char in part):
            return JSONResponse(
                {"detail": "the path or a query parameter contains control characters"},
                status_code=status.HTTP_400_BAD_REQUEST,
            )
        return await call_next(request)

    app.add_exception_handler(ActionError, _refused)
    app.add_exception_handler(TokenError, _refused)

    @app.exception_handler(Exception)
    def _internal_error(_: Request, err: Exception) -> JSONResponse:
        error_id = secrets.token_hex(6)
        log.error("unhandled error, error id %s", error_id, exc_info=err)
        return JSONResponse({"detail": "internal error", "error_id": error_id}, status_code=500)

    app.include_router(_ask_router(Asker(app)))
    app.include_router(_actions_router(app.state.actions))
    app.include_router(_tokens_router())
    _mount_console(app, settings)
    return app


def _mount_console(app: FastAPI, settings: Settings) -> None:
    """The operator console, where ``cityos.nlq.console`` is installed."""
    if importlib.util.find_spec("cityos.nlq.console") is None:
        return
    mount = getattr(importlib.import_module("cityos.nlq.console"), "mount", None)
    if callable(mount):
        mount(app, settings)

"""`cityos nlq eval`: the evaluation kit's score of the NL-query service, end to end.

What `make eval-nlq` runs: the kit's fixture (``shared/nlq/fixture.py``) loaded into a database of
its own on the running stack (``cityos_nlq_eval`` by default; `cityos up` first when the stack is
down), the migrations applied so the service's own tables exist, the service started on a free
port with that database, an operator token created with `cityos token create`, and then the kit's
``evaluate.py`` asking every development question. Its output is passed through as it comes; the
command fails only when it cannot run (stack, fixture, service, token or kit), never on the score.

``fixture_database`` is also what the NLQ integration tests load their database with: the fixture
takes ~25 s, so it runs only when the database lacks it or holds a different version of it (the
sha256 of ``fixture.py`` is stored in the database after a load).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import psycopg
import typer
from psycopg import sql

from cityos.db import connect, migrate, psycopg_url
from cityos.errors import CityOSError
from cityos.settings import REPO_ROOT, SHARED_DIR, Settings, load_settings

log = logging.getLogger(__name__)

KIT_DIR = SHARED_DIR / "nlq"
FIXTURE = KIT_DIR / "fixture.py"
EVALUATE = KIT_DIR / "evaluate.py"
DEV_QUESTIONS = KIT_DIR / "dev-questions.jsonl"
DEFAULT_DATABASE = "cityos_nlq_eval"
DEFAULT_REPORT = Path("reports/nlq-dev.json")
MARKER_TABLE = "nlq_fixture_build"  # one row: the sha256 of the fixture.py that filled the tables
FIXTURE_TIMEOUT_S = 900.0
SERVICE_START_TIMEOUT_S = 300.0  # the service loads the model and warms Spark before /health

Progress = Callable[[str], None]


class EvalError(CityOSError):
    """The evaluation could not run (as opposed to: it ran and scored low)."""


# --------------------------------------------------------------------------------------------
# the fixture database
# --------------------------------------------------------------------------------------------
def database_url_for(url: str, database: str) -> str:
    """``url`` with its database replaced by ``database`` (same server, role and password)."""
    parts = urlsplit(psycopg_url(url))
    return urlunsplit(parts._replace(path="/" + database))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _loaded_sha(url: str) -> str | None:
    """The marker of the last complete fixture load, or None (no marker, or tables missing)."""
    with connect(url, autocommit=True) as conn:
        present = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AND to_regclass('public.traffic_5m') IS NOT NULL",
            (f"public.{MARKER_TABLE}",),
        ).fetchone()
        if not present or not present[0]:
            return None
        row = conn.execute(f"SELECT sha256 FROM {MARKER_TABLE}").fetchone()  # noqa: S608
        return str(row[0]) if row else None


@contextlib.contextmanager
def _server_lock(server_url: str, database: str) -> Iterator[None]:
    """One loader per database at a time, across processes (an advisory lock on the server)."""
    with psycopg.connect(database_url_for(server_url, "postgres"), autocommit=True) as conn:
        key = f"cityos-nlq-fixture:{database}"
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


def _create_database(server_url: str, database: str) -> bool:
    with psycopg.connect(database_url_for(server_url, "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        return True


def _run_fixture(url: str, fixture: Path, python: str, say: Progress) -> None:
    """The kit's loader as a script (it is one), the URL in its environment, not on argv."""
    env = {**os.environ, "CITYOS_DATABASE_URL": url}
    started = time.monotonic()
    done = subprocess.run(  # noqa: S603 - our own interpreter and the kit's script
        [python, str(fixture)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=FIXTURE_TIMEOUT_S,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-3000:]
        raise EvalError(f"{fixture.name} failed (exit {done.returncode}):\n{tail}")
    say(f"fixture built in {time.monotonic() - started:.0f} s")


def fixture_database(
    server_url: str,
    database: str,
    *,
    fixture: Path = FIXTURE,
    python: str = sys.executable,
    progress: Progress | None = None,
) -> str:
    """URL of ``database`` on ``server_url``'s server, holding the kit's fixture and migrations.

    Created when missing; migrations applied (before the fixture, which drops and recreates only
    the contract tables); the fixture loaded unless the stored sha256 of ``fixture`` matches.
    """
    say = progress or log.info
    url = database_url_for(server_url, database)
    want = file_sha256(fixture)
    with _server_lock(server_url, database):
        if _create_database(server_url, database):
            say(f"created database {database}")
        applied = migrate(url, "public")
        if applied:
            say(f"applied migrations {', '.join(applied)}")
        if _loaded_sha(url) == want:
            say(f"fixture already loaded in {database} (sha256 {want[:12]})")
            return url
        say(f"loading the evaluation fixture into {database} (about half a minute)")
        _run_fixture(url, fixture, python, say)
        with connect(url, autocommit=True) as conn, conn.transaction():
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} ("
                " sha256 text NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute(f"DELETE FROM {MARKER_TABLE}")  # noqa: S608
            conn.execute(f"INSERT INTO {MARKER_TABLE} (sha256) VALUES (%s)", (want,))  # noqa: S608
    return url


# --------------------------------------------------------------------------------------------
# the stack, the service and a token
# --------------------------------------------------------------------------------------------
def stack_settings(say: Progress) -> Settings:
    """Settings of the running embedded stack, starting it first when it is not healthy."""
    from cityos.stack import Stack

    stack = Stack.from_env()
    if not all(item.healthy for item in stack.status()):
        say("starting the embedded stack (`cityos up`)")
        stack.up(progress=say)
    return load_settings()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def cityos_command() -> list[str]:
    """The `cityos` entry point of this interpreter's environment."""
    script = Path(sys.executable).parent / "cityos"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from cityos.cli import main; main()"]


def service_env(database_url: str, **settings: object) -> dict[str, str]:
    """The environment of a service (or `cityos token`) over ``database_url``: explicit CITYOS_*
    variables win over the stack's env file. The rate limit is lifted: the kit asks in bursts."""
    env = {**os.environ, "CITYOS_DATABASE_URL": database_url, "CITYOS_DATABASE_SCHEMA": "public"}
    env["CITYOS_NLQ_RATE_PER_MINUTE"] = "100000"
    env.update({f"CITYOS_{key.upper()}": str(value) for key, value in settings.items()})
    return env


def _health(api: str) -> tuple[int | None, str]:
    import httpx

    try:
        response = httpx.get(api + "/health", timeout=5.0)
    except httpx.HTTPError as err:
        return None, str(err)
    return response.status_code, response.text[:300]


def _log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running_service(
    database_url: str,
    log_path: Path,
    say: Progress,
    *,
    port: int | None = None,
    timeout_s: float = SERVICE_START_TIMEOUT_S,
    kafka_bootstrap: str | None = None,
) -> Iterator[str]:
    """`cityos nlq serve` over ``database_url`` in a child process on a free port; yields its
    base URL once /health answers 200 (model loaded, Spark warm), stops it afterwards."""
    host = "127.0.0.1"
    port = port or free_port(host)
    api = f"http://{host}:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [*cityos_command(), "nlq", "serve", "--host", host, "--port", str(port)]
    extra = {"kafka_bootstrap": kafka_bootstrap} if kafka_bootstrap else {}
    env = service_env(database_url, nlq_host=host, nlq_port=port, **extra)
    say(f"starting the service on {api} (log {log_path})")
    started = time.monotonic()
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(  # noqa: S603 - our own entry point
            argv, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT
        )
    try:
        last = ""
        while True:
            if child.poll() is not None:
                raise EvalError(
                    f"the service exited with code {child.returncode} before it was ready:\n"
                    + _log_tail(log_path)
                )
            code, body = _health(api)
            if code == 200:
                break
            if code == 503 and '"failed"' in body:
                raise EvalError(f"the service could not load the pipeline:\n{_log_tail(log_path)}")
            waited = time.monotonic() - started
            if waited > timeout_s:
                raise EvalError(
                    f"the service was not ready after {timeout_s:.0f} s (/health: {code} {body})"
                )
            state = body if code else "not listening yet"
            if state != last:
                say(f"waiting for the service ({waited:.0f} s): {state}")
                last = state
            time.sleep(1.0)
        say(f"service ready in {time.monotonic() - started:.0f} s")
        yield api
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _cityos_token(args: list[str], database_url: str, kafka_bootstrap: str | None = None) -> str:
    extra = {"kafka_bootstrap": kafka_bootstrap} if kafka_bootstrap else {}
    done = subprocess.run(  # noqa: S603 - our own entry point
        [*cityos_command(), "token", *args],
        env=service_env(database_url, **extra),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise EvalError(f"cityos token {args[0]} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout.strip()


@contextlib.contextmanager
def service_token(
    database_url: str, role: str, purpose: str, kafka_bootstrap: str | None = None
) -> Iterator[str]:
    """A fresh token from `cityos token create` (a name of its own), revoked afterwards."""
    name = f"{purpose}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    token = _cityos_token(["create", "--role", role, "--name", name], database_url, kafka_bootstrap)
    if not token or len(token.split()) != 1:
        raise EvalError(f"cityos token create printed no token: {token[:80]!r}")
    try:
        yield token
    finally:
        with contextlib.suppress(EvalError, subprocess.TimeoutExpired):
            _cityos_token(["revoke", name], database_url, kafka_bootstrap)


def ensure_model(settings: Settings, say: Progress) -> Path | None:
    """The model the service will load, trained first when this code has none yet (so the
    service's start does not hide a training run); None when the settings name a folder."""
    if settings.nlq_model_dir is not None:
        return None
    from cityos.nlq.train import ensure_model as ensure

    return ensure(settings.cache_dir, settings.data_dir, progress=say)


# --------------------------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------------------------
def run_evaluate(
    api: str,
    token: str,
    database_url: str,
    questions: Path,
    report: Path,
    only: list[str],
    echo: Callable[[str], None],
) -> tuple[int, str]:
    """The kit's evaluate.py, its output passed through line by line; (exit code, last line)."""
    report.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        str(EVALUATE),
        "--questions",
        str(questions),
        "--api",
        api,
        "--token",
        token,
        "--database-url",
        database_url,
        "--report",
        str(report),
    ]
    for question_id in only:
        argv += ["--only", question_id]
    last = ""
    with subprocess.Popen(  # noqa: S603 - our interpreter and the kit's script
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as child:
        assert child.stdout is not None  # noqa: S101 - stdout=PIPE
        for line in child.stdout:
            line = line.rstrip("\n")
            echo(line)
            if line.strip():
                last = line.strip()
    return child.returncode, last


def evaluate_service(
    *,
    database: str = DEFAULT_DATABASE,
    questions: Path = DEV_QUESTIONS,
    report: Path = DEFAULT_REPORT,
    only: list[str] | None = None,
    port: int | None = None,
    say: Progress = log.info,
    echo: Callable[[str], None] = print,  # noqa: T201 - evaluate.py's lines, as they come
) -> tuple[int, str]:
    """Stack, fixture, model, service, token, evaluate.py: the whole evaluation; (exit, last)."""
    for path in (FIXTURE, EVALUATE, questions):
        if not path.is_file():
            raise EvalError(f"evaluation kit file missing: {path}")
    settings = stack_settings(say)
    url = fixture_database(settings.database_url.get_secret_value(), database, progress=say)
    model = ensure_model(settings, say)
    if model is not None:
        say(f"model {model.name}")
    log_path = settings.state_dir / "logs" / f"nlq-eval-service-{database}.log"
    with (
        running_service(url, log_path, say, port=port) as api,
        service_token(url, "operator", "nlq-eval") as token,
    ):
        say(f"evaluate.py: {questions.name} against {api}")
        return run_evaluate(api, token, url, questions, report, only or [], echo)


def eval_command(
    database: Annotated[
        str, typer.Option(help="database for the fixture, on the stack's server")
    ] = DEFAULT_DATABASE,
    questions: Annotated[Path, typer.Option(help="JSONL question file")] = DEV_QUESTIONS,
    report: Annotated[Path, typer.Option(help="JSON report path")] = DEFAULT_REPORT,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="only these question ids (repeatable)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="service port; default: a free one")] = None,
) -> None:
    """Score the NL-query service with the evaluation kit: fixture database, model, service,
    operator token, evaluate.py. Exits non-zero only when the evaluation cannot run."""
    from rich.console import Console

    console = Console(log_path=False, highlight=False)
    started = time.monotonic()
    try:
        code, last = evaluate_service(
            database=database,
            questions=questions,
            report=report,
            only=only,
            port=port,
            say=lambda step: console.log(f"eval: {step}"),
            echo=lambda line: console.out(line, highlight=False),
        )
    except EvalError as err:
        console.print(f"[red]cityos nlq eval: {err}[/red]")
        raise typer.Exit(2) from err
    if code != 0:
        console.print(f"[red]evaluate.py could not run (exit {code}): {last}[/red]")
        raise typer.Exit(2)
    summary = ""
    if report.is_file():
        figures = json.loads(report.read_text(encoding="utf-8")).get("summary", {})
        if figures.get("accuracy") is not None:
            summary = f" (accuracy {100 * figures['accuracy']:.1f}%)"
    console.print(
        f"[bold]{last}[/bold]{summary}; report {report}; {time.monotonic() - started:.0f} s"
    )


def register(nlq_app: typer.Typer) -> None:
    """Add `eval` to the `cityos nlq` group."""
    nlq_app.command("eval")(eval_command)

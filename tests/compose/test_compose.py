"""docker-compose.yml, checked without Docker (unit tier).

The stack cannot be started on these machines (no Docker engine), so its file is checked the way
`docker compose config` would check it and then some: the vendored Compose Specification schema
(infra/compose-spec/, see SOURCE.md there) plus CityOS's own rules, each a small function that
returns a list of problems. Every rule is shown to fire by a test that breaks a copy of the file.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from pydantic import SecretStr, TypeAdapter
from typer.testing import CliRunner

from cityos import metrics
from cityos.cli import app as cityos_cli
from cityos.settings import REPO_ROOT, Settings, read_env_file
from cityos.topics import Topics

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
SCHEMA_FILE = REPO_ROOT / "infra" / "compose-spec" / "compose-spec.json"
GRAFANA_PROVISIONING = REPO_ROOT / "infra" / "grafana" / "provisioning"
CITYOS_DOCKERFILE = "infra/docker/Dockerfile"
AIRFLOW_DOCKERFILE = "infra/docker/airflow.Dockerfile"
# Airflow's CLI behind CityOS's compatibility patches (cityos/airflow.py)
AIRFLOW_PATCHED = ["python", "-m", "cityos.airflow"]
AIRFLOW_SHIM = "infra/docker/airflow/airflow"  # the image's `airflow`, first on PATH
PROMETHEUS_SERVICE = "prometheus"
PROMETHEUS_DATASOURCE = GRAFANA_PROVISIONING / "datasources" / "cityos-prometheus.yaml"

# `cityos` commands that serve cityos.metrics.REGISTRY on the metrics_port setting (bound to
# metrics_host), and the function that does it; test_metrics_port_commands_serve_metrics reads
# each function to hold this table to the code.
METRICS_PORT_COMMANDS: dict[tuple[str, ...], str] = {
    ("stream", "supervise"): "cityos.streaming.supervisor:main",
    ("stream", "run"): "cityos.streaming.jobs.aggregate:main",
    ("stream", "twin"): "cityos.cli.streaming:twin_command",
}
# `cityos` commands that serve GET /metrics on their own HTTP port (--port/--host, else these
# settings); test_nlq_service_serves_metrics scrapes the real app.
HTTP_METRICS_COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("nlq", "serve"): ("nlq_port", "nlq_host"),
}

# `cityos` commands the compose file runs before their part has written them. Each entry names
# the part that owns it; once the command exists its options are checked like any other.
PLANNED_COMMANDS: dict[tuple[str, ...], str] = {}
# Services built from the CityOS image that run something other than the `cityos` CLI.
NON_CLI_SERVICES = {"spark-worker": "spark-class"}

SECRET_VAR = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|_KEY$")
SECRET_ENV_KEY = re.compile(r"PASSWORD|SECRET|FERNET_KEY|TOKEN|DATABASE_URL|SQL_ALCHEMY_CONN")
SECRET_PLACEHOLDER = "not-a-real-secret"

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_DOLLAR = re.compile(rf"\$(?:(?P<escaped>\$)|\{{(?P<braced>[^}}]*)\}}|(?P<bare>{_NAME}))")
_BRACED = re.compile(rf"^(?P<name>{_NAME})(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?$")


@dataclass(frozen=True)
class VarUse:
    """One `${NAME<op><arg>}` (or `$NAME`) in the compose file, with where it was found."""

    name: str
    op: str
    arg: str
    where: str


# ------------------------------------------------------------------------------ reading


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def load_env_example(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    return read_env_file(path)


def _strings(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{where}[{index}]")
    elif isinstance(node, str):
        yield where, node


def var_uses(compose: dict[str, Any]) -> list[VarUse]:
    uses = []
    for where, text in _strings(compose):
        for match in _DOLLAR.finditer(text):
            if match["escaped"]:
                continue
            if match["bare"]:
                uses.append(VarUse(match["bare"], "", "", where))
                continue
            braced = _BRACED.match(match["braced"])
            if braced is None:
                uses.append(VarUse(f"<unparsable ${{{match['braced']}}}>", "", "", where))
            else:
                uses.append(VarUse(braced["name"], braced["op"] or "", braced["arg"] or "", where))
    return uses


def _interpolate_text(text: str, env: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["bare"]:
            return env.get(match["bare"], "")
        braced = _BRACED.match(match["braced"])
        if braced is None:
            raise ValueError(f"unparsable ${{{match['braced']}}}")
        name, op, arg = braced["name"], braced["op"] or "", braced["arg"] or ""
        value = env.get(name)
        if op in (":-", "-"):
            return value if value is not None and (value or op == "-") else arg
        if op in (":?", "?") and not (value if op == ":?" else value is not None):
            raise ValueError(f"{name} is required: {arg}")
        if op in (":+", "+"):
            return arg if (value if op == ":+" else value is not None) else ""
        return value or ""

    return _DOLLAR.sub(one, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """Compose's variable substitution on every string value (keys are never substituted)."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    if isinstance(node, str):
        return _interpolate_text(node, env)
    return node


def example_environment(env_example: dict[str, str]) -> dict[str, str]:
    """What `docker compose` would see with .env copied from the example and secrets filled in."""
    return {
        name: (SECRET_PLACEHOLDER if SECRET_VAR.search(name) and not value else value)
        for name, value in env_example.items()
    }


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose.get("services") or {}


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _is_one_shot(service: dict[str, Any]) -> bool:
    return service.get("restart") == "no"


def _uses_cityos_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == CITYOS_DOCKERFILE


# ------------------------------------------------------------------------------ the rules
# Each takes the parsed compose file and the .env.example values; returns problems as text.


def check_schema(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """Valid against the Compose Specification, after substitution with the example's values."""
    schema = json.loads(SCHEMA_FILE.read_text())
    try:
        resolved = interpolate(compose, example_environment(env_example))
    except ValueError as err:
        return [f"interpolation: {err}"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"schema: {'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(resolved)
    ]


def check_healthchecks(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """A long-running service says when it is ready; a one-shot says it must not restart."""
    problems = []
    for name, service in _services(compose).items():
        check = service.get("healthcheck")
        if _is_one_shot(service):
            continue
        if not check or check.get("disable") or not check.get("test"):
            problems.append(f'{name}: no healthcheck and not a one-shot (restart: "no")')
    return problems


def check_depends_on(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """Ordered startup: every dependency has a condition that the target can meet."""
    services = _services(compose)
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on is a list; give each dependency a condition")
            continue
        for target, spec in depends.items():
            condition = (spec or {}).get("condition")
            if target not in services:
                problems.append(f"{name}: depends on undefined service {target}")
            elif condition == "service_healthy" and not services[target].get("healthcheck"):
                problems.append(f"{name}: waits for {target} to be healthy; it has no healthcheck")
            elif condition == "service_completed_successfully" and not _is_one_shot(
                services[target]
            ):
                problems.append(f"{name}: waits for {target} to complete; it is not a one-shot")
            elif condition not in ("service_healthy", "service_completed_successfully"):
                problems.append(f"{name}: depends on {target} without a readiness condition")
    return problems


def check_secrets(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """No secret in the file: secrets come from .env as `${VAR:?message}`, never with a default."""
    problems = [
        f"{use.where}: secret {use.name} given as ${{{use.name}{use.op}...}}, not ${{...:?...}}"
        for use in var_uses(compose)
        if SECRET_VAR.search(use.name) and use.op not in (":?", "?")
    ]
    for name, service in _services(compose).items():
        for key, value in _environment(service).items():
            if not SECRET_ENV_KEY.search(key):
                continue
            required = [u for u in var_uses({key: value}) if u.op in (":?", "?")]
            if not any(SECRET_VAR.search(use.name) for use in required):
                problems.append(f"{name}: {key} holds a literal secret; take it from ${{VAR:?...}}")
    return problems


def check_cityos_settings(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """CITYOS_* names are Settings fields, and compose defaults equal the Settings defaults."""
    fields = Settings.model_fields
    problems = []
    names = {
        (key, f"services.{svc}.environment")
        for svc, service in _services(compose).items()
        for key in _environment(service)
    }
    names |= {(use.name, use.where) for use in var_uses(compose)}
    names |= {(key, ".env.example") for key in env_example}
    for name, where in sorted(names):
        if name.startswith("CITYOS_") and name.removeprefix("CITYOS_").lower() not in fields:
            problems.append(f"{where}: {name} is not a field of cityos.settings.Settings")
    for use in var_uses(compose):
        field = fields.get(use.name.removeprefix("CITYOS_").lower())
        if use.name.startswith("CITYOS_") and field is not None and use.op in (":-", "-"):
            default = "" if field.default is None else str(field.default)
            if not field.is_required() and use.arg != default:
                problems.append(
                    f"{use.where}: default {use.name}={use.arg!r}, Settings says {default!r}"
                )
    return problems


def _host_ports(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published"):
                yield port.get("host_ip", "0.0.0.0"), str(port["published"])  # noqa: S104
            continue
        parts = str(port).rsplit("/", 1)[0].split(":")
        if len(parts) == 3:
            yield parts[0], parts[1]
        elif len(parts) == 2:
            yield "0.0.0.0", parts[0]  # noqa: S104


def check_ports(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """No two services publish the same host port (on the same or a wildcard address)."""
    resolved = interpolate(compose, example_environment(env_example))
    taken: dict[str, list[tuple[str, str]]] = {}
    problems = []
    for name, service in _services(resolved).items():
        for host_ip, port in _host_ports(service):
            for other_ip, other in taken.get(port, []):
                if "0.0.0.0" in (host_ip, other_ip) or host_ip == other_ip:  # noqa: S104
                    problems.append(f"{name}: host port {port} is already published by {other}")
            taken.setdefault(port, []).append((host_ip, name))
    return problems


def check_references(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """Services use only declared named volumes and networks; every declared one is used."""
    volumes = set(compose.get("volumes") or {})
    networks = set(compose.get("networks") or {})
    used_volumes: set[str] = set()
    used_networks: set[str] = set()
    problems = []
    for name, service in _services(compose).items():
        for mount in service.get("volumes") or []:
            source = mount.get("source", "") if isinstance(mount, dict) else mount.split(":")[0]
            if source and not source.startswith((".", "/", "$", "~")):
                used_volumes.add(source)
                if source not in volumes:
                    problems.append(f"{name}: volume {source} is not declared under volumes:")
        for network in service.get("networks") or []:
            used_networks.add(network)
            if network not in networks:
                problems.append(f"{name}: network {network} is not declared under networks:")
        if not service.get("networks") and service.get("network_mode") is None:
            problems.append(f"{name}: joins no network (the stack uses one: {sorted(networks)})")
    problems += [f"volume {v} is declared but no service mounts it" for v in volumes - used_volumes]
    problems += [
        f"network {n} is declared but no service joins it" for n in networks - used_networks
    ]
    return problems


def _cli_accepts(args: list[str]) -> bool:
    """The real typer app parses these arguments (command path and option names)."""
    result = CliRunner().invoke(cityos_cli, [*args, "--help"], env={"COLUMNS": "200"})
    return result.exit_code == 0


def check_commands(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """CityOS-image services run real `cityos` commands (or a planned one, listed above)."""
    problems = []
    for name, service in _services(compose).items():
        if not _uses_cityos_image(service):
            continue
        command = _command(service)
        if name in NON_CLI_SERVICES:
            if command[:1] != [NON_CLI_SERVICES[name]]:
                problems.append(f"{name}: expected to run {NON_CLI_SERVICES[name]}, runs {command}")
            continue
        if command[:1] != ["cityos"]:
            problems.append(f"{name}: runs {command}, not a `cityos` command")
            continue
        args = command[1:]
        if _cli_accepts(args):
            continue
        path: list[str] = []
        for arg in args:
            if arg.startswith("-"):
                break
            path.append(arg)
        if _cli_accepts(path):
            problems.append(f"{name}: `cityos {' '.join(args)}`: cityos rejects these options")
        elif not any(tuple(path[: len(p)]) == p for p in PLANNED_COMMANDS):
            problems.append(f"{name}: `cityos {' '.join(args)}` is not a cityos command")
    return problems


def check_env_example(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """.env.example lists every variable, leaves secrets empty, and shows the defaults."""
    problems = []
    for use in var_uses(compose):
        if use.name not in env_example:
            problems.append(f"{use.where}: {use.name} is missing from .env.example")
        elif SECRET_VAR.search(use.name) and env_example[use.name]:
            problems.append(f".env.example: secret {use.name} must be empty")
        elif use.op == ":-" and env_example[use.name] and env_example[use.name] != use.arg:
            problems.append(
                f".env.example: {use.name}={env_example[use.name]!r}, compose default {use.arg!r}"
            )
    return problems


def check_topics(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """kafka-init creates exactly the topics of cityos/topics.py."""
    command = _command(_services(compose).get("kafka-init", {}))
    created = [arg for arg in command if not arg.startswith(("-", "/")) and arg != "bash"]
    expected = Topics().all()
    if sorted(created) != sorted(expected):
        return [f"kafka-init creates {created}; cityos.topics.Topics().all() is {expected}"]
    return []


def check_paths(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """Bind-mount sources, build contexts and Dockerfiles exist (relative to the compose file)."""
    resolved = interpolate(compose, example_environment(env_example))
    problems = []
    for name, service in _services(resolved).items():
        for mount in service.get("volumes") or []:
            source = mount.get("source", "") if isinstance(mount, dict) else mount.split(":")[0]
            if source.startswith((".", "/")) and not (REPO_ROOT / source).exists():
                problems.append(f"{name}: bind-mount source {source} does not exist")
        build = service.get("build")
        if isinstance(build, dict):
            context = REPO_ROOT / build.get("context", ".")
            if not (context / build.get("dockerfile", "Dockerfile")).is_file():
                problems.append(f"{name}: Dockerfile {build.get('dockerfile')} does not exist")
    return problems


def check_grafana_provisioning(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """Every $VAR in the provisioning files is in the grafana container's environment."""
    env = _environment(_services(compose).get("grafana", {}))
    problems = []
    for path in sorted(GRAFANA_PROVISIONING.rglob("*.yaml")):
        for use in var_uses(yaml.safe_load(path.read_text())):
            if use.name not in env:
                problems.append(
                    f"{path.relative_to(REPO_ROOT)}: ${use.name} is not set for grafana"
                )
    return problems


def _uses_airflow_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == AIRFLOW_DOCKERFILE


_BARE_AIRFLOW = re.compile(r"(?:^|[\s;&|(])airflow(?:\s|$)")


_AIRFLOW_PARSED: dict[tuple[str, ...], str] = {}  # argument list -> error ("" if accepted)


def _airflow_cli_problems(commands: dict[str, list[str]]) -> dict[str, str]:
    """Airflow's real argument parser on each argument list (one subprocess for the lists not
    parsed yet in this session, with a scratch AIRFLOW_HOME)."""
    new = sorted({tuple(args) for args in commands.values()} - set(_AIRFLOW_PARSED))
    if new:
        script = textwrap.dedent(
            """
            import contextlib, io, json, sys
            from airflow.cli.cli_parser import get_parser
            found = []
            for args in json.load(sys.stdin):
                err = io.StringIO()
                try:
                    with contextlib.redirect_stderr(err):
                        get_parser().parse_args(args)
                    found.append("")
                except SystemExit:
                    found.append((err.getvalue().strip().splitlines() or ["rejected"])[-1])
            print(json.dumps(found))
            """
        )
        with tempfile.TemporaryDirectory() as home:
            done = subprocess.run(
                [sys.executable, "-c", script],
                input=json.dumps(new),
                env={**os.environ, "AIRFLOW_HOME": home, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            )
        _AIRFLOW_PARSED.update(zip(new, json.loads(done.stdout.splitlines()[-1]), strict=True))
    return {where: _AIRFLOW_PARSED[tuple(args)] for where, args in commands.items()}


def check_airflow_patched(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """Every Airflow service starts as `python -m cityos.airflow <args>` with args Airflow's CLI
    takes; healthchecks that run the Airflow CLI go through the patch too."""
    services = {n: s for n, s in _services(compose).items() if _uses_airflow_image(s)}
    if not services:
        return [f"no service is built from {AIRFLOW_DOCKERFILE}"]
    problems = []
    to_parse: dict[str, list[str]] = {}
    for name, service in services.items():
        command = _command(service)
        if command[:3] != AIRFLOW_PATCHED:
            problems.append(
                f"{name}: runs {command}, not `python -m cityos.airflow ...` "
                "(Airflow without CityOS's patches)"
            )
        else:
            to_parse[f"{name}: command"] = command[3:]
        test = (service.get("healthcheck") or {}).get("test") or []
        shell = test[1] if test[:1] == ["CMD-SHELL"] else shlex.join(test[1:])
        if _BARE_AIRFLOW.search(shell):
            problems.append(f"{name}: healthcheck runs a bare `airflow`: {shell}")
        words = shlex.split(shell)
        if "cityos.airflow" in words:
            to_parse[f"{name}: healthcheck"] = words[words.index("cityos.airflow") + 1 :]
    resolved = interpolate(to_parse, example_environment(env_example))
    for where, error in _airflow_cli_problems(resolved).items():
        if error:
            problems.append(f"{where}: Airflow's CLI rejects {resolved[where]}: {error}")
    return problems


def airflow_image_problems(dockerfile: str, shim: str) -> list[str]:
    """The Airflow image installs the shim and puts it first on PATH, so that what the image
    entrypoint runs as `airflow ...` (db check, db migrate, users create) is patched as well."""
    problems = []
    copy_to = re.search(rf"^COPY\b.*\s{re.escape(AIRFLOW_SHIM)}\s+(\S+)\s*$", dockerfile, re.M)
    if copy_to is None:
        return [f"{AIRFLOW_DOCKERFILE} does not COPY {AIRFLOW_SHIM}"]
    target = copy_to[1]
    folder = target.rsplit("/", 1)[0] if target.endswith("/airflow") else target.rstrip("/")
    if "--chmod=755" not in copy_to[0]:
        problems.append(f"{AIRFLOW_DOCKERFILE}: the shim is copied without --chmod=755")
    path = re.search(rf"^ENV\s+PATH={re.escape(folder)}:\$PATH\s*$", dockerfile, re.M)
    if path is None or path.start() < copy_to.start():
        problems.append(f"{AIRFLOW_DOCKERFILE}: {folder} is not put first on PATH after the COPY")
    if not re.search(r"\bpip install\b[^\n]*(?:\\\n[^\n]*)*-e /opt/cityos", dockerfile):
        problems.append(f"{AIRFLOW_DOCKERFILE}: cityos is not pip-installed from /opt/cityos")
    execs = [line for line in shim.splitlines() if line.startswith("exec ")]
    if execs != ['exec python -m cityos.airflow "$@"']:
        problems.append(f'{AIRFLOW_SHIM}: execs {execs}, not `python -m cityos.airflow "$@"`')
    if not shim.startswith("#!/bin/sh"):
        problems.append(f"{AIRFLOW_SHIM}: no #!/bin/sh line")
    return problems


@dataclass(frozen=True)
class MetricsEndpoint:
    """Where a compose service serves cityos.metrics, derived from its command and settings."""

    service: str
    hosts: frozenset[str]  # names it answers to on the network: service name, hostname
    port: int
    path: str
    bind: str


def _setting(env: dict[str, str], name: str) -> Any:
    """A Settings field as the service's environment gives it (else the field's default)."""
    field = Settings.model_fields[name]
    raw = env.get(f"CITYOS_{name.upper()}")
    if raw is None:
        return field.get_default(call_default_factory=True)
    return TypeAdapter(field.annotation).validate_python(raw)  # type: ignore[arg-type]


def _options(args: list[str]) -> dict[str, str]:
    found = {}
    for index, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            key, _, value = arg.partition("=")
            found[key] = value
        elif arg.startswith("--") and index + 1 < len(args):
            found[arg] = args[index + 1]
    return found


def metrics_endpoints(
    compose: dict[str, Any], env_example: dict[str, str]
) -> list[MetricsEndpoint]:
    """Every /metrics a service of the file listens on (a metrics_port left unset: none)."""
    resolved = interpolate(compose, example_environment(env_example))
    found = []
    for name, service in _services(resolved).items():
        command = _command(service)
        if not _uses_cityos_image(service) or command[:1] != ["cityos"]:
            continue
        path = tuple(arg for arg in command[1:] if not arg.startswith("-"))
        env = _environment(service)
        options = _options(command)
        if path[:2] in METRICS_PORT_COMMANDS:
            port, bind = _setting(env, "metrics_port"), _setting(env, "metrics_host")
        elif path[:2] in HTTP_METRICS_COMMANDS:
            port_field, host_field = HTTP_METRICS_COMMANDS[path[:2]]
            port = int(options["--port"]) if "--port" in options else _setting(env, port_field)
            bind = options.get("--host") or _setting(env, host_field)
        else:
            continue
        if port is None:
            continue
        hosts = frozenset(filter(None, [name, service.get("hostname")]))
        found.append(MetricsEndpoint(name, hosts, int(port), "/metrics", bind))
    return found


def _prometheus_mount(service: dict[str, Any]) -> tuple[Path, str] | None:
    """(folder in the repository, where it is mounted) of the config bind mount."""
    for mount in service.get("volumes") or []:
        if isinstance(mount, str) and mount.startswith("./infra/prometheus"):
            source, target = mount.split(":")[:2]
            return REPO_ROOT / source, target.rstrip("/")
    return None


def _prometheus_listen_port(service: dict[str, Any]) -> int:
    for arg in _command(service):
        if arg.startswith("--web.listen-address="):
            return int(arg.rsplit(":", 1)[1])
    return 9090  # Prometheus's default


def _in_container(mount: tuple[Path, str], path: str) -> Path | None:
    folder, target = mount
    return folder / path.removeprefix(target + "/") if path.startswith(target + "/") else None


def load_prometheus_config(compose: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """prometheus.yml as the prometheus service reads it (its --config.file in its mount)."""
    service = _services(compose).get(PROMETHEUS_SERVICE)
    if service is None:
        return None, [f"no {PROMETHEUS_SERVICE} service"]
    mount = _prometheus_mount(service)
    if mount is None:
        return None, [f"{PROMETHEUS_SERVICE}: ./infra/prometheus is not mounted"]
    flags = [a for a in _command(service) if a.startswith("--config.file=")]
    file = _in_container(mount, flags[0].partition("=")[2]) if flags else None
    if file is None or not file.is_file():
        return None, [f"{PROMETHEUS_SERVICE}: --config.file is not a file of {mount[0]}"]
    return yaml.safe_load(file.read_text()), []


def _targets(config: dict[str, Any]) -> Iterator[tuple[str, str, int, str]]:
    """(job, host, port, metrics path) of every static target."""
    for job in config.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, _, port = str(target).rpartition(":")
                yield job["job_name"], host, int(port), job.get("metrics_path", "/metrics")


def check_prometheus(
    compose: dict[str, Any], env_example: dict[str, str], config: dict[str, Any] | None = None
) -> list[str]:
    """Prometheus scrapes exactly the /metrics endpoints the services listen on, reachable
    from its network; its config and rule files are the repository's."""
    services = _services(compose)
    service = services.get(PROMETHEUS_SERVICE)
    if service is None:
        return [f"no {PROMETHEUS_SERVICE} service"]
    problems = []
    image = str(service.get("image", ""))
    if not re.fullmatch(r"prom/prometheus:v\d+\.\d+\.\d+", image):
        problems.append(f"{PROMETHEUS_SERVICE}: image {image!r} is not a pinned prom/prometheus")
    if config is None:
        config, missing = load_prometheus_config(compose)
        if config is None:
            return problems + missing
    mount = _prometheus_mount(service)
    for rule_file in config.get("rule_files") or []:
        file = _in_container(mount, rule_file) if mount else None
        if file is None or not file.is_file():
            problems.append(f"prometheus.yml: rule file {rule_file} is not in ./infra/prometheus")
    own_port = _prometheus_listen_port(service)
    networks = set(service.get("networks") or [])
    endpoints = metrics_endpoints(compose, env_example)
    scraped: set[MetricsEndpoint] = set()
    for job, host, port, path in _targets(config):
        if host == "localhost" and port == own_port:
            continue  # Prometheus itself
        match = [e for e in endpoints if host in e.hosts and e.port == port and e.path == path]
        if not match:
            served = [f"{sorted(e.hosts)[0]}:{e.port}{e.path}" for e in endpoints]
            problems.append(
                f"prometheus.yml: job {job} scrapes {host}:{port}{path}, where no service "
                f"serves metrics (services serve {served})"
            )
        scraped.update(match)
    for endpoint in endpoints:
        if endpoint.bind in ("127.0.0.1", "localhost", "::1"):
            problems.append(
                f"{endpoint.service}: metrics listen on {endpoint.bind}:{endpoint.port} only, "
                "out of Prometheus's reach (CITYOS_METRICS_HOST / --host 0.0.0.0)"
            )
        if endpoint not in scraped:
            problems.append(
                f"{endpoint.service}: serves metrics on :{endpoint.port}{endpoint.path}; "
                "prometheus.yml does not scrape it"
            )
        if not networks & set(services[endpoint.service].get("networks") or []):
            problems.append(f"{endpoint.service}: shares no network with {PROMETHEUS_SERVICE}")
    return problems


def _duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d|w|y)", str(text))
    if match is None:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return int(match[1]) * units[match[2]]


def check_prometheus_datasource(compose: dict[str, Any], env_example: dict[str, str]) -> list[str]:
    """Grafana's Prometheus data source points at the prometheus service's port, on a shared
    network, with the scrape interval as its time interval; one default data source in all."""
    services = _services(compose)
    prometheus, grafana = services.get(PROMETHEUS_SERVICE), services.get("grafana")
    if prometheus is None or grafana is None:
        return ["no prometheus or no grafana service"]
    sources = yaml.safe_load(PROMETHEUS_DATASOURCE.read_text())["datasources"]
    problems = []
    found = [s for s in sources if s.get("uid") == "cityos-prometheus"]
    if len(found) != 1:
        return [f"{PROMETHEUS_DATASOURCE.name}: no single data source with uid cityos-prometheus"]
    (source,) = found
    url = f"http://{PROMETHEUS_SERVICE}:{_prometheus_listen_port(prometheus)}"
    if source.get("type") != "prometheus" or source.get("url") != url:
        problems.append(
            f"{PROMETHEUS_DATASOURCE.name}: type {source.get('type')!r} url {source.get('url')!r}, "
            f"expected 'prometheus' {url!r}"
        )
    if not set(prometheus.get("networks") or []) & set(grafana.get("networks") or []):
        problems.append("grafana shares no network with prometheus")
    config, missing = load_prometheus_config(compose)
    interval = (source.get("jsonData") or {}).get("timeInterval")
    if config is None:
        problems += missing
    elif interval is None or _duration_seconds(interval) != _duration_seconds(
        config["global"]["scrape_interval"]
    ):
        problems.append(
            f"{PROMETHEUS_DATASOURCE.name}: timeInterval {interval!r}, prometheus.yml scrapes "
            f"every {config['global']['scrape_interval']}"
        )
    defaults = [
        s["uid"]
        for path in sorted((GRAFANA_PROVISIONING / "datasources").glob("*.yaml"))
        for s in yaml.safe_load(path.read_text())["datasources"]
        if s.get("isDefault")
    ]
    if len(defaults) != 1:
        problems.append(f"provisioned default data sources: {defaults}; Grafana takes one")
    return problems


CHECKS: list[Callable[[dict[str, Any], dict[str, str]], list[str]]] = [
    check_schema,
    check_healthchecks,
    check_depends_on,
    check_secrets,
    check_cityos_settings,
    check_ports,
    check_references,
    check_commands,
    check_env_example,
    check_topics,
    check_paths,
    check_grafana_provisioning,
    check_airflow_patched,
    check_prometheus,
    check_prometheus_datasource,
]


# ------------------------------------------------------------------------------ tests


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return load_env_example()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_compose_file_passes(
    check: Callable[[dict[str, Any], dict[str, str]], list[str]],
    compose: dict[str, Any],
    env_example: dict[str, str],
) -> None:
    assert check(compose, env_example) == []


def test_every_secret_is_required_and_empty_in_the_example(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    secrets = {use.name for use in var_uses(compose) if SECRET_VAR.search(use.name)}
    assert {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "AIRFLOW_JWT_SECRET"} <= secrets
    assert all(env_example[name] == "" for name in secrets)
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD is required"):
        interpolate(compose, {k: v for k, v in env_example.items() if not SECRET_VAR.search(k)})


def _mutate(data: dict[str, Any], op: str, path: str, value: Any) -> None:
    """Apply one edit to a parsed compose file: set, delete, append to or remove from a list."""
    *parents, last = path.split("/")
    node: Any = data
    for key in parents:
        node = node[key]
    edits: dict[str, Callable[[], None]] = {
        "set": lambda: node.__setitem__(last, value),
        "delete": lambda: node.__delitem__(last),
        "append": lambda: node[last].append(value),
        "remove": lambda: node[last].remove(value),
    }
    edits[op]()


# (id, edit, path, value, the rule that must object, a word its report must contain)
# fmt: off
MUTATIONS: list[tuple[str, str, str, Any, Callable[..., list[str]], str]] = [
    ("schema-typo", "set", "services/kafka/helthcheck", {}, check_schema, "helthcheck"),
    ("schema-type", "set", "services/kafka/healthcheck/interval", 10, check_schema, "interval"),
    ("no-healthcheck", "delete", "services/kafka/healthcheck", None, check_healthchecks, "kafka"),
    ("one-shot-restarts", "set", "services/kafka-init/restart", "on-failure",
     check_healthchecks, "kafka-init"),
    ("depends-list", "set", "services/twin/depends_on", ["kafka"], check_depends_on, "twin"),
    ("depends-no-condition", "set", "services/twin/depends_on/kafka-init", {"required": True},
     check_depends_on, "without a readiness condition"),
    ("healthy-one-shot", "set", "services/twin/depends_on/kafka-init",
     {"condition": "service_healthy"}, check_depends_on, "kafka-init"),
    ("literal-password", "set", "services/postgres/environment/POSTGRES_PASSWORD", "hunter2",
     check_secrets, "POSTGRES_PASSWORD"),
    ("defaulted-password", "set", "services/postgres/environment/POSTGRES_PASSWORD",
     "${POSTGRES_PASSWORD:-changeme}", check_secrets, "POSTGRES_PASSWORD"),
    ("literal-url", "set", "services/nlq/environment/CITYOS_DATABASE_URL",
     "postgresql://cityos:hunter2@postgres:5432/cityos", check_secrets, "CITYOS_DATABASE_URL"),
    ("unknown-setting", "set", "services/twin/environment/CITYOS_TWIN_SPEED", "60",
     check_cityos_settings, "CITYOS_TWIN_SPEED"),
    ("drifted-default", "set", "services/kafka-init/environment/CITYOS_KAFKA_PARTITIONS",
     "${CITYOS_KAFKA_PARTITIONS:-8}", check_cityos_settings, "CITYOS_KAFKA_PARTITIONS"),
    ("port-collision", "set", "services/grafana/ports", ["127.0.0.1:8080:3000"],
     check_ports, "8080"),
    ("undeclared-volume", "append", "services/streaming/volumes", "scratch:/tmp/scratch",
     check_references, "scratch"),
    ("undeclared-network", "set", "services/twin/networks", ["backend"],
     check_references, "backend"),
    ("unused-volume", "set", "volumes/orphan", None, check_references, "orphan"),
    ("unknown-command", "set", "services/twin/command", ["cityos", "stream", "fly"],
     check_commands, "not a cityos command"),
    ("unknown-option", "set", "services/twin/command", ["cityos", "status", "--bogus"],
     check_commands, "rejects these options"),
    ("not-cityos", "set", "services/nlq/command", ["uvicorn", "app:app"],
     check_commands, "not a `cityos` command"),
    ("var-not-in-example", "set", "services/nlq/environment/EXTRA", "${NLQ_WORKERS:-2}",
     check_env_example, "NLQ_WORKERS"),
    ("example-default-drift", "set", "services/grafana/ports",
     ["127.0.0.1:${GRAFANA_HOST_PORT:-3001}:3000"], check_env_example, "GRAFANA_HOST_PORT"),
    ("topic-missing", "remove", "services/kafka-init/command", "control", check_topics, "control"),
    ("missing-mount", "append", "services/kafka/volumes", "./infra/docker/kafka/nope.sh:/x.sh",
     check_paths, "nope.sh"),
    ("missing-dockerfile", "set", "services/nlq/build", {"context": ".", "dockerfile": "nope"},
     check_paths, "nope"),
    ("grafana-env", "delete", "services/grafana/environment/GRAFANA_DB_PASSWORD", None,
     check_grafana_provisioning, "GRAFANA_DB_PASSWORD"),
    ("airflow-unpatched", "set", "services/airflow-scheduler/command", ["scheduler"],
     check_airflow_patched, "airflow-scheduler"),
    ("airflow-init-unpatched", "set", "services/airflow-init/command", ["version"],
     check_airflow_patched, "airflow-init"),
    ("airflow-bad-args", "set", "services/airflow-api-server/command",
     ["python", "-m", "cityos.airflow", "apiserver"], check_airflow_patched, "rejects"),
    ("airflow-bare-healthcheck", "set", "services/airflow-dag-processor/healthcheck/test",
     ["CMD-SHELL", "airflow jobs check --job-type DagProcessorJob"],
     check_airflow_patched, "bare `airflow`"),
    ("metrics-port-drift", "set", "services/streaming/environment/CITYOS_METRICS_PORT", "9200",
     check_prometheus, "streaming"),
    ("metrics-loopback", "delete", "services/streaming/environment/CITYOS_METRICS_HOST", None,
     check_prometheus, "127.0.0.1"),
    ("metrics-off", "delete", "services/streaming/environment/CITYOS_METRICS_PORT", None,
     check_prometheus, "streaming:9108"),
    ("nlq-port-drift", "set", "services/nlq/command",
     ["cityos", "nlq", "serve", "--host", "0.0.0.0", "--port", "8085"], check_prometheus, "8085"),
    ("prometheus-latest", "set", "services/prometheus/image", "prom/prometheus:latest",
     check_prometheus, "pinned"),
    ("prometheus-no-config", "set", "services/prometheus/volumes", ["prometheus-data:/prometheus"],
     check_prometheus, "not mounted"),
    ("prometheus-moved", "set", "services/prometheus/command",
     ["--config.file=/etc/prometheus/prometheus.yml", "--web.listen-address=:9091"],
     check_prometheus_datasource, "9091"),
    ("prometheus-other-network", "set", "services/prometheus/networks", ["monitoring"],
     check_prometheus, "shares no network"),
]
# fmt: on


@pytest.mark.parametrize(
    ("op", "path", "value", "check", "expected"),
    [m[1:] for m in MUTATIONS],
    ids=[m[0] for m in MUTATIONS],
)
def test_each_rule_reports_a_broken_copy(
    op: str,
    path: str,
    value: Any,
    check: Callable[[dict[str, Any], dict[str, str]], list[str]],
    expected: str,
    compose: dict[str, Any],
    env_example: dict[str, str],
) -> None:
    broken = copy.deepcopy(compose)
    _mutate(broken, op, path, copy.deepcopy(value))
    problems = check(broken, env_example)
    assert any(expected in problem for problem in problems), problems


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "airflow.Dockerfile"])
def test_dockerfile_settings_are_settings_fields(dockerfile: str) -> None:
    text = (REPO_ROOT / "infra" / "docker" / dockerfile).read_text()
    names = set(re.findall(r"\bCITYOS_[A-Z0-9_]+", text))
    assert names, f"{dockerfile} sets no CITYOS_* setting"
    unknown = [n for n in names if n.removeprefix("CITYOS_").lower() not in Settings.model_fields]
    assert unknown == []


def test_a_secret_filled_in_the_example_is_reported(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    leaked = {**env_example, "POSTGRES_PASSWORD": "hunter2"}
    assert any("POSTGRES_PASSWORD" in p for p in check_env_example(compose, leaked))


def test_a_setting_in_the_example_that_settings_lacks_is_reported(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    stale = {**env_example, "CITYOS_SPARK_CORES": "2"}
    assert any("CITYOS_SPARK_CORES" in p for p in check_cityos_settings(compose, stale))


# ------------------------------------------------------------------------------ Airflow image


def _airflow_image_texts() -> tuple[str, str]:
    return (REPO_ROOT / AIRFLOW_DOCKERFILE).read_text(), (REPO_ROOT / AIRFLOW_SHIM).read_text()


def test_airflow_image_puts_the_patched_airflow_first_on_path() -> None:
    dockerfile, shim = _airflow_image_texts()
    assert airflow_image_problems(dockerfile, shim) == []
    assert os.access(REPO_ROOT / AIRFLOW_SHIM, os.X_OK)
    ignore = (REPO_ROOT / f"{AIRFLOW_DOCKERFILE}.dockerignore").read_text().splitlines()
    assert "!infra/docker/airflow/" in ignore  # else the build context lacks the shim


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("ENV PATH=/opt/cityos/bin:$PATH", "ENV PATH=$PATH:/opt/cityos/bin", "first on PATH"),
        ("--chmod=755 ", "", "--chmod=755"),
        (f"{AIRFLOW_SHIM} ", "infra/docker/airflow/other ", "does not COPY"),
    ],
)
def test_a_broken_airflow_image_is_reported(old: str, new: str, expected: str) -> None:
    dockerfile, shim = _airflow_image_texts()
    assert old in dockerfile
    problems = airflow_image_problems(dockerfile.replace(old, new), shim)
    assert any(expected in p for p in problems), problems
    bare = shim.replace("exec python -m cityos.airflow", "exec airflow")
    assert any("execs" in p for p in airflow_image_problems(dockerfile, bare))


_PATCH_PROBE = """
import atexit, os

def _probe():
    from pydantic._internal import _discriminated_union as unions
    patched = getattr(unions.apply_discriminator, "_cityos_patched", False)
    print("PROBE patched" if patched else "PROBE unpatched", flush=True)
    if os.environ.get("PROBE_EXECUTION_API"):
        from airflow.api_fastapi.execution_api.app import create_task_execution_api_app
        create_task_execution_api_app()
        print("PROBE execution API built", flush=True)

atexit.register(_probe)
"""


def _run_probed(tmp_path: Path, command: list[str], **env: str) -> str:
    """Run ``command`` with a ``python`` on PATH that probes, at exit, whether the process ran
    with CityOS's patches (a sitecustomize on PYTHONPATH registers the probe)."""
    bin_dir, probe_dir = tmp_path / "bin", tmp_path / "probe"
    bin_dir.mkdir(exist_ok=True)
    probe_dir.mkdir(exist_ok=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    (probe_dir / "sitecustomize.py").write_text(_PATCH_PROBE)
    done = subprocess.run(
        command,
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(probe_dir),
            "AIRFLOW_HOME": str(tmp_path / "airflow"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_image_airflow_runs_airflow_behind_the_patch(tmp_path: Path) -> None:
    """The shim as the image runs it: Airflow's CLI answers, in a process whose pydantic is
    patched, so the execution API (what the api-server serves) can be built there."""
    out = _run_probed(
        tmp_path, ["sh", str(REPO_ROOT / AIRFLOW_SHIM), "version"], PROBE_EXECUTION_API="1"
    )
    assert re.search(r"^\d+\.\d+\.\d+$", out, re.M), out
    assert "PROBE patched" in out and "PROBE execution API built" in out, out
    # the probe tells the two apart: Airflow's own entry point runs unpatched
    plain = _run_probed(tmp_path, ["python", "-m", "airflow", "version"])
    assert "PROBE unpatched" in plain, plain


# ------------------------------------------------------------------------------ metrics, Prometheus


def _calls_serve_metrics_with_settings(function: Callable[..., Any]) -> bool:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else ast.unparse(node.func)
        args = [ast.unparse(arg) for arg in node.args]
        if name == "serve_metrics" and args[:2] == [
            "settings.metrics_port",
            "settings.metrics_host",
        ]:
            return True
    return False


def _cli_callback(path: tuple[str, ...]) -> Callable[..., Any]:
    command: Any = typer.main.get_command(cityos_cli)
    for part in path:
        command = command.commands[part]
    return command.callback


@pytest.mark.parametrize("path", sorted(METRICS_PORT_COMMANDS), ids=" ".join)
def test_metrics_port_commands_serve_metrics(path: tuple[str, ...]) -> None:
    module_name, _, function_name = METRICS_PORT_COMMANDS[path].partition(":")
    function = getattr(__import__(module_name, fromlist=[function_name]), function_name)
    assert _calls_serve_metrics_with_settings(function)
    # the CLI command is that function, or runs it
    callback = _cli_callback(path)
    source = inspect.getsource(callback)
    same = (callback.__module__, callback.__qualname__) == (module_name, function_name)
    assert same or (module_name in source and f"{function_name}(" in source)


def test_the_serve_metrics_probe_can_fail() -> None:
    def off(settings: Settings) -> None:
        metrics.serve_metrics(None, settings.metrics_host)

    assert not _calls_serve_metrics_with_settings(off)


def test_nlq_service_serves_metrics(compose: dict[str, Any], env_example: dict[str, str]) -> None:
    """The route Prometheus scrapes on the nlq service: the real app (no lifespan: no DB)."""
    from fastapi.testclient import TestClient

    from cityos.nlq.service import create_app

    (endpoint,) = [e for e in metrics_endpoints(compose, env_example) if e.service == "nlq"]
    settings = Settings(
        kafka_bootstrap="kafka:9092",
        database_url=SecretStr("postgresql://cityos:unused@127.0.0.1:1/cityos"),
        nlq_whatif_minutes=0,
    )
    metrics.NLQ_REQUESTS.labels("answer")  # a child, so the family shows samples
    response = TestClient(create_app(settings)).get(endpoint.path)
    assert response.status_code == 200
    assert 'cityos_nlq_requests_total{kind="answer"}' in response.text


def test_metrics_endpoints_follow_the_services_settings(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    found = {e.service: e for e in metrics_endpoints(compose, env_example)}
    assert set(found) == {"streaming", "twin", "nlq"}
    for name in ("streaming", "twin"):
        environment = _environment(_services(compose)[name])
        assert found[name].port == int(environment["CITYOS_METRICS_PORT"])
    assert found["nlq"].port == int(_options(_command(_services(compose)["nlq"]))["--port"])
    assert all(e.bind == "0.0.0.0" for e in found.values())  # noqa: S104


def test_a_stray_scrape_target_is_reported(
    compose: dict[str, Any], env_example: dict[str, str]
) -> None:
    config, _ = load_prometheus_config(compose)
    assert config is not None
    broken = copy.deepcopy(config)
    broken["scrape_configs"].append(
        {"job_name": "cityos-twin", "static_configs": [{"targets": ["twin:9108"]}]}
    )
    assert any("twin:9108" in p for p in check_prometheus(compose, env_example, broken))
    broken = copy.deepcopy(config)
    broken["rule_files"] = ["/etc/prometheus/missing.yml"]
    assert any("missing.yml" in p for p in check_prometheus(compose, env_example, broken))


def _exposed_names() -> set[str]:
    """Sample names cityos.metrics.REGISTRY exposes (per type: _total, _bucket, ...)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names = set()
    for family in metrics.REGISTRY.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def rules_problems(rules: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Prometheus alerting rules: the structure Prometheus loads, metrics CityOS exposes,
    jobs prometheus.yml has."""
    jobs = {job["job_name"] for job in config.get("scrape_configs") or []}
    exposed = _exposed_names() | {"up"}
    problems = []
    groups = rules.get("groups")
    if not isinstance(groups, list) or not groups:
        return ["rules: no groups"]
    for group in groups:
        if set(group) - {"name", "interval", "limit", "rules"} or not group.get("name"):
            problems.append(f"rules: group {group.get('name')!r} has unknown keys or no name")
        for rule in group.get("rules") or []:
            name = rule.get("alert")
            if not name or not isinstance(rule.get("expr"), str):
                problems.append(f"rules: {rule} is not an alerting rule (alert, expr)")
                continue
            if set(rule) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}:
                problems.append(f"rules: {name} has unknown keys {sorted(rule)}")
            try:
                _duration_seconds(rule.get("for", "0s"))
            except ValueError as err:
                problems.append(f"rules: {name}: {err}")
            if (rule.get("labels") or {}).get("severity") not in ("critical", "warning"):
                problems.append(f"rules: {name}: severity is not critical or warning")
            if not (rule.get("annotations") or {}).get("summary"):
                problems.append(f"rules: {name}: no summary annotation")
            for metric in re.findall(r"\b(cityos_[a-z0-9_]+|up)\b(?!\s*\()", rule["expr"]):
                if metric not in exposed:
                    problems.append(f"rules: {name}: {metric} is not a metric CityOS exposes")
            for job in re.findall(r'job="([^"]+)"', rule["expr"]):
                if job not in jobs:
                    problems.append(f"rules: {name}: job {job!r} is not in prometheus.yml")
    return problems


def test_prometheus_rules_are_loadable_and_watch_real_metrics(compose: dict[str, Any]) -> None:
    config, _ = load_prometheus_config(compose)
    assert config is not None
    (rules_path,) = config["rule_files"]
    mount = _prometheus_mount(_services(compose)[PROMETHEUS_SERVICE])
    assert mount is not None
    rules_file = _in_container(mount, rules_path)
    assert rules_file is not None
    rules = yaml.safe_load(rules_file.read_text())
    assert rules_problems(rules, config) == []
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert {"CityOSStreamingDown", "CityOSStreamingRestarting"} <= alerts
    broken = copy.deepcopy(rules)
    broken["groups"][0]["rules"][1]["expr"] = "increase(cityos_supervisor_restart_total[15m]) > 0"
    broken["groups"][0]["rules"][0]["expr"] = 'up{job="streaming"} == 0'
    broken["groups"][0]["rules"][0]["for"] = "2 minutes"
    problems = rules_problems(broken, config)
    assert any("cityos_supervisor_restart_total" in p for p in problems), problems
    assert any("'streaming'" in p for p in problems), problems
    assert any("2 minutes" in p for p in problems), problems


# ------------------------------------------------------------------------------ lock constraints


def _lock_constraints_module() -> Any:
    import importlib.util

    path = REPO_ROOT / "infra" / "docker" / "airflow" / "lock_constraints.py"
    spec = importlib.util.spec_from_file_location("lock_constraints", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_constraints_pin_only_what_the_base_image_lacks() -> None:
    module = _lock_constraints_module()
    lock = (REPO_ROOT / "requirements.lock").read_text()
    pins = module.lock_pins(lock)
    assert pins["pydantic"].startswith("pydantic==") and pins["pyspark"] == "pyspark==4.1.1"
    # the base image has Airflow and pydantic (any version): those stay as the image has them
    lines = module.constraints(lock, ["apache-airflow", "Pydantic", "apache_airflow_core"])
    names = {module.normalize(line.partition("==")[0]) for line in lines}
    assert {"pyspark", "torch", "geopandas"} <= names
    assert not names & {"apache-airflow", "pydantic", "apache-airflow-core"}
    assert len(lines) == len(pins) - 3


def test_the_cityos_image_carries_every_package_of_the_project() -> None:
    """Each folder pyproject.toml maps a package to is copied into the image and let through
    its .dockerignore (an image without anomaly/ could not score windows)."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    folders = set(project["tool"]["setuptools"]["package-dir"].values())
    dockerfile = (REPO_ROOT / "infra/docker/Dockerfile").read_text(encoding="utf-8")
    copied = set(re.findall(r"^COPY (?!--)(\S+)/ \1/$", dockerfile, re.M))
    ignore = (REPO_ROOT / "infra/docker/Dockerfile.dockerignore").read_text(encoding="utf-8")
    let_through = {line[1:].rstrip("/") for line in ignore.splitlines() if line.startswith("!")}
    assert folders - copied == set()
    assert folders - let_through == set()

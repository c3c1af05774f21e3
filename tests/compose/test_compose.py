"""docker-compose.yml, checked without Docker (unit tier).

The stack cannot be started on these machines (no Docker engine), so its file is checked the way
`docker compose config` would check it and then some: the vendored Compose Specification schema
(infra/compose-spec/, see SOURCE.md there) plus CityOS's own rules, each a small function that
returns a list of problems. Every rule is shown to fire by a test that breaks a copy of the file.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from typer.testing import CliRunner

from cityos.cli import app as cityos_cli
from cityos.settings import REPO_ROOT, Settings, read_env_file
from cityos.topics import Topics

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
SCHEMA_FILE = REPO_ROOT / "infra" / "compose-spec" / "compose-spec.json"
GRAFANA_PROVISIONING = REPO_ROOT / "infra" / "grafana" / "provisioning"
CITYOS_DOCKERFILE = "infra/docker/Dockerfile"

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
            return value if (value if op == ":-" else value is not None) else arg
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

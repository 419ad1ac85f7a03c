"""No Docker engine runs here, so the deployment files are checked against the CLI and settings instead."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from vicap_jobs.cli.main import cli
from vicap_jobs.settings import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def _parses(args: list[str]) -> None:
    """The arguments form a valid vicap-jobs command line (subcommands, options, choices, required ones)."""
    command: click.Command = cli
    parent = click.Context(cli, info_name="vicap-jobs")
    rest = list(args)
    while isinstance(command, click.Group):
        assert rest, f"{args} names a command group, not a command"
        sub = command.get_command(parent, rest[0])
        assert sub is not None, f"unknown command {rest[0]!r} in {args}"
        parent = click.Context(sub, info_name=rest[0], parent=parent)
        command, rest = sub, rest[1:]
    command.make_context(parent.info_name, rest, parent=parent.parent)  # raises on a bad option or value


#: ``${NAME:-default}`` / ``${NAME-default}`` as docker compose interpolates them when NAME is unset.
INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(:?-)([^}]*)\}")
VICAP_SERVICES = ("worker-gpu0", "worker-gpu1", "scheduler", "flower", "web", "cli")


def _defaults(value: str) -> str:
    """``value`` with every compose interpolation replaced by its default (what an empty .env gives)."""
    return INTERPOLATION.sub(lambda m: m.group(3), value)


def test_core_services_present(compose: dict) -> None:
    services = compose["services"]
    for name in ("redis", "postgres", "migrate", "scheduler", "flower", "seaweedfs", "storage-init"):
        assert name in services
    assert [n for n in services if n.startswith("worker-gpu")] == ["worker-gpu0", "worker-gpu1"]


def test_commands_are_valid_cli_invocations(compose: dict) -> None:
    for _name, service in compose["services"].items():
        if (
            service.get("image", "").startswith("vicap-jobs")
            and "entrypoint" not in service
            and "--help" not in service["command"]
        ):
            _parses(service["command"])


def test_one_worker_per_gpu_matches_its_device(compose: dict) -> None:
    for name, service in compose["services"].items():
        match = re.fullmatch(r"worker-gpu(\d+)", name)
        if not match:
            continue
        index = match.group(1)
        assert service["command"] == ["worker", "--gpu", index]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["device_ids"] == [index]
        assert f"gpu{index}@" in " ".join(service["healthcheck"]["test"])


def test_environment_names_real_settings(compose: dict) -> None:
    fields = {f"VICAP_{name.upper()}" for name in Settings.model_fields}
    for service in compose["services"].values():
        for key in service.get("environment") or {}:
            if key.startswith("VICAP_"):
                assert key in fields, f"{key} is not a setting"
    env = compose["services"]["worker-gpu0"]["environment"]
    settings = {k.removeprefix("VICAP_").lower(): _defaults(v) for k, v in env.items() if k.startswith("VICAP_")}
    Settings(**settings)  # validates URLs


def test_migrate_waits_for_database_and_workers_wait_for_migrate(compose: dict) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("worker-gpu0", "worker-gpu1", "scheduler", "flower"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_healthchecks_and_localhost_only_flower(compose: dict) -> None:
    services = compose["services"]
    for name in ("redis", "postgres", "worker-gpu0", "flower"):
        assert "healthcheck" in services[name], name
    assert all(port.startswith("127.0.0.1:") for port in services["flower"]["ports"])


def test_web_service_is_published_on_loopback_only_and_needs_its_token(compose: dict) -> None:
    web = compose["services"]["web"]
    assert web["command"][0] == "web" and "--host" in web["command"]
    assert web["ports"] and all(port.startswith("127.0.0.1:") for port in web["ports"])
    assert "VICAP_WEB_TOKEN" in web["environment"] and web["environment"]["VICAP_WEB_ROOTS"] == "/photos"
    assert (
        web["environment"]["VICAP_DATABASE_URL"]
        == compose["services"]["worker-gpu0"]["environment"]["VICAP_DATABASE_URL"]
    )
    assert web["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_volumes_for_home_and_photos(compose: dict) -> None:
    volumes = compose["services"]["worker-gpu0"]["volumes"]
    assert any(v.endswith(":/var/lib/vicap-jobs") for v in volumes)
    assert any(":/photos" in v for v in volumes)


def test_dockerfile_entrypoint_and_variants() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["vicap-jobs"]' in text
    assert "ARG VARIANT=gpu" in text and "base-cpu" in text and "base-gpu" in text
    assert "VICAP_HOME=/var/lib/vicap-jobs" in text


def test_object_store_on_loopback_with_a_bucket_before_any_vicap_service(compose: dict) -> None:
    services = compose["services"]
    store = services["seaweedfs"]
    assert store["image"].startswith("chrislusf/seaweedfs:") and not store["image"].endswith(":latest")
    assert "server" in store["command"] and "-s3" in store["command"]
    assert store["ports"] and all(port.startswith("127.0.0.1:") for port in store["ports"])
    assert "healthcheck" in store and any(v.endswith(":/data") for v in store["volumes"])
    init = services["storage-init"]
    assert init["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
    bucket = _defaults(" ".join(init["command"]))
    assert "s3.bucket.create -name vicap" in bucket
    for name in ("worker-gpu0", "worker-gpu1", "scheduler", "web"):
        assert services[name]["depends_on"]["storage-init"]["condition"] == "service_completed_successfully", name


def test_vicap_services_reach_the_store_through_the_standard_aws_variables(compose: dict) -> None:
    """VICAP_ARTIFACTS_URL names the bucket storage-init creates; credentials are the AWS_* variables."""
    for name in VICAP_SERVICES:
        env = compose["services"][name]["environment"]
        assert _defaults(env["VICAP_ARTIFACTS_URL"]) == "s3://vicap/artifacts", name
        assert _defaults(env["AWS_ENDPOINT_URL"]) == "http://seaweedfs:8333", name
        for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[variable].startswith(f"${{{variable}:-"), f"{name}: {variable} must come from env/.env"
    store_env = compose["services"]["seaweedfs"]["environment"]
    worker_env = compose["services"]["worker-gpu0"]["environment"]
    assert store_env["AWS_SECRET_ACCESS_KEY"] == worker_env["AWS_SECRET_ACCESS_KEY"]  # one identity, same default


def test_no_credential_is_written_in_the_file_except_marked_dev_defaults() -> None:
    for number, line in enumerate((DOCKER / "compose.yml").read_text().splitlines(), start=1):
        if re.match(r"\s*AWS_(SECRET_ACCESS_KEY|ACCESS_KEY_ID):\s*\S", line):
            assert "${AWS_" in line and "DEV DEFAULT" in line, f"compose.yml line {number}: {line.strip()}"

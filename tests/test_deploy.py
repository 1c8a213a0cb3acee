"""The Kubernetes manifests in deploy/kubernetes/: the ConfigMap's TOML is a valid s3stream config with
leases on, the Deployment runs it from the image the repository's Dockerfile builds, its probes reach
the health endpoints where the container really serves them, and the pod is given longer than
``shutdown_grace`` to drain on SIGTERM. (Schemas, Pod Security and the image's agreement with the
manifests: tests/test_manifests.py.)
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from s3stream.cli import main
from s3stream.config import Settings, build_settings
from s3stream.integrations.routing import handler_names
from s3stream.pipeline.handlers import build_handler

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"


def load(name: str) -> dict[str, Any]:
    """The one document of a manifest."""
    docs = [d for d in yaml.safe_load_all((KUBE / name).read_text(encoding="utf-8")) if d is not None]
    assert len(docs) == 1, f"{name}: expected one document, got {len(docs)}"
    doc: dict[str, Any] = docs[0]
    return doc


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as ``(INSTRUCTION, arguments)``, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def image_env() -> dict[str, str]:
    """The environment the Dockerfile's ``ENV`` instructions give every container of the image."""
    env: dict[str, str] = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            env.update(token.split("=", 1) for token in shlex.split(rest) if "=" in token)
    return env


def container() -> dict[str, Any]:
    containers = load("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    only: dict[str, Any] = containers[0]
    return only


def container_env() -> dict[str, str]:
    """The container's literal ``env`` values (Secret references left out)."""
    return {e["name"]: str(e["value"]) for e in container().get("env", []) if "value" in e}


def config_toml() -> dict[str, Any]:
    return tomllib.loads(load("configmap.yaml")["data"]["config.toml"])


def effective_settings() -> Settings:
    """The settings the container runs with: the ConfigMap's TOML, then the image's and the
    Deployment's environment (``S3STREAM_…`` overrides, AWS_REGION)."""
    return build_settings(config_toml(), environ={**image_env(), **container_env()})


def probe_port(probe: dict[str, Any]) -> int:
    """A probe's port as a number (a named port resolved through the container's ports)."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container()["ports"] if "name" in p}
    assert port in named, f"probe port {port!r} is not a named container port"
    return int(named[port])


def test_configmap_toml_is_a_valid_config_with_leases_metrics_and_a_working_handler() -> None:
    """The ConfigMap's TOML validates with build_settings on its own, enables leases (30 s) for a named
    group, serves metrics on 9464 on every interface, has one source on a topic, and every handler
    it names builds (what ``s3stream config check`` checks)."""
    settings = build_settings(config_toml(), environ={})
    assert settings.consumer.leases.enabled
    assert settings.consumer.leases.duration == 30
    assert settings.consumer.group != "default"
    assert settings.consumer.checkpoint.store == "s3"  # leases need checkpoints every member sees
    assert (settings.metrics.host, settings.metrics.port) == ("0.0.0.0", 9464)
    assert len(settings.sources) == 1
    assert settings.sources[0].bucket
    assert settings.sources[0].prefix
    for name in {name for src in settings.sources for name in handler_names(src)}:
        spec = settings.handlers.get(name)
        build_handler(spec.use if spec else name, spec.options() if spec else None, name=name)


def test_deployment_runs_the_mounted_config_with_the_images_entrypoint() -> None:
    """Three replicas of s3stream:latest; the Dockerfile's ENTRYPOINT is ``s3stream``, so the args are
    ``run --config FILE`` (which the CLI parses) and FILE is the ConfigMap's key where the ConfigMap is
    mounted."""
    deployment = load("deployment.yaml")
    assert deployment["kind"] == "Deployment"
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    c = container()
    assert c["image"] == "s3stream:latest"
    assert ("ENTRYPOINT", '["s3stream"]') in dockerfile_instructions()
    assert c["args"] == ["run", "--config", "/etc/s3stream/config.toml"]
    name, *rest = c["args"]
    command = main.get_command(click.Context(main), name)
    assert command is not None
    assert command.make_context(name, rest).params["config"] == "/etc/s3stream/config.toml"

    configmap = load("configmap.yaml")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/s3stream")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert "config.toml" in configmap["data"]


def test_probes_hit_healthz_and_readyz_on_the_port_the_container_serves() -> None:
    """Liveness probes /healthz and readiness /readyz, both on the container port 9464, which is
    the metrics port the container really listens on: the config's, with nothing in the image's or
    the Deployment's environment overriding it; and it listens on every interface, so the kubelet
    reaches it on the pod's IP."""
    c = container()
    settings = effective_settings()
    assert not [name for name in {**image_env(), **container_env()} if name.startswith("S3STREAM_")]
    assert settings.metrics.port == config_toml()["metrics"]["port"] == 9464
    assert settings.metrics.host == "0.0.0.0"
    assert {p["containerPort"] for p in c["ports"]} == {settings.metrics.port}
    live, ready = c["livenessProbe"], c["readinessProbe"]
    assert live["httpGet"]["path"] == "/healthz"
    assert ready["httpGet"]["path"] == "/readyz"
    for probe in (live, ready):
        assert probe_port(probe) == settings.metrics.port
        assert 1 <= probe["periodSeconds"] <= 30
        assert probe["timeoutSeconds"] < probe["periodSeconds"]
    # A member stuck for longer than its leases last should be restarted, not left to linger.
    assert live["periodSeconds"] * live["failureThreshold"] <= 2 * settings.consumer.leases.duration


def test_termination_grace_exceeds_shutdown_grace_and_credentials_come_from_the_service_account() -> None:
    """terminationGracePeriodSeconds leaves room past consumer.shutdown_grace for the final commit and
    lease release; no AWS key is given to the pod (its ServiceAccount's role is), and the region
    the pods sign for is AWS_REGION's, the config naming none."""
    spec = load("deployment.yaml")["spec"]["template"]["spec"]
    settings = effective_settings()
    assert spec["terminationGracePeriodSeconds"] > settings.consumer.shutdown_grace
    env = {e["name"]: e for e in container()["env"]}
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env)
    assert spec["serviceAccountName"] == load("serviceaccount.yaml")["metadata"]["name"]
    assert "region" not in config_toml().get("s3", {})
    assert settings.s3.region == env["AWS_REGION"]["value"]


@pytest.mark.parametrize("name", sorted(p.name for p in KUBE.glob("*.yaml")))
def test_manifests_are_single_labelled_documents(name: str) -> None:
    """Each manifest is one Kubernetes object with an apiVersion, a kind and the app label."""
    doc = load(name)
    assert doc["apiVersion"]
    assert doc["kind"]
    assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "s3stream"

"""deploy/kubernetes/ against Kubernetes' own schemas (kubernetes-validate, strict: unknown fields
refused too), the PodMonitor's required fields, the "restricted" Pod Security Standard on every
container, resources sized from the measured RSS, and one port and one config file name shared by
the image, the manifests and the READMEs.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33"  # a recent release; kubernetes-validate bundles its schemas
PORT = 9464
CONFIG = "/etc/s3stream/config.toml"
PEAK_RSS_MIB = 172  # docs/performance.md: peak RSS over 100,000 one-message objects
CRDS = {"monitoring.coreos.com/v1"}  # not in Kubernetes' schemas: checked by hand below


def manifests() -> list[tuple[str, dict[str, Any]]]:
    """Every document of every manifest, with its file name."""
    out = []
    for path in sorted(KUBE.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return out


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = by_kind("Deployment")["spec"]["template"]["spec"]
    return spec


def all_containers() -> list[dict[str, Any]]:
    spec = pod_spec()
    return [*spec.get("initContainers", []), *spec["containers"], *spec.get("ephemeralContainers", [])]


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as ``(INSTRUCTION, arguments)``, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    lines = (line.strip() for line in text.splitlines())
    return [(w.upper(), rest.strip()) for w, _, rest in (line.partition(" ") for line in lines
                                                          if line and not line.startswith("#"))]


def mebibytes(quantity: str) -> float:
    """A Kubernetes memory quantity in MiB."""
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?|)", quantity).groups()  # type: ignore[union-attr]
    scale = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 1e3, "M": 1e6, "G": 1e9}[unit]
    return float(number) * scale / 2**20


@pytest.mark.parametrize(("name", "doc"), [m for m in manifests() if m[1]["apiVersion"] not in CRDS],
                         ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_each_manifest_validates_against_the_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    """Every built-in object validates, strictly (no unknown or misplaced field), against the schema
    of a recent Kubernetes release."""
    assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_the_manifests_hold_the_objects_a_deployment_needs() -> None:
    """A ConfigMap, a Deployment, a ServiceAccount, a PodDisruptionBudget and a PodMonitor; the only
    document outside Kubernetes' schemas is the PodMonitor."""
    kinds = sorted(doc["kind"] for _, doc in manifests())
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "PodMonitor", "ServiceAccount"]
    assert [doc["kind"] for _, doc in manifests() if doc["apiVersion"] in CRDS] == ["PodMonitor"]


def test_the_podmonitor_has_the_crds_required_fields_and_scrapes_the_metrics_port() -> None:
    """monitoring.coreos.com/v1 PodMonitor: a name, ``spec.selector`` and ``podMetricsEndpoints``
    (what the CRD requires and what makes it scrape anything); the selector picks the Deployment's
    pods and each endpoint names the container's metrics port and /metrics."""
    monitor = by_kind("PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", monitor["metadata"]["name"])
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel",
                         "podTargetLabels", "sampleLimit"}
    labels = by_kind("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    ports = {p["name"]: p["containerPort"] for c in all_containers() for p in c.get("ports", [])}
    assert spec["podMetricsEndpoints"]
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}
        assert ports[endpoint["port"]] == PORT
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint.get("interval", "30s"))


def test_every_container_meets_the_restricted_pod_security_standard() -> None:
    """Each container: runs as non-root (never uid 0), seccomp RuntimeDefault, no privilege
    escalation, every capability dropped, a read-only root filesystem; the pod shares no host
    namespace and mounts no host path; the only writable paths are emptyDir volumes."""
    spec = pod_spec()
    pod = spec.get("securityContext", {})
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert not [v for v in spec.get("volumes", []) if "hostPath" in v]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    assert pod.get("runAsUser", 1) != 0
    for c in all_containers():
        ctx = c.get("securityContext", {})
        assert ctx.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, c["name"]
        assert ctx.get("runAsUser", pod.get("runAsUser", 1)) != 0, c["name"]
        seccomp = ctx.get("seccompProfile", pod.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", c["name"]
        assert ctx.get("allowPrivilegeEscalation") is False, c["name"]
        assert not ctx.get("privileged", False), c["name"]
        assert "ALL" in ctx.get("capabilities", {}).get("drop", []), c["name"]
        assert set(ctx.get("capabilities", {}).get("add", [])) <= {"NET_BIND_SERVICE"}, c["name"]
        assert ctx.get("readOnlyRootFilesystem") is True, c["name"]
        for mount in c.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            assert mount.get("readOnly") or "emptyDir" in volume, mount
    assert "/tmp" in {m["mountPath"] for c in all_containers() for m in c.get("volumeMounts", [])
                      if "emptyDir" in volumes[m["name"]]}


def test_memory_is_sized_from_the_measured_peak_rss_and_the_bodies_in_flight() -> None:
    """Requests 200Mi (above the measured peak RSS, 172 MiB), limit 384Mi, which holds that peak plus
    the config's ``max_inflight_mb`` of bodies; the performance page states the peak the numbers come
    from."""
    resources = pod_spec()["containers"][0]["resources"]
    assert resources["requests"]["memory"] == "200Mi"
    assert resources["limits"]["memory"] == "384Mi"
    assert mebibytes(resources["requests"]["memory"]) > PEAK_RSS_MIB
    config = tomllib.loads(by_kind("ConfigMap")["data"]["config.toml"])
    inflight = config["consumer"]["max_inflight_mb"]
    assert PEAK_RSS_MIB + inflight <= mebibytes(resources["limits"]["memory"])
    assert config["consumer"]["max_body_mb"] <= inflight
    assert f"{PEAK_RSS_MIB} MiB" in (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")


def test_the_disruption_budget_and_service_account_fit_the_deployment() -> None:
    """The PodDisruptionBudget selects the Deployment's pods and lets one go at a time; the pods run
    as the ServiceAccount that carries the IRSA role annotation (an IAM role ARN)."""
    deployment, pdb = by_kind("Deployment"), by_kind("PodDisruptionBudget")
    account = by_kind("ServiceAccount")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1 < deployment["spec"]["replicas"]
    assert pod_spec()["serviceAccountName"] == account["metadata"]["name"]
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role)


def test_one_port_and_one_config_file_across_image_manifests_and_readmes() -> None:
    """9464 and /etc/s3stream/config.toml everywhere: the Dockerfile's EXPOSE, CMD and the config
    it copies there; the ConfigMap's key and port, the Deployment's args, mount, container port and
    scrape annotation; the deployment page and the Kubernetes README. No old name or port lingers."""
    instructions = dockerfile()
    assert ("EXPOSE", str(PORT)) in instructions
    cmd = next(rest for word, rest in instructions if word == "CMD")
    assert shlex.split(cmd.strip("[]").replace(",", " ")) == ["run", "--config", CONFIG]
    copied = dict(reversed(rest.split()) for word, rest in instructions if word == "COPY" and
                  len(rest.split()) == 2)
    image_config = tomllib.loads((ROOT / copied[CONFIG]).read_text(encoding="utf-8"))
    assert (image_config["metrics"]["host"], image_config["metrics"]["port"]) == ("0.0.0.0", PORT)

    configmap, deployment = by_kind("ConfigMap"), by_kind("Deployment")
    key = Path(CONFIG).name
    assert tomllib.loads(configmap["data"][key])["metrics"]["port"] == PORT
    container = pod_spec()["containers"][0]
    assert container["args"] == ["run", "--config", CONFIG]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == str(Path(CONFIG).parent))
    volume = next(v for v in pod_spec()["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert [p["containerPort"] for p in container["ports"]] == [PORT]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(PORT)

    for readme in (ROOT / "docs" / "deployment.md", KUBE / "README.md"):
        text = readme.read_text(encoding="utf-8")
        assert CONFIG in text, readme
        assert str(PORT) in text, readme
        assert "s3stream.toml" not in text, readme
        assert "S3STREAM_METRICS__PORT" not in text, readme
    assert "9100" not in (KUBE / "README.md").read_text(encoding="utf-8")
    for _, doc in manifests():
        assert "9100" not in yaml.safe_dump(doc)

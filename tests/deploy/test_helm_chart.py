"""The Helm chart in ops/deploy/helm/voicelog, rendered here without helm and held to what DEPLOY.md promises.

Helm is not installable on these machines, so the chart keeps to a tiny template subset (values, `quote`,
`toYaml | nindent`); `render` implements exactly that and refuses anything else, so the chart cannot grow
logic this test does not see. The rendered objects are validated against the Kubernetes OpenAPI schemas
(`kubernetes-validate`, when installed) and checked for the rules: probes, drain, HPA metric, PDB,
NetworkPolicy, workload identity, SAW client-certificate ingress.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app.server.workers import STOP_MARGIN_S, UVICORN_GRACE_S

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "ops" / "deploy" / "helm" / "voicelog"
RELEASE = {"Name": "voicelog", "Namespace": "voicelog"}
K8S_VERSION = "1.30.0"
ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}")
REFERENCE = r"\.(Values|Release|Chart)((?:\.\w+)+)"


def lookup(scope: dict[str, Any], root: str, path: str) -> Any:
    value: Any = scope[root]
    for part in path.strip(".").split("."):
        value = value[part]
    return value


def render(template: str, scope: dict[str, Any]) -> str:
    """Render the chart's template subset: `{{ REF }}`, `{{ REF | quote }}`, `{{- toYaml REF | nindent N }}`."""

    def action(match: re.Match[str]) -> str:
        expression = match.group(2)
        if plain := re.fullmatch(REFERENCE, expression):
            return str(lookup(scope, *plain.groups()))
        if quoted := re.fullmatch(REFERENCE + r"\s*\|\s*quote", expression):
            return json.dumps(str(lookup(scope, *quoted.groups())))
        if block := re.fullmatch(r"toYaml\s+" + REFERENCE + r"\s*\|\s*nindent\s+(\d+)", expression):
            root, path, indent = block.groups()
            dumped = yaml.safe_dump(lookup(scope, root, path), sort_keys=False).rstrip("\n")
            return "\n" + "\n".join(" " * int(indent) + line for line in dumped.splitlines())
        raise AssertionError(f"template construct outside the chart's subset: {match.group(0)}")

    # `{{-` eats the whitespace (newline included) before it, as in Go templates.
    template = re.sub(r"[ \t]*\n?[ \t]*(\{\{-)", r"\1", template)
    return ACTION.sub(action, template)


def chart_scope() -> dict[str, Any]:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return {"Values": values, "Release": RELEASE,
            "Chart": {"Name": chart["name"], "AppVersion": chart["appVersion"], "Version": chart["version"]}}


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = chart_scope()["Values"]
    return loaded


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    """Every rendered object by (kind, name)."""
    scope = chart_scope()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for template in sorted((CHART / "templates").glob("*.yaml")):
        for document in yaml.safe_load_all(render(template.read_text(), scope)):
            if document:
                out[(document["kind"], document["metadata"]["name"])] = document
    return out


def relay(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return objects[("Deployment", "voicelog")]


def container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = relay(objects)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_the_chart_renders_every_object_it_promises(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert set(objects) == {
        ("ServiceAccount", "voicelog"), ("SecretProviderClass", "voicelog-secrets"), ("Deployment", "voicelog"),
        ("Service", "voicelog"), ("HorizontalPodAutoscaler", "voicelog"), ("PodDisruptionBudget", "voicelog"),
        ("NetworkPolicy", "voicelog"), ("Ingress", "voicelog-saw"), ("Ingress", "voicelog-realtime"),
        ("Ingress", "voicelog-api"), ("Job", "voicelog-migrate"),
        ("ServiceAccount", "voicelog-migrate"), ("SecretProviderClass", "voicelog-migrate-secrets"),
    }
    for (_kind, _name), document in objects.items():
        assert document["metadata"]["namespace"] == "voicelog"
        assert document["metadata"]["labels"]["app.kubernetes.io/name"] == "voicelog"


def test_rendered_objects_match_the_kubernetes_schemas(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    for (kind, name), document in objects.items():
        if document["apiVersion"].startswith("secrets-store.csi.x-k8s.io/"):
            continue  # a CRD: not in the core schemas
        try:
            kubernetes_validate.validate(document, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{kind}/{name}: {exc.message} at {list(exc.path)}")


def test_probes_ask_readyz_and_healthz(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    relay_container = container(objects)
    assert relay_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert relay_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert relay_container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_a_live_call_gets_the_whole_drain_before_the_pod_is_killed(
    objects: dict[tuple[str, str], dict[str, Any]]
) -> None:
    """The kubelet kills after the grace period; before it come preStop and the supervisor's own bound on its
    workers' shutdown (drain, uvicorn's grace, the app's shutdown: app/server/workers.py stop_timeout_s)."""
    relay_container = container(objects)
    env = {e["name"]: e.get("value") for e in relay_container["env"]}
    drain = float(env["VOICELOG_RELAY_DRAIN_TIMEOUT_S"])
    command = relay_container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    grace = relay(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > pre_stop + drain + UVICORN_GRACE_S + STOP_MARGIN_S


def test_pods_run_unprivileged_on_a_read_only_root(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    for key in (("Deployment", "voicelog"), ("Job", "voicelog-migrate")):
        pod = objects[key]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] >= 10000
        assert pod["automountServiceAccountToken"] is False
        for each in pod["containers"]:
            assert each["securityContext"]["readOnlyRootFilesystem"] is True
            assert each["securityContext"]["allowPrivilegeEscalation"] is False
            assert each["securityContext"]["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in each["volumeMounts"]}
            assert {"/tmp", "/var/lib/voicelog"} <= mounts  # noqa: S108 - volumes, not files
        tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
        assert tmp["emptyDir"]["medium"] == "Memory"


def test_the_hpa_scales_on_active_sessions_per_pod(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    hpa = objects[("HorizontalPodAutoscaler", "voicelog")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "voicelog"}
    pods = next(m["pods"] for m in hpa["metrics"] if m["type"] == "Pods")
    assert pods["metric"]["name"] == "voicelog_relay_active_sessions"
    assert pods["target"]["type"] == "AverageValue"
    assert hpa["minReplicas"] >= 2
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_the_adapter_rule_exposes_the_metric_the_hpa_asks_for() -> None:
    rules = yaml.safe_load((ROOT / "ops" / "deploy" / "prometheus" / "adapter-rules.yaml").read_text())
    names = {rule["name"]["as"] for rule in rules["rules"]}
    assert "voicelog_relay_active_sessions" in names


def test_a_disruption_takes_at_most_one_relay_at_a_time(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    pdb = objects[("PodDisruptionBudget", "voicelog")]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == relay(objects)["spec"]["selector"]["matchLabels"]


def test_selectors_match_the_pods(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    pod_labels = relay(objects)["spec"]["template"]["metadata"]["labels"]
    for selector in (objects[("Service", "voicelog")]["spec"]["selector"],
                     objects[("NetworkPolicy", "voicelog")]["spec"]["podSelector"]["matchLabels"],
                     relay(objects)["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= pod_labels.items()


def test_network_policy_admits_only_the_ingress_controller_and_prometheus(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    policy = objects[("NetworkPolicy", "voicelog")]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    sources = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
               for rule in policy["ingress"] for peer in rule["from"]}
    assert sources == {values["networkPolicy"]["ingressControllerNamespace"],
                       values["networkPolicy"]["monitoringNamespace"]}
    egress_ports = {port["port"] for rule in policy["egress"] for port in rule["ports"]}
    assert egress_ports == {53, 443, 4318, 5432}
    (collector_rule,) = [rule for rule in policy["egress"] if rule["ports"] == [{"protocol": "TCP", "port": 4318}]]
    assert [peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in collector_rule["to"]
            ] == [values["networkPolicy"]["monitoringNamespace"]]  # spans go to the collector, nowhere else
    world = [peer["ipBlock"] for rule in policy["egress"] for peer in rule["to"]
             if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"]
    assert world
    assert all("169.254.169.254/32" in block["except"] for block in world)  # no IMDS: workload identity only


def test_spans_go_to_a_collector_the_network_policy_lets_them_reach(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    env = {item["name"]: item.get("value") for item in container(objects)["env"]}
    endpoint = urlsplit(env["VOICELOG_TRACING__OTLP_ENDPOINT"])
    assert endpoint.port == 4318
    assert endpoint.hostname is not None
    assert endpoint.hostname.split(".")[1] == values["networkPolicy"]["monitoringNamespace"]  # <svc>.<ns>.svc


def test_secrets_come_from_key_vault_through_workload_identity(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    account = objects[("ServiceAccount", "voicelog")]
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == \
        values["workloadIdentity"]["clientId"]
    assert relay(objects)["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    provider = objects[("SecretProviderClass", "voicelog-secrets")]["spec"]
    assert provider["provider"] == "azure"
    assert provider["parameters"]["usePodIdentity"] == "false"
    assert provider["parameters"]["clientID"] == values["workloadIdentity"]["clientId"]
    objects_listed = yaml.safe_load(provider["parameters"]["objects"])["array"]
    aliases = {yaml.safe_load(item)["objectAlias"] for item in objects_listed}
    env = {e["name"]: e for e in container(objects)["env"]}
    # Files of the CSI mount, named after their settings, read as the secrets directory: no Kubernetes Secret is
    # synced, and no secret is an environment variable.
    assert {"VOICELOG_DATABASE_URL", "VOICELOG_ADMIN_TOKEN"} <= aliases
    assert not {"VOICELOG_DATABASE_URL", "VOICELOG_ADMIN_TOKEN"} & set(env)
    assert mounted_providers(relay(objects)["spec"]["template"]["spec"]) == {
        env["VOICELOG_SECRETS_DIR"]["value"]: "voicelog-secrets"}
    for key, document in objects.items():
        if key[0] == "SecretProviderClass":
            assert "secretObjects" not in document["spec"], key
        if key[0] in {"Deployment", "Job"}:
            pod = document["spec"]["template"]["spec"]
            assert not [e for c in pod["containers"] for e in c.get("env", []) if "valueFrom" in e], key
    assert not [e for e in env.values() if "value" in e and re.search(r"AccountKey=|password|://[^/]*:[^@/]*@",
                                                                       str(e["value"]), re.IGNORECASE)]


def test_the_saw_paths_need_a_client_certificate_and_the_call_path_does_not(
    objects: dict[tuple[str, str], dict[str, Any]]
) -> None:
    saw = objects[("Ingress", "voicelog-saw")]
    annotations = saw["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/auth-tls-verify-client"] == "on"
    assert annotations["nginx.ingress.kubernetes.io/auth-tls-secret"] == "voicelog/voicelog-saw-ca"
    assert annotations["nginx.ingress.kubernetes.io/auth-tls-pass-certificate-to-upstream"] == "true"
    saw_paths = {p["path"] for rule in saw["spec"]["rules"] for p in rule["http"]["paths"]}
    assert saw_paths == {"/recordings", "/access", "/console"}

    others: set[str] = set()
    for name in ("voicelog-realtime", "voicelog-api"):
        ingress = objects[("Ingress", name)]
        assert not [a for a in ingress["metadata"]["annotations"] if "auth-tls" in a]
        others |= {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert not others & saw_paths  # no second, certificate-free way to the SAW paths
    assert "/resources" in others
    assert not [p for p in others if p.startswith("/admin")]
    realtime = objects[("Ingress", "voicelog-realtime")]["metadata"]["annotations"]
    assert int(realtime["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600  # idle timeout of a call


def test_voicelog_reads_the_certificate_headers_ingress_nginx_sends(
    objects: dict[tuple[str, str], dict[str, Any]]
) -> None:
    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    assert env["VOICELOG_SAW__CERT_HEADER"] == "ssl-client-cert"
    assert env["VOICELOG_SAW__VERIFY_HEADER"] == "ssl-client-verify"
    assert json.loads(env["VOICELOG_SAW__TRUSTED_PROXIES"])  # never empty: else no SAW is ever seen


def env_of(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The relay container's plain (non-secret) environment."""
    return {e["name"]: e["value"] for e in container(objects)["env"] if "value" in e}


def test_chart_environment_is_valid_settings(objects: dict[tuple[str, str], dict[str, Any]],
                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from app.config import Settings
    from app.server.workers import resolve_worker_count

    for each in container(objects)["env"]:
        if "value" in each:
            monkeypatch.setenv(each["name"], each["value"])
    secrets_dir = tmp_path / "secrets"  # the CSI mount, here a temporary directory
    secrets_dir.mkdir()
    (secrets_dir / "VOICELOG_DATABASE_URL").write_text("postgresql+asyncpg://voicelog@db.example:5432/voicelog")
    for key in ("VOICELOG_AUDIT__ENTRY_MAC_KEY", "VOICELOG_AUDIT__SIGNING_KEY"):  # the pod refuses to start without
        (secrets_dir / key).write_text(base64.b64encode(os.urandom(32)).decode())
    monkeypatch.setenv("VOICELOG_SECRETS_DIR", str(secrets_dir))
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    assert not settings.embedded
    assert resolve_worker_count(settings, cpus=64) == int(env_of(objects)["VOICELOG_WORKERS"])  # never the node's
    assert settings.region_names == ["westeurope"]
    assert settings.regions[0].keyvault_url is not None
    assert not settings.identity.dev_issuer_enabled
    assert settings.standin_enabled is False


def test_migration_runs_as_a_pre_upgrade_hook_after_its_secrets(
    objects: dict[tuple[str, str], dict[str, Any]]
) -> None:
    job = objects[("Job", "voicelog-migrate")]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]
    job_weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    for key in (("ServiceAccount", "voicelog"), ("SecretProviderClass", "voicelog-secrets"),
                ("ServiceAccount", "voicelog-migrate"), ("SecretProviderClass", "voicelog-migrate-secrets")):
        annotations = objects[key]["metadata"]["annotations"]
        assert "pre-install" in annotations["helm.sh/hook"]
        assert int(annotations["helm.sh/hook-weight"]) < job_weight


def mounted_providers(pod: dict[str, Any]) -> dict[str, str]:
    """The SecretProviderClasses a pod mounts, by mount path (of its one container)."""
    (container,) = pod["containers"]
    csi = {v["name"]: v["csi"]["volumeAttributes"]["secretProviderClass"] for v in pod["volumes"] if "csi" in v}
    return {m["mountPath"]: csi[m["name"]] for m in container["volumeMounts"] if m["name"] in csi}


def secret_objects(provider: dict[str, Any]) -> dict[str, str]:
    """A SecretProviderClass's Key Vault objects: alias -> Key Vault secret name."""
    listed = yaml.safe_load(provider["spec"]["parameters"]["objects"])["array"]
    return {item["objectAlias"]: item["objectName"] for item in map(yaml.safe_load, listed)}


def test_migrations_connect_as_the_owner_role_and_the_relays_as_the_service_role(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    """C6: the owner's URL reaches the migration Job only, through its own identity, provider and secret."""
    from app.db_privileges import validate_role_name

    job = objects[("Job", "voicelog-migrate")]["spec"]["template"]["spec"]
    (migrate,) = job["containers"]
    env = {e["name"]: e for e in migrate["env"]}
    assert mounted_providers(job) == {env["VOICELOG_SECRETS_DIR"]["value"]: "voicelog-migrate-secrets"}
    assert "VOICELOG_DATABASE_URL" not in env
    assert validate_role_name(env["VOICELOG_DATABASE_SERVICE_ROLE"]["value"]) == values["migration"]["serviceRole"]
    assert job["serviceAccountName"] == "voicelog-migrate"
    job_providers = {v["csi"]["volumeAttributes"]["secretProviderClass"] for v in job["volumes"] if "csi" in v}
    assert job_providers == {"voicelog-migrate-secrets"}

    owner_secret = values["migration"]["databaseUrlSecret"]
    service_secret = values["secrets"]["databaseUrlSecret"]
    assert owner_secret != service_secret
    migration_provider = objects[("SecretProviderClass", "voicelog-migrate-secrets")]
    assert secret_objects(migration_provider) == {"VOICELOG_DATABASE_URL": owner_secret}
    relay_provider = objects[("SecretProviderClass", "voicelog-secrets")]
    assert owner_secret not in secret_objects(relay_provider).values()
    assert secret_objects(relay_provider)["VOICELOG_DATABASE_URL"] == service_secret

    pod = relay(objects)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "voicelog"
    assert {v["csi"]["volumeAttributes"]["secretProviderClass"] for v in pod["volumes"] if "csi" in v} == {
        "voicelog-secrets"}
    assert "VOICELOG_DATABASE_SERVICE_ROLE" not in {e["name"] for e in container(objects)["env"]}
    relay_client = objects[("ServiceAccount", "voicelog")]["metadata"]["annotations"][
        "azure.workload.identity/client-id"]
    migration_client = objects[("ServiceAccount", "voicelog-migrate")]["metadata"]["annotations"][
        "azure.workload.identity/client-id"]
    assert migration_client == migration_provider["spec"]["parameters"]["clientID"] != relay_client


def test_render_refuses_constructs_outside_the_subset() -> None:
    with pytest.raises(AssertionError, match="outside the chart's subset"):
        render("{{ if .Values.x }}a{{ end }}", chart_scope())


# Azure Database for PostgreSQL Flexible Server: default max_connections less the 15 Azure reserves.
USER_CONNECTIONS = {"Standard_D2ds_v5": 844, "Standard_D4ds_v5": 1703, "Standard_D8ds_v5": 3422,
                    "Standard_D16ds_v5": 4985}


def test_a_full_scale_region_fits_the_default_database_tier_connection_budget(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    """Every worker process of a pod has its own pools: it may hold pool + overflow + request pool connections,
    so a pod holds workers times that; at maxReplicas they must fit the limit."""
    from app.config import Settings

    env = {e["name"]: e.get("value") for e in container(objects)["env"]}
    request_pool = env.get("VOICELOG_DATABASE_REQUEST_POOL_SIZE") or Settings.model_fields[
        "database_request_pool_size"].default
    per_process = (int(env["VOICELOG_DATABASE_POOL_SIZE"]) + int(env["VOICELOG_DATABASE_MAX_OVERFLOW"])
                   + int(request_pool))
    per_pod = int(env["VOICELOG_WORKERS"]) * per_process
    sku = re.search(r"param skuName string = '([^']+)'", (ROOT / "ops" / "deploy" / "postgres.bicep").read_text())
    assert sku is not None
    assert values["autoscaling"]["maxReplicas"] * per_pod <= USER_CONNECTIONS[sku.group(1)]


def test_the_memory_limit_leaves_room_for_the_recorder_cap(objects: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The recorder's cap is per process: every worker may hold it, beside the process itself."""
    from app.capture.settings import CaptureSettings

    limit = container(objects)["resources"]["limits"]["memory"]
    units = {"Mi": 2**20, "Gi": 2**30}
    limit_bytes = int(limit[:-2]) * units[limit[-2:]]
    workers = int(env_of(objects)["VOICELOG_WORKERS"])
    assert limit_bytes >= workers * (CaptureSettings().process_cap_bytes + 512 * 2**20)


def test_a_pod_runs_one_worker_process_per_core_it_asks_for(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    """One event loop uses one core: VOICELOG_WORKERS is the CPU request, set explicitly (unset counts the node's
    CPUs), and each worker's session limit is above the HPA's per-worker target, so scaling out comes first."""
    env = env_of(objects)
    workers = int(env["VOICELOG_WORKERS"])
    assert workers == values["relay"]["workers"] >= 1
    assert float(container(objects)["resources"]["requests"]["cpu"]) == workers
    assert "cpu" not in container(objects)["resources"].get("limits", {})  # throttling is added latency
    max_sessions = int(env["VOICELOG_RELAY_MAX_SESSIONS"])
    assert max_sessions == values["relay"]["maxSessionsPerWorker"]
    assert max_sessions > float(values["autoscaling"]["targetActiveSessionsPerPod"])

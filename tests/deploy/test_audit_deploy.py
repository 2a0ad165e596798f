"""The production deployment switches on the audit trail the code provides (issue 15; docs/AUDIT.md, docs/DEPLOY.md
"Audit keys"), and bounds clients per address at the proxy (docs/OPERATIONS.md, "Connections").

- Every relay pod runs the same entry MAC key and signing key, from the secrets vault through the CSI driver (pinned
  Key Vault versions), never a key made in its own data directory: with per-pod keys one pod's sequencer refuses
  another's queued entries as bad_mac and the verifier reports them forged.
- The anchor is the region's WORM container: the rendered environment, read by the service's own settings, selects
  the Azure sink with the account and container from the values, and main.bicep makes that container with an
  append-only role for the relays' identity.
- Each ingress bounds connections and requests per client address (voicelog exempts the controller's pods).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pydantic import ValidationError

from tests.deploy.test_bicep import DEPLOY, declarations, param_default, prop, resources, strip_comments
from tests.deploy.test_helm_chart import CHART, chart_scope, mounted_providers, render

AUDIT_KEYS = (  # settings mounted as files of the CSI volume, each file named after its setting (the alias)
    "VOICELOG_AUDIT__ENTRY_MAC_KEY",
    "VOICELOG_AUDIT__RETIRED_ENTRY_MAC_KEYS",
    "VOICELOG_AUDIT__SIGNING_KEY",
)
ALIAS_VALUES = {  # alias -> (values key of the Key Vault secret name, values key of its pinned version)
    "VOICELOG_AUDIT__ENTRY_MAC_KEY": ("auditEntryMacKeySecret", "auditEntryMacKeyVersion"),
    "VOICELOG_AUDIT__RETIRED_ENTRY_MAC_KEYS": ("auditRetiredEntryMacKeysSecret", "auditRetiredEntryMacKeysVersion"),
    "VOICELOG_AUDIT__SIGNING_KEY": ("auditSigningKeySecret", "auditSigningKeyVersion"),
}
APPENDER_DATA_ACTIONS = {
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action",
}


def rendered(scope: dict[str, Any] | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    scope = scope or chart_scope()
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for template in sorted((CHART / "templates").glob("*.yaml")):
        for document in yaml.safe_load_all(render(template.read_text(), scope)):
            if document:
                out[(document["kind"], document["metadata"]["name"])] = document
    return out


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return rendered()


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    loaded: dict[str, Any] = chart_scope()["Values"]
    return loaded


def pod_spec(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = objects[(kind, name)]["spec"]["template"]["spec"]
    return spec


def provider_objects(spc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The SecretProviderClass's Key Vault objects by alias (the `objects` parameter is YAML inside a string)."""
    array = yaml.safe_load(spc["spec"]["parameters"]["objects"])["array"]
    return {entry["objectAlias"]: entry for entry in (yaml.safe_load(item) for item in array)}


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def workloads(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {key: doc for key, doc in objects.items() if doc["kind"] in {"Deployment", "Job", "StatefulSet",
                                                                         "DaemonSet", "CronJob", "Pod"}}


# --- the keys: one pair, from the secret store, in every pod ---------------------------------------------------


def test_every_relay_pod_takes_both_audit_keys_from_the_secret_store(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    pod = pod_spec(objects, "Deployment", "voicelog")
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    # Files of the CSI mount the service reads as its secrets directory; never an environment variable, never a
    # Kubernetes Secret.
    assert not set(AUDIT_KEYS) & set(env)
    assert mounted_providers(pod) == {env["VOICELOG_SECRETS_DIR"]["value"]: "voicelog-secrets"}
    spc = objects[("SecretProviderClass", "voicelog-secrets")]
    assert "secretObjects" not in spc["spec"]
    (csi,) = [v["csi"] for v in pod["volumes"] if "csi" in v]
    assert csi["driver"] == "secrets-store.csi.k8s.io"
    # From the secrets vault, by the names main.bicep writes, each at the version the values pin.
    found = provider_objects(spc)
    assert spc["spec"]["parameters"]["keyvaultName"] == values["secrets"]["keyVaultName"]
    for alias, (name_key, version_key) in ALIAS_VALUES.items():
        assert found[alias]["objectName"] == values["secrets"][name_key]
        assert found[alias]["objectType"] == "secret"
        assert found[alias]["objectVersion"] == values["secrets"][version_key]


def test_the_keys_are_the_same_in_every_pod_and_nowhere_else(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    """One pod template (every replica the HPA adds is a copy of it), one SecretProviderClass with pinned versions:
    no pod can come up with a key of its own. The migration Job (owner role) gets neither key."""
    assert objects[("HorizontalPodAutoscaler", "voicelog")]["spec"]["scaleTargetRef"]["name"] == "voicelog"
    holders = []
    for key, doc in workloads(objects).items():
        pod = doc["spec"]["template"]["spec"]
        names = {e["name"] for c in pod["containers"] for e in c.get("env", [])}
        mounted = {alias for provider in mounted_providers(pod).values()
                   for alias in provider_objects(objects[("SecretProviderClass", provider)])}
        if (names | mounted) & set(AUDIT_KEYS):
            holders.append(key)
    assert holders == [("Deployment", "voicelog")]
    assert not set(AUDIT_KEYS) & set(provider_objects(objects[("SecretProviderClass", "voicelog-migrate-secrets")]))
    # Never a plain value in the chart's values, never the per-pod data directory's key file.
    plain = {e["name"] for e in values["relay"]["env"]}
    assert not plain & {*AUDIT_KEYS, "VOICELOG_AUDIT__SIGNING_KEY_DIR", "VOICELOG_AUDIT__CHECKPOINT_SINK"}
    # Pinning a version reaches the provider as is (DEPLOY.md, "Audit keys": rotation is a version change).
    scope = chart_scope()
    pinned = {version_key: secrets.token_hex(16) for _, version_key in ALIAS_VALUES.values()}
    scope["Values"]["secrets"].update(pinned)
    found = provider_objects(rendered(scope)[("SecretProviderClass", "voicelog-secrets")])
    assert {alias: found[alias]["objectVersion"] for alias in ALIAS_VALUES} == {
        alias: pinned[version_key] for alias, (_, version_key) in ALIAS_VALUES.items()}


def test_the_rendered_environment_is_what_the_service_reads(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any], tmp_path: Path,
    clean_env: pytest.MonkeyPatch,
) -> None:
    """The pod's environment and its secrets directory, filled as the CSI driver would (one file per alias), go
    through the service's own settings: the Azure sink at the values' account and container, the configured MAC
    key and signing key, and no key file made in the data directory."""
    from app.audit.entry_mac import build_entry_mac_keys, mac_key_id
    from app.audit.keys import StaticKeyring, build_keyring, key_id_for
    from app.config import Settings

    mac_key = secrets.token_bytes(32)
    signing = Ed25519PrivateKey.generate()
    in_vault = {
        values["secrets"]["databaseUrlSecret"]:
            "postgresql+asyncpg://voicelog_app:pw@db.example.com:5432/voicelog?ssl=require",
        values["secrets"]["adminTokenSecret"]: secrets.token_urlsafe(32),
        values["secrets"]["auditEntryMacKeySecret"]: base64.b64encode(mac_key).decode(),
        values["secrets"]["auditRetiredEntryMacKeysSecret"]: "[]",
        values["secrets"]["auditSigningKeySecret"]: base64.b64encode(
            signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode(),
    }
    pod = pod_spec(objects, "Deployment", "voicelog")
    (container,) = pod["containers"]
    data_dir = tmp_path / "data"
    for item in container["env"]:
        assert "valueFrom" not in item, item["name"]  # no secret passes through the environment
        clean_env.setenv(item["name"], item["value"])
    # The CSI mount: one file per Key Vault object, named by its alias; here in a temporary directory.
    (mount_path, provider), = mounted_providers(pod).items()
    assert container_env(container)["VOICELOG_SECRETS_DIR"] == mount_path
    mount = tmp_path / "secrets"
    mount.mkdir()
    for alias, entry in provider_objects(objects[("SecretProviderClass", provider)]).items():
        (mount / alias).write_text(in_vault[entry["objectName"]])
    clean_env.setenv("VOICELOG_SECRETS_DIR", str(mount))
    clean_env.setenv("VOICELOG_DATA_DIR", str(data_dir))  # the pod's emptyDir, here a temporary one

    settings = Settings()
    assert settings.database_url == in_vault[values["secrets"]["databaseUrlSecret"]]
    assert settings.admin_token is not None
    assert settings.admin_token.get_secret_value() == in_vault[values["secrets"]["adminTokenSecret"]]
    audit = settings.audit
    assert audit.checkpoint_sink == "azure"
    assert audit.checkpoint_blob_account_url == values["audit"]["checkpointBlobAccountUrl"]
    assert audit.checkpoint_blob_container == values["audit"]["checkpointBlobContainer"]
    assert audit.retired_public_keys == []
    keys = build_entry_mac_keys(audit, settings.data_dir, create=True)
    assert keys is not None
    assert keys.current_id == mac_key_id(mac_key)
    keyring = build_keyring(audit, settings.data_dir)
    assert isinstance(keyring, StaticKeyring)
    (published,) = keyring.public_keys().to_json()["keys"]
    assert published["key_id"] == key_id_for(signing.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    assert not data_dir.exists() or not any(data_dir.rglob("*"))  # no per-pod key file, no export file

    # A pod whose key did not arrive does not start; it never makes a key of its own.
    (mount / "VOICELOG_AUDIT__SIGNING_KEY").unlink()
    with pytest.raises(ValidationError, match=r"require_configured_keys.*signing_key"):
        Settings()


def test_the_anchor_is_the_regions_own_account(values: dict[str, Any]) -> None:
    env = {e["name"]: e.get("value") for e in values["relay"]["env"]}
    regions = {r["name"]: r for r in json.loads(env["VOICELOG_REGIONS"])}
    assert values["audit"]["checkpointBlobAccountUrl"] == regions[values["region"]]["blob_account_url"]
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", values["audit"]["checkpointBlobContainer"])
    assert values["audit"]["checkpointBlobContainer"] != regions[values["region"]]["blob_container"]


# --- per-address bounds at the proxy ----------------------------------------------------------------------------


def test_every_ingress_bounds_connections_and_requests_per_client_address(
    objects: dict[tuple[str, str], dict[str, Any]], values: dict[str, Any]
) -> None:
    from app.server.settings import ServerSettings

    server = ServerSettings()
    exempt = {e["name"] for e in values["relay"]["env"]}
    assert "VOICELOG_SERVER__CONNECTION_LIMIT_EXEMPT" in exempt  # so the proxy has to bound them
    ingresses = {name: doc for (kind, name), doc in objects.items() if kind == "Ingress"}
    assert set(ingresses) == {"voicelog-realtime", "voicelog-api", "voicelog-saw"}
    bounds = {}
    for name, doc in ingresses.items():
        annotations = doc["metadata"]["annotations"]
        connections = annotations["nginx.ingress.kubernetes.io/limit-connections"]
        rps = annotations["nginx.ingress.kubernetes.io/limit-rps"]
        assert isinstance(connections, str)  # annotations are strings
        assert isinstance(rps, str)
        assert int(connections) > 0, name
        assert int(rps) > 0, name
        bounds[name] = int(connections)
    # The HTTP endpoints are bound no looser than voicelog bounds a direct peer; calls get more room (a call is a
    # connection for its whole life, and voicelog never counts or cuts established calls).
    assert bounds["voicelog-api"] <= server.max_http_connections_per_address
    assert bounds["voicelog-saw"] <= server.max_http_connections_per_address
    assert bounds["voicelog-realtime"] >= server.max_open_connections_per_address


# --- Bicep: the container, its role, the key secrets -----------------------------------------------------------


def test_main_bicep_makes_the_worm_checkpoint_container_the_chart_names(values: dict[str, Any]) -> None:
    main = DEPLOY / "main.bicep"
    (storage,) = [d for d in declarations(main) if d.target == "storage.bicep"]
    assert prop(storage.body, "auditCheckpointContainerName") == "auditCheckpointContainerName"
    assert param_default(main, "auditCheckpointContainerName") == f"'{values['audit']['checkpointBlobContainer']}'"
    assert re.search(r"^output auditCheckpointContainerName string = storage\.outputs\.auditCheckpointContainerName$",
                     strip_comments(main.read_text()), re.MULTILINE)
    path = DEPLOY / "storage.bicep"
    (container,) = [d for d in resources(path, "Microsoft.Storage/storageAccounts/blobServices/containers")
                    if d.symbol == "auditCheckpoints"]
    assert prop(container.body, "name") == \
        "empty(auditCheckpointContainerName) ? 'unused' : auditCheckpointContainerName"
    assert prop(container.body, "publicAccess") == "'None'"
    (worm,) = resources(path, "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies")
    assert prop(worm.body, "parent") == "auditCheckpoints"
    assert prop(worm.body, "allowProtectedAppendWrites") == "true"
    assert prop(worm.body, "immutabilityPeriodSinceCreationInDays") == "auditCheckpointRetentionDays"
    text = strip_comments(path.read_text())
    for symbol in ("auditCheckpoints", "auditCheckpointsWorm"):
        assert re.search(rf"^resource {symbol} '[^']+' = if \(!empty\(auditCheckpointContainerName\)\)", text,
                         re.MULTILINE), symbol


def test_the_relays_may_only_read_create_and_append_checkpoint_blobs() -> None:
    path = DEPLOY / "storage.bicep"
    (role,) = resources(path, "Microsoft.Authorization/roleDefinitions")
    assert set(re.findall(r"'(Microsoft\.Storage/[^']+)'", role.body)) == APPENDER_DATA_ACTIONS
    assert "*" not in role.body
    permissions = role.body[role.body.index("permissions:"):]
    assert not re.search(r"delete|/write|move", permissions, re.IGNORECASE)  # no overwrite, no delete
    assert re.search(r"actions:\s*\[\]", role.body)  # no management-plane rights
    assert "resourceGroup().id" in role.body
    (access,) = [a for a in resources(path, "Microsoft.Authorization/roleAssignments")
                 if prop(a.body, "scope") == "auditCheckpoints"]
    assert prop(access.body, "roleDefinitionId") == "checkpointAppender.id"
    assert prop(access.body, "principalId") == "voicelogPrincipalId"
    assert "blobDataContributorRoleId" not in access.body


def test_main_bicep_keeps_the_audit_keys_in_the_secrets_vault_for_the_relays_only(values: dict[str, Any]) -> None:
    main = DEPLOY / "main.bicep"
    source = main.read_text()
    text = strip_comments(source)
    names = {"auditEntryMacKey": values["secrets"]["auditEntryMacKeySecret"],
             "auditRetiredEntryMacKeys": values["secrets"]["auditRetiredEntryMacKeysSecret"],
             "auditSigningKey": values["secrets"]["auditSigningKeySecret"]}
    modules = {d.symbol: d for d in declarations(main) if d.target == "keyvault-secret.bicep"}
    referenced = {d.symbol: d for d in resources(main, "Microsoft.KeyVault/vaults/secrets", existing=True)}
    for param, secret_name in names.items():
        declared = source.index(f"param {param} string = ''")
        assert "@secure()" in source[:declared].rstrip().splitlines()[-1], param
        # Written only when given: a deployment without the value leaves the key (and every relay) as it is.
        module = modules[f"{param}Value"]
        assert re.search(rf"^module {param}Value 'keyvault-secret.bicep' = if \(!empty\({param}\)\)", text,
                         re.MULTILINE), param
        assert prop(module.body, "secretName") == f"'{secret_name}'"
        assert prop(module.body, "vaultName") == "secretsVault.name"
        assert prop(module.body, "value") == param
        # Read by the relays' identity, scoped to that secret.
        reference = referenced[f"{param}Secret"]
        assert prop(reference.body, "name") == f"'{secret_name}'"
        assert prop(reference.body, "parent") == "secretsVault"
        (access,) = [a for a in resources(main, "Microsoft.Authorization/roleAssignments")
                     if prop(a.body, "scope") == f"{param}Secret"]
        assert prop(access.body, "principalId") == "identity.properties.principalId"
        assert "secretsUserRoleId" in access.body
        assert f"{param}Value" in access.body  # after the write, when there is one
    (secret,) = resources(DEPLOY / "keyvault-secret.bicep", "Microsoft.KeyVault/vaults/secrets")
    assert prop(secret.body, "value") == "value"
    assert prop(secret.body, "contentType") == "contentType"
    module_source = (DEPLOY / "keyvault-secret.bicep").read_text()
    assert "@secure()" in module_source[:module_source.index("param value string")].rstrip().splitlines()[-1]

"""The Azure templates in ops/deploy/*.bicep, schema-checked without the Bicep CLI (not installable here).

A small reader strips comments, finds each `resource`/`module` and its body, and the tests hold the
templates to the decisions: every resource pins an API version, the KEK vault never turns purge protection
on (C7), storage takes Entra ID only over TLS 1.2+, nothing is publicly reachable, PostgreSQL is
zone-redundant, and voicelog's identity gets only the data rights it uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "ops" / "deploy"
TEMPLATES = sorted(DEPLOY.glob("*.bicep"))
API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
# Built-in roles voicelog's identity must never hold: Owner, Contributor, User Access Administrator,
# Key Vault Administrator, Storage Account Contributor, Storage Blob Data Owner.
BROAD_ROLES = {"8e3af657-a8ff-443c-a75c-2fe8c4bcb635", "b24988ac-6180-42a0-ab88-20f7382dd24c",
               "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9", "00482a5a-887f-4fb3-b363-3b7fe8e74483",
               "17d1049b-9a84-46fb-8f53-869881c3d3ab", "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"}
KEK_DATA_ACTIONS = {
    "Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/create/action",
    "Microsoft.KeyVault/vaults/keys/wrap/action", "Microsoft.KeyVault/vaults/keys/unwrap/action",
    "Microsoft.KeyVault/vaults/keys/delete", "Microsoft.KeyVault/vaults/deletedKeys/read",
    "Microsoft.KeyVault/vaults/deletedKeys/delete",
}


def strip_comments(text: str) -> str:
    """Drop // and /* */ comments, keeping '...' strings (which may hold '//', as URLs do) intact."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else len(text)
        elif text.startswith("/*", i):
            i = text.index("*/", i) + 2
        elif text[i] == "'":
            end = i + 1
            while text[end] != "'":
                end += 2 if text[end] == "\\" else 1
            out.append(text[i:end + 1])
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def body_from(text: str, start: int) -> str:
    """The balanced {...} starting at the first '{' at or after `start` (strings already kept whole)."""
    open_at = text.index("{", start)
    depth = 0
    in_string = False
    for i in range(open_at, len(text)):
        char = text[i]
        if char == "'" and text[i - 1] != "\\":
            in_string = not in_string
        elif not in_string and char == "{":
            depth += 1
        elif not in_string and char == "}":
            depth -= 1
            if depth == 0:
                return text[open_at:i + 1]
    raise AssertionError("unbalanced braces")


@dataclass(frozen=True)
class Declaration:
    kind: str  # resource or module
    symbol: str
    target: str  # 'Type@version' or a module path
    body: str
    existing: bool = False  # `resource x '...' existing = {...}`: a reference, it configures nothing


def declarations(path: Path) -> list[Declaration]:
    text = strip_comments(path.read_text())
    found = []
    for match in re.finditer(r"^(resource|module)\s+(\w+)\s+'([^']+)'(\s+existing\b)?", text, re.MULTILINE):
        found.append(Declaration(match.group(1), match.group(2), match.group(3), body_from(text, match.end()),
                                 existing=match.group(4) is not None))
    return found


def resources(path: Path, type_name: str, *, existing: bool = False) -> list[Declaration]:
    """The resources of a type the template deploys (`existing=True`: those it only refers to)."""
    return [d for d in declarations(path) if d.kind == "resource" and d.target.split("@")[0] == type_name
            and d.existing == existing]


def prop(body: str, name: str) -> str | None:
    """The value written after `name:` (first occurrence), as source text up to the end of the line."""
    match = re.search(rf"^\s*{re.escape(name)}:\s*(.+?)\s*$", body, re.MULTILINE)
    return match.group(1) if match else None


def param_default(path: Path, name: str) -> str | None:
    match = re.search(rf"^param\s+{name}\s+\w+\s*=\s*(.+)$", strip_comments(path.read_text()), re.MULTILINE)
    return match.group(1).strip() if match else None


def test_there_are_the_templates_deploy_md_names() -> None:
    assert {p.name for p in TEMPLATES} >= {"main.bicep", "storage.bicep", "keyvault-kek.bicep", "postgres.bicep"}


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_resource_pins_an_api_version_and_every_module_exists(path: Path) -> None:
    found = declarations(path)
    assert found
    for declaration in found:
        if declaration.kind == "module":
            assert (path.parent / declaration.target).exists(), declaration.target
            continue
        type_name, _, version = declaration.target.partition("@")
        assert re.fullmatch(r"Microsoft\.\w+(/\w+)+", type_name), declaration.target
        assert API_VERSION.match(version), declaration.target


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_brackets_balance_and_no_secret_is_an_output_or_a_plain_parameter(path: Path) -> None:
    text = strip_comments(path.read_text())
    text_without_strings = re.sub(r"'(?:\\.|[^'\\])*'", "''", text)
    for opening, closing in ("{}", "[]", "()"):
        assert text_without_strings.count(opening) == text_without_strings.count(closing), (path.name, opening)
    for line in text.splitlines():
        if line.startswith("output "):
            assert not re.search(r"password|secret\b|key\b|connectionstring", line.split("=")[0], re.IGNORECASE)
    source = path.read_text()
    for match in re.finditer(r"^param\s+(\w*[Pp]assword\w*)\s", source, re.MULTILINE):
        assert "@secure()" in source[:match.start()].rstrip().splitlines()[-1], match.group(1)
    assert "AccountKey=" not in source
    assert "listKeys(" not in source


def test_storage_takes_entra_id_only_over_tls_12_and_no_public_network() -> None:
    path = DEPLOY / "storage.bicep"
    (account,) = resources(path, "Microsoft.Storage/storageAccounts")
    assert prop(account.body, "allowSharedKeyAccess") == "false"
    assert prop(account.body, "allowBlobPublicAccess") == "false"
    assert prop(account.body, "minimumTlsVersion") == "'TLS1_2'"
    assert prop(account.body, "supportsHttpsTrafficOnly") == "true"
    assert prop(account.body, "publicNetworkAccess") == "publicNetworkAccess"
    assert param_default(path, "publicNetworkAccess") == "'Disabled'"
    (main_storage,) = [d for d in declarations(DEPLOY / "main.bicep") if d.target == "storage.bicep"]
    assert prop(main_storage.body, "publicNetworkAccess") == "'Disabled'"
    assert prop(main_storage.body, "voicelogPrincipalId") == "identity.properties.principalId"


def test_the_kek_vault_never_has_purge_protection_and_keeps_soft_delete_minimal() -> None:
    path = DEPLOY / "keyvault-kek.bicep"
    (vault,) = resources(path, "Microsoft.KeyVault/vaults")
    assert "enablePurgeProtection" not in vault.body  # absent = off; `false` is refused by the API
    assert prop(vault.body, "softDeleteRetentionInDays") == "7"
    assert prop(vault.body, "enableRbacAuthorization") == "true"
    assert prop(vault.body, "publicNetworkAccess") == "'Disabled'"
    main = strip_comments((DEPLOY / "main.bicep").read_text())
    assert "'keyvault-kek.bicep'" in main
    # The KEK vault's own module is the only place KEKs live; main.bicep's other vault is for app secrets.
    (secrets_vault,) = resources(DEPLOY / "main.bicep", "Microsoft.KeyVault/vaults")
    assert prop(secrets_vault.body, "name") == "secretsVaultName"


def test_the_kek_role_allows_exactly_what_the_key_vault_provider_does() -> None:
    (role,) = resources(DEPLOY / "keyvault-kek.bicep", "Microsoft.Authorization/roleDefinitions")
    data_actions = set(re.findall(r"'(Microsoft\.KeyVault/[^']+)'", role.body))
    assert data_actions == KEK_DATA_ACTIONS
    assert "*" not in role.body
    assert re.search(r"actions:\s*\[\]", role.body)  # no management-plane rights
    assert "resourceGroup().id" in prop(role.body, "assignableScopes") or "resourceGroup().id" in role.body
    (assignment,) = resources(DEPLOY / "keyvault-kek.bicep", "Microsoft.Authorization/roleAssignments")
    assert prop(assignment.body, "scope") == "vault"
    assert prop(assignment.body, "roleDefinitionId") == "kekOperator.id"


def test_role_assignments_are_narrow_and_scoped_to_one_resource() -> None:
    for path in TEMPLATES:
        for assignment in resources(path, "Microsoft.Authorization/roleAssignments"):
            scope = prop(assignment.body, "scope")
            assert scope in {"container", "auditCheckpoints", "vault", "databaseUrlSecret", "adminTokenSecret",
                             "migrationDatabaseUrlSecret", "auditEntryMacKeySecret",
                             "auditRetiredEntryMacKeysSecret", "auditSigningKeySecret"}, (path.name, scope)
            assert prop(assignment.body, "principalType") == "'ServicePrincipal'"
            text = path.read_text()
            assert not BROAD_ROLES & set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                                                    text)), path.name


def test_every_vault_and_endpoint_is_private() -> None:
    for path in TEMPLATES:
        for vault in resources(path, "Microsoft.KeyVault/vaults"):
            assert prop(vault.body, "publicNetworkAccess") == "'Disabled'"
            assert prop(vault.body, "defaultAction") == "'Deny'"
    endpoints = resources(DEPLOY / "main.bicep", "Microsoft.Network/privateEndpoints")
    targets = {prop(e.body, "privateLinkServiceId") for e in endpoints}
    assert targets == {"storage.outputs.accountId", "kekVault.outputs.vaultId", "secretsVault.id"}


def test_postgres_is_zone_redundant_private_and_requires_tls() -> None:
    path = DEPLOY / "postgres.bicep"
    (server,) = resources(path, "Microsoft.DBforPostgreSQL/flexibleServers")
    assert prop(server.body, "mode") == "'ZoneRedundant'"
    assert prop(server.body, "publicNetworkAccess") == "'Disabled'"
    assert prop(server.body, "administratorLoginPassword") == "administratorPassword"
    assert prop(server.body, "geoRedundantBackup") == "'Disabled'"  # region pinning: no copy leaves the region
    settings = {prop(c.body, "name"): prop(c.body, "value")
                for c in resources(path, "Microsoft.DBforPostgreSQL/flexibleServers/configurations")}
    assert settings == {"'require_secure_transport'": "'on'", "'ssl_min_protocol_version'": "'TLSv1.2'"}


def test_the_federated_credential_names_the_charts_service_account() -> None:
    import yaml

    (credential,) = [d for d in resources(
        DEPLOY / "main.bicep", "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials")
        if prop(d.body, "parent") == "identity"]
    assert prop(credential.body, "subject") == \
        "'system:serviceaccount:${kubernetesNamespace}:${kubernetesServiceAccount}'"
    assert param_default(DEPLOY / "main.bicep", "kubernetesServiceAccount") == "'voicelog'"
    chart = yaml.safe_load((DEPLOY / "helm" / "voicelog" / "templates" / "serviceaccount.yaml").read_text()
                           .replace("{{ .Release.Name }}", "voicelog").replace("{{ .Release.Namespace }}", "voicelog")
                           .replace("{{ .Values.workloadIdentity.clientId | quote }}", "x")
                           .replace("{{ .Values.workloadIdentity.tenantId | quote }}", "x"))
    assert chart["metadata"]["name"] == "voicelog"
    assert "api://AzureADTokenExchange" in credential.body


def test_each_identity_reads_only_its_own_database_role_secret() -> None:
    """C6: the relays' identity reads the service role's URL (and the admin token), the migration Job's identity
    only the owner role's; no identity may read the whole secrets vault."""
    import yaml

    path = DEPLOY / "main.bicep"
    secrets = {d.symbol: prop(d.body, "name") for d in resources(path, "Microsoft.KeyVault/vaults/secrets")}
    values = yaml.safe_load((DEPLOY / "helm" / "voicelog" / "values.yaml").read_text())
    assert secrets == {"databaseUrlSecret": f"'{values['secrets']['databaseUrlSecret']}'",
                       "adminTokenSecret": f"'{values['secrets']['adminTokenSecret']}'",
                       "migrationDatabaseUrlSecret": f"'{values['migration']['databaseUrlSecret']}'"}
    readers = {}
    for assignment in resources(path, "Microsoft.Authorization/roleAssignments"):
        if "secretsUserRoleId" in assignment.body:
            principal = prop(assignment.body, "principalId")
            readers.setdefault(principal, set()).add(prop(assignment.body, "scope"))
    assert readers == {"identity.properties.principalId": {"databaseUrlSecret", "adminTokenSecret",
                                                           "auditEntryMacKeySecret", "auditRetiredEntryMacKeysSecret",
                                                           "auditSigningKeySecret"},
                       "migrationIdentity.properties.principalId": {"migrationDatabaseUrlSecret"}}
    for symbol, param in (("databaseUrlSecret", "serviceDatabaseUrl"), ("migrationDatabaseUrlSecret",
                                                                         "ownerDatabaseUrl")):
        (secret,) = [d for d in resources(path, "Microsoft.KeyVault/vaults/secrets") if d.symbol == symbol]
        assert prop(secret.body, "value") == param
        source = path.read_text()
        declared = source.index(f"param {param} string")
        assert "@secure()" in source[:declared].rstrip().splitlines()[-1], param
    (credential,) = [d for d in resources(
        path, "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials")
        if prop(d.body, "parent") == "migrationIdentity"]
    assert prop(credential.body, "subject") == \
        "'system:serviceaccount:${kubernetesNamespace}:${kubernetesMigrationServiceAccount}'"
    assert param_default(path, "kubernetesMigrationServiceAccount") == "'voicelog-migrate'"


def test_postgres_names_an_owner_role_and_a_service_role_the_chart_uses() -> None:
    import yaml

    from app.db_privileges import validate_role_name

    path = DEPLOY / "postgres.bicep"
    owner, service = param_default(path, "ownerRoleName"), param_default(path, "serviceRoleName")
    assert owner is not None
    assert service is not None
    assert owner != service
    validate_role_name(owner.strip("'"))
    values = yaml.safe_load((DEPLOY / "helm" / "voicelog" / "values.yaml").read_text())
    assert validate_role_name(service.strip("'")) == values["migration"]["serviceRole"]
    text = path.read_text()
    assert "NOT a member of voicelog_owner" in text  # the setup the comment prescribes


def test_the_reader_sees_through_comments_and_strings() -> None:
    text = "// resource x 'A@1'\nresource y 'Microsoft.A/b@2024-01-01' = {\n  url: 'https://x/{y}'\n}\n"
    assert strip_comments(text).startswith("\nresource y")
    assert body_from(strip_comments(text), 0).endswith("'https://x/{y}'\n}")

"""ops/deploy/storage.bicep holds the audit checkpoints in a WORM container that still admits appends (C6)."""

from __future__ import annotations

from tests.deploy.test_bicep import DEPLOY, param_default, prop, resources


def test_the_checkpoint_container_is_immutable_for_years_and_append_only() -> None:
    path = DEPLOY / "storage.bicep"
    containers = resources(path, "Microsoft.Storage/storageAccounts/blobServices/containers")
    (checkpoints,) = [c for c in containers if c.symbol == "auditCheckpoints"]
    assert prop(checkpoints.body, "publicAccess") == "'None'"
    (policy,) = resources(path, "Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies")
    assert prop(policy.body, "parent") == "auditCheckpoints"
    assert prop(policy.body, "immutabilityPeriodSinceCreationInDays") == "auditCheckpointRetentionDays"
    assert prop(policy.body, "allowProtectedAppendWrites") == "true"
    assert int(param_default(path, "auditCheckpointRetentionDays") or 0) >= 365
    # The recordings' lifecycle rule (delete after 31 days) is limited to the recordings container.
    (lifecycle,) = resources(path, "Microsoft.Storage/storageAccounts/managementPolicies")
    assert "'${containerName}/'" in lifecycle.body


def test_voicelog_may_append_checkpoints_and_nothing_else_of_the_account() -> None:
    """The keeper's identity writes the anchor; its role is scoped to that container alone."""
    path = DEPLOY / "storage.bicep"
    scopes = {prop(a.body, "scope") for a in resources(path, "Microsoft.Authorization/roleAssignments")}
    assert "auditCheckpoints" in scopes
    assert scopes <= {"container", "auditCheckpoints"}

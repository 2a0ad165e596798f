// voicelog: one region's KEK vault, and the only rights voicelog has on it (a custom role).
//
// Purge protection OFF, by design (C7): the property is not set, so it stays off. A bucket's KEK is
// destroyed 30 days after its hour began by delete + purge; with purge protection on, the deleted key
// would stay recoverable (7 to 90 days) and every recording wrapped under it decryptable. Soft delete is
// always on in Azure; its retention is kept at the minimum. Use this vault for KEKs only.

targetScope = 'resourceGroup'

@description('Vault name (globally unique).')
param vaultName string

param location string = resourceGroup().location

@allowed([
  'premium'
  'standard'
])
param skuName string = 'premium'

@description('Object id of voicelog\'s managed identity: gets the KEK operator role on this vault only.')
param voicelogPrincipalId string

@description('Log Analytics workspace for the vault\'s AuditEvent log (every create, wrap, unwrap, delete, purge). Empty: none.')
param logAnalyticsWorkspaceId string = ''

param tags object = {}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_110:purge protection off by design (C7, header above): a destroyed KEK must be purged at once
  // checkov:skip=CKV_AZURE_42:"recoverable" means purge protection on; soft delete is on (7 days), purge protection off for C7
  name: vaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: skuName
    }
    enableRbacAuthorization: true
    enableSoftDelete: true // cannot be turned off any more; the purge follows every delete at once
    softDeleteRetentionInDays: 7 // the minimum: a key deleted but not yet purged (a failed purge) lingers least
    // enablePurgeProtection: deliberately absent (off). See the header.
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'None'
    }
  }
}

// Exactly what app/vault/keyvault.py does: create a bucket's key, read/list keys (get, live buckets),
// wrap and unwrap data keys, delete the key and purge it (destruction). No import, backup, restore,
// update, rotate, sign or decrypt; no secrets; no management-plane rights.
resource kekOperator 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, vaultName, 'voicelog-kek-operator')
  properties: {
    roleName: 'voicelog KEK operator (${vaultName})'
    description: 'Create, read, wrap, unwrap, delete and purge hour-bucket KEKs in one voicelog KEK vault.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.KeyVault/vaults/keys/read'
          'Microsoft.KeyVault/vaults/keys/create/action'
          'Microsoft.KeyVault/vaults/keys/wrap/action'
          'Microsoft.KeyVault/vaults/keys/unwrap/action'
          'Microsoft.KeyVault/vaults/keys/delete'
          'Microsoft.KeyVault/vaults/deletedKeys/read'
          'Microsoft.KeyVault/vaults/deletedKeys/delete'
        ]
        notDataActions: []
      }
    ]
  }
}

resource kekAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: vault
  name: guid(vault.id, voicelogPrincipalId, kekOperator.id)
  properties: {
    roleDefinitionId: kekOperator.id
    principalId: voicelogPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource vaultLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  scope: vault
  name: 'voicelog-kek-audit'
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

output vaultId string = vault.id
output vaultUri string = vault.properties.vaultUri

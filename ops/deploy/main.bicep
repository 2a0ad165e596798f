// voicelog: one region (deploy once per region, into a resource group in that region).
//
// Composes the region's recording storage (storage.bicep), the Key Vault that holds the region's hour-bucket
// KEKs, a vault for the app's own secrets, private endpoints for all three, and the user-assigned managed
// identity the relay pods run as (federated to the AKS service account: workload identity), with only the
// rights voicelog uses, and a second identity for the migration Job alone. PostgreSQL is shared by every
// region: postgres.bicep, deployed once.
//
// Two database roles (docs/AUDIT.md, "Database roles"): the relay pods read only the SERVICE role's URL, the
// migration Job only the OWNER role's. Each identity may read exactly its secrets (Key Vault Secrets User
// scoped to the secret, not the vault), so a relay pod cannot fetch the owner's password and with it the
// power to switch the audit triggers off.
//
//   az deployment group create -g rg-voicelog-weu -f ops/deploy/main.bicep \
//     -p regionCode=weu storageAccountName=vlogrecweu aksOidcIssuerUrl=<az aks show ... oidcIssuerProfile.issuerUrl> \
//        privateEndpointSubnetId=<subnet id> serviceDatabaseUrl=<...> ownerDatabaseUrl=<...> adminToken=<...>
//
// Outputs feed the Helm values: identityClientId -> workloadIdentity.clientId, migrationIdentityClientId ->
// migration.workloadIdentityClientId, blobEndpoint -> audit.checkpointBlobAccountUrl, auditCheckpointContainerName
// -> audit.checkpointBlobContainer, and VOICELOG_REGIONS gets blob_account_url=blobEndpoint,
// keyvault_url=kekVaultUri. docs/DEPLOY.md walks through it.
//
// The audit trail (docs/AUDIT.md): its WORM checkpoint container in the region's storage account (the anchor),
// and its two keys in the secrets vault, readable by the relays' identity only. The keys are ONE pair for every
// region (one audit chain in the shared database): generate them once (DEPLOY.md, "Audit keys") and pass the
// same values to every region's first deployment (auditEntryMacKey, auditRetiredEntryMacKeys='[]',
// auditSigningKey). Later deployments leave them empty and the vault keeps its values: a deployment never
// rewrites a key by accident; a rotation passes the new value (a new secret version).

targetScope = 'resourceGroup'

@description('Azure region of every resource here: the region whose recordings they serve (C3).')
param location string = resourceGroup().location

@description('Short region code used in names, e.g. weu, eus.')
@minLength(2)
@maxLength(6)
param regionCode string

@description('Recording storage account name (globally unique, 3-24 lowercase letters and digits).')
param storageAccountName string

@description('KEK vault name (globally unique, 3-24 characters).')
param kekVaultName string = 'voicelog-kek-${regionCode}'

@description('App secrets vault name (database URL, admin token).')
param secretsVaultName string = 'voicelog-sec-${regionCode}'

@description('Subnet for the private endpoints of the storage account and both vaults.')
param privateEndpointSubnetId string

@description('OIDC issuer URL of the AKS cluster running this region\'s relays (workload identity).')
param aksOidcIssuerUrl string

@description('Kubernetes namespace and service account of the relay pods (the Helm release).')
param kubernetesNamespace string = 'voicelog'
param kubernetesServiceAccount string = 'voicelog'

@description('Service account of the migration Job (the chart names it <release>-migrate).')
param kubernetesMigrationServiceAccount string = 'voicelog-migrate'

@description('postgresql+asyncpg URL of the SERVICE role (voicelog_app): what the relay pods connect as.')
@secure()
param serviceDatabaseUrl string

@description('postgresql+asyncpg URL of the OWNER role (voicelog_owner): only the migration Job reads it.')
@secure()
param ownerDatabaseUrl string

@description('VOICELOG_ADMIN_TOKEN of the relays.')
@secure()
param adminToken string

@description('Audit entry MAC key (32 random bytes, standard base64), the same in every region: written to the secret voicelog-audit-entry-mac-key when given. Empty: the secret stays as it is (it must exist: give it on the first deployment).')
@secure()
param auditEntryMacKey string = ''

@description('Retired audit entry MAC keys (JSON list, `[]` until a rotation), the same in every region: written to voicelog-audit-retired-entry-mac-keys when given. Empty: the secret stays as it is (give `[]` on the first deployment).')
@secure()
param auditRetiredEntryMacKeys string = ''

@description('Audit checkpoint signing key (raw 32-byte Ed25519 private key, standard base64), the same in every region: written to voicelog-audit-signing-key when given. Empty: the secret stays as it is (give it on the first deployment).')
@secure()
param auditSigningKey string = ''

@description('Container of the audit trail\'s signed checkpoints in the region\'s storage account, under a time-based immutability policy (WORM, protected appends). Helm value audit.checkpointBlobContainer.')
@minLength(3)
@maxLength(63)
param auditCheckpointContainerName string = 'audit-checkpoints'

@description('Key Vault SKU for KEKs: premium for RSA-HSM keys (VOICELOG_VAULT__KEYVAULT_KEY_TYPE default).')
@allowed([
  'premium'
  'standard'
])
param kekVaultSku string = 'premium'

@description('Log Analytics workspace for Key Vault and blob audit logs. Empty: no diagnostic settings.')
param logAnalyticsWorkspaceId string = ''

param tags object = {}

// Built-in role: Key Vault Secrets User (read secret values).
var secretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'

// --- identity -------------------------------------------------------------------------------------

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-voicelog-${regionCode}'
  location: location
  tags: tags
}

resource federation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: identity
  name: 'aks-${kubernetesNamespace}-${kubernetesServiceAccount}'
  properties: {
    issuer: aksOidcIssuerUrl
    subject: 'system:serviceaccount:${kubernetesNamespace}:${kubernetesServiceAccount}'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

// The migration Job's own identity: it reads the owner role's URL and nothing else.
resource migrationIdentity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-voicelog-migrate-${regionCode}'
  location: location
  tags: tags
}

resource migrationFederation 'Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials@2023-01-31' = {
  parent: migrationIdentity
  name: 'aks-${kubernetesNamespace}-${kubernetesMigrationServiceAccount}'
  properties: {
    issuer: aksOidcIssuerUrl
    subject: 'system:serviceaccount:${kubernetesNamespace}:${kubernetesMigrationServiceAccount}'
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

// --- recording storage (existing template) ---------------------------------------------------------

module storage 'storage.bicep' = {
  name: 'voicelog-storage-${regionCode}'
  params: {
    accountName: storageAccountName
    location: location
    voicelogPrincipalId: identity.properties.principalId // Storage Blob Data Contributor on the container only
    publicNetworkAccess: 'Disabled'
    // The audit anchor (C6): WORM container, voicelog's identity may read, create and append there, nothing else.
    auditCheckpointContainerName: auditCheckpointContainerName
    logAnalyticsWorkspaceId: logAnalyticsWorkspaceId
    tags: tags
  }
}

// --- KEK vault ----------------------------------------------------------------------------------------
// Purge protection stays OFF (the property is left unset: it cannot be set to false, and once true it can
// never be turned off). With it on, a deleted KEK stays recoverable for the whole retention period, so a
// 30-day-old recording would stay decryptable: C7 forbids that. voicelog deletes a bucket's KEK and then
// purges it at once, so soft delete (always on in Azure, kept at its 7-day minimum) does not lengthen any
// key's life. The vault holds nothing but KEKs.

module kekVault 'keyvault-kek.bicep' = {
  name: 'voicelog-kek-${regionCode}'
  params: {
    vaultName: kekVaultName
    location: location
    skuName: kekVaultSku
    voicelogPrincipalId: identity.properties.principalId
    logAnalyticsWorkspaceId: logAnalyticsWorkspaceId
    tags: tags
  }
}

// --- app secrets vault -------------------------------------------------------------------------------
// Ordinary secrets, so ordinary protection: purge protection on, 90 days of soft delete.

resource secretsVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: secretsVaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Disabled'
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'None'
    }
  }
}

// Secret names are the Helm values secrets.databaseUrlSecret, secrets.adminTokenSecret and
// migration.databaseUrlSecret.
resource databaseUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:no expiry: every deployment rewrites the value, rotation is DEPLOY.md "Rotate keys"
  // (a date set here would move with each deployment; where Key Vault enforces it, pods starting after it could not read the secret)
  parent: secretsVault
  name: 'voicelog-database-url'
  properties: {
    contentType: 'text/plain'
    value: serviceDatabaseUrl
  }
}

resource adminTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:no expiry: every deployment rewrites the value, rotation is DEPLOY.md "Rotate keys"
  // (a date set here would move with each deployment; where Key Vault enforces it, pods starting after it could not read the secret)
  parent: secretsVault
  name: 'voicelog-admin-token'
  properties: {
    contentType: 'text/plain'
    value: adminToken
  }
}

resource migrationDatabaseUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:no expiry: every deployment rewrites the value, rotation is DEPLOY.md "Rotate keys"
  // (a date set here would move with each deployment; where Key Vault enforces it, pods starting after it could not read the secret)
  parent: secretsVault
  name: 'voicelog-migration-database-url'
  properties: {
    contentType: 'text/plain'
    value: ownerDatabaseUrl
  }
}

resource databaseUrlAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: databaseUrlSecret
  name: guid(databaseUrlSecret.id, identity.id, secretsUserRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource adminTokenAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: adminTokenSecret
  name: guid(adminTokenSecret.id, identity.id, secretsUserRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource migrationDatabaseUrlAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: migrationDatabaseUrlSecret
  name: guid(migrationDatabaseUrlSecret.id, migrationIdentity.id, secretsUserRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: migrationIdentity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

// --- the audit trail's keys ------------------------------------------------------------------------------
// Written only when a value is given (first deployment, rotation); the role assignments name the secret as it
// exists in the vault, so a region deployed without its keys fails here instead of starting relays without them.
// Only the relays' identity reads them: not the migration Job (the owner role and the MAC key together could
// append authentic-looking entries with the triggers off), not the KEK vault.

module auditEntryMacKeyValue 'keyvault-secret.bicep' = if (!empty(auditEntryMacKey)) {
  name: 'voicelog-secret-audit-entry-mac-key-${regionCode}'
  params: {
    vaultName: secretsVault.name
    secretName: 'voicelog-audit-entry-mac-key'
    value: auditEntryMacKey
    contentType: 'application/octet-stream;base64'
  }
}

module auditRetiredEntryMacKeysValue 'keyvault-secret.bicep' = if (!empty(auditRetiredEntryMacKeys)) {
  name: 'voicelog-secret-audit-retired-entry-mac-keys-${regionCode}'
  params: {
    vaultName: secretsVault.name
    secretName: 'voicelog-audit-retired-entry-mac-keys'
    value: auditRetiredEntryMacKeys
    contentType: 'application/json'
  }
}

module auditSigningKeyValue 'keyvault-secret.bicep' = if (!empty(auditSigningKey)) {
  name: 'voicelog-secret-audit-signing-key-${regionCode}'
  params: {
    vaultName: secretsVault.name
    secretName: 'voicelog-audit-signing-key'
    value: auditSigningKey
    contentType: 'application/octet-stream;base64'
  }
}

resource auditEntryMacKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: secretsVault
  name: 'voicelog-audit-entry-mac-key'
}

resource auditRetiredEntryMacKeysSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: secretsVault
  name: 'voicelog-audit-retired-entry-mac-keys'
}

resource auditSigningKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: secretsVault
  name: 'voicelog-audit-signing-key'
}

resource auditEntryMacKeyAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: auditEntryMacKeySecret
  name: guid(secretsVault.id, 'voicelog-audit-entry-mac-key', identity.id, secretsUserRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    auditEntryMacKeyValue
  ]
}

resource auditRetiredEntryMacKeysAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: auditRetiredEntryMacKeysSecret
  name: guid(secretsVault.id, 'voicelog-audit-retired-entry-mac-keys', identity.id, secretsUserRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    auditRetiredEntryMacKeysValue
  ]
}

resource auditSigningKeyAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  scope: auditSigningKeySecret
  name: guid(secretsVault.id, 'voicelog-audit-signing-key', identity.id, secretsUserRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRoleId)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
  dependsOn: [
    auditSigningKeyValue
  ]
}

// --- private endpoints ---------------------------------------------------------------------------------
// Private DNS zones (privatelink.blob.core.windows.net, privatelink.vaultcore.azure.net) are the network
// hub's; link them to the AKS VNet.

resource blobEndpoint 'Microsoft.Network/privateEndpoints@2023-11-01' = {
  name: 'pe-${storageAccountName}-blob'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: privateEndpointSubnetId
    }
    privateLinkServiceConnections: [
      {
        name: 'blob'
        properties: {
          privateLinkServiceId: storage.outputs.accountId
          groupIds: [
            'blob'
          ]
        }
      }
    ]
  }
}

resource kekEndpoint 'Microsoft.Network/privateEndpoints@2023-11-01' = {
  name: 'pe-${kekVaultName}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: privateEndpointSubnetId
    }
    privateLinkServiceConnections: [
      {
        name: 'vault'
        properties: {
          privateLinkServiceId: kekVault.outputs.vaultId
          groupIds: [
            'vault'
          ]
        }
      }
    ]
  }
}

resource secretsEndpoint 'Microsoft.Network/privateEndpoints@2023-11-01' = {
  name: 'pe-${secretsVaultName}'
  location: location
  tags: tags
  properties: {
    subnet: {
      id: privateEndpointSubnetId
    }
    privateLinkServiceConnections: [
      {
        name: 'vault'
        properties: {
          privateLinkServiceId: secretsVault.id
          groupIds: [
            'vault'
          ]
        }
      }
    ]
  }
}

@description('Helm value workloadIdentity.clientId.')
output identityClientId string = identity.properties.clientId

@description('For PostgreSQL: the identity\'s object id, if Entra authentication is used there later.')
output identityPrincipalId string = identity.properties.principalId

@description('VOICELOG_REGIONS blob_account_url for this region.')
output blobEndpoint string = storage.outputs.blobEndpoint

@description('VOICELOG_REGIONS blob_container for this region.')
output containerName string = storage.outputs.containerName

@description('VOICELOG_REGIONS keyvault_url for this region.')
output kekVaultUri string = kekVault.outputs.vaultUri

@description('Helm value migration.workloadIdentityClientId (the migration Job).')
output migrationIdentityClientId string = migrationIdentity.properties.clientId

@description('Helm value audit.checkpointBlobContainer (the account is blobEndpoint: audit.checkpointBlobAccountUrl).')
output auditCheckpointContainerName string = storage.outputs.auditCheckpointContainerName

@description('Helm value secrets.keyVaultName.')
output secretsVaultName string = secretsVault.name

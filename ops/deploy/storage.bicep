// voicelog: one region's recording storage (deploy once per region, into that region).
//
// A StorageV2 account reachable only with Entra ID over TLS 1.2+, no anonymous access, one private
// container for the recordings, blob soft delete kept short, and a lifecycle rule that deletes blobs
// older than 31 days. That rule is a backstop only: Azure runs lifecycle rules about once a day, and with
// soft delete on a deleted blob stays recoverable for `softDeleteDays` more. The 30-day guarantee (C7)
// comes from the voicelog scheduler, which deletes each recording's data key and blob when its hour bucket
// turns 30 days old and destroys that bucket's key-encryption key, so any copy left behind (soft-deleted
// blob, backup, snapshot) cannot be decrypted. See docs/STORAGE.md.
//
//   az deployment group create -g <rg-in-region> -f ops/deploy/storage.bicep \
//     -p accountName=vlrecseastus voicelogPrincipalId=<object id of voicelog's managed identity>
//
// Then set for the region: blob_backend=azure, blob_account_url=<output blobEndpoint>,
// blob_container=<output containerName>.

targetScope = 'resourceGroup'

@description('Storage account name (3-24 lowercase letters and digits, globally unique), one per region.')
@minLength(3)
@maxLength(24)
param accountName string

@description('Azure region of the account: the region whose recordings it holds (C3).')
param location string = resourceGroup().location

@description('Replication. Zone-redundant by default; geo-redundant SKUs copy recordings to the paired region, which region pinning forbids.')
@allowed([
  'Standard_LRS'
  'Standard_ZRS'
])
param skuName string = 'Standard_ZRS'

@description('Container holding the recordings (voicelog setting `blob_container`).')
param containerName string = 'recordings'

@description('Days a deleted blob stays recoverable (blob soft delete). Short on purpose: long enough to undo an operator mistake, short so deleted recordings do not linger. 1 to 7.')
@minValue(1)
@maxValue(7)
param softDeleteDays int = 1

@description('Backstop: the lifecycle rule deletes recordings older than this many days since creation. Keep it above 30; the scheduler purges at 30.')
@minValue(31)
param lifecycleDeleteAfterDays int = 31

@description('Object (principal) ID of the identity voicelog runs as; it gets Storage Blob Data Contributor on the container only. Empty: no role assignment.')
param voicelogPrincipalId string = ''

@description('Public network access. Disabled by default: reach the account through a private endpoint in the relay\'s network.')
@allowed([
  'Enabled'
  'Disabled'
])
param publicNetworkAccess string = 'Disabled'

@description('Log Analytics workspace resource ID for blob read/write/delete logs. Empty: no diagnostic setting.')
param logAnalyticsWorkspaceId string = ''

@description('Container the audit trail anchors its signed checkpoints in (voicelog setting `audit.checkpoint_blob_container`). main.bicep makes one in every region\'s account, and each region\'s relays export the whole checkpoint sequence to their own. Empty: none in this account.')
param auditCheckpointContainerName string = ''

@description('Days each checkpoint blob stays immutable (WORM, time-based retention with protected append writes): nobody, the account\'s administrators included, can overwrite or delete it before then once the policy is locked.')
@minValue(1)
param auditCheckpointRetentionDays int = 2557

@description('Tags for every resource.')
param tags object = {}

// Built-in role: Storage Blob Data Contributor.
var blobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_36:bypass None on purpose: reached only through the private endpoint, and no Azure service reads this account
  // checkov:skip=CKV_AZURE_206:skuName is a parameter checkov does not resolve: ZRS by default; geo-redundant SKUs are refused (C3)
  // checkov:skip=CKV_AZURE_43:accountName is a parameter checkov does not resolve; @minLength/@maxLength and the description hold the rule
  name: accountName
  location: location
  tags: tags
  sku: {
    name: skuName
  }
  kind: 'StorageV2'
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false // no anonymous reads, whatever a container says
    allowSharedKeyAccess: false // Entra ID only: no account keys, no shared-key SAS
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: publicNetworkAccess
    networkAcls: {
      defaultAction: 'Deny'
      bypass: 'None'
    }
    isHnsEnabled: false
    isSftpEnabled: false
    isNfsV3Enabled: false
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true // a second layer at rest under voicelog's own envelope
      services: {
        blob: {
          enabled: true
          keyType: 'Account'
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
      allowPermanentDelete: false
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: softDeleteDays
    }
    // No versions, no point-in-time restore, no change feed: each would keep more copies of recordings.
    isVersioningEnabled: false
    restorePolicy: {
      enabled: false
    }
    changeFeed: {
      enabled: false
    }
  }
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: containerName
  properties: {
    publicAccess: 'None'
    metadata: {}
  }
}

// The audit trail's anchor (C6): append blobs of signed checkpoints, outside the database's reach. The policy
// admits appends (allowProtectedAppendWrites) and refuses overwrites and deletes. Lock it after the first
// deployment (`az storage container immutability-policy lock`): an unlocked policy can still be removed by an
// account administrator, a locked one by no one. The lifecycle rule below never touches this container.
// voicelog's identity gets `checkpointAppender` on this container only: read, create and append, no overwrite
// and no delete (the policy refuses those to anyone anyway): `checkpointAccess` below.
resource auditCheckpoints 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = if (!empty(auditCheckpointContainerName)) {
  parent: blobService
  name: empty(auditCheckpointContainerName) ? 'unused' : auditCheckpointContainerName
  properties: {
    publicAccess: 'None'
    metadata: {}
  }
}

resource auditCheckpointsWorm 'Microsoft.Storage/storageAccounts/blobServices/containers/immutabilityPolicies@2023-05-01' = if (!empty(auditCheckpointContainerName)) {
  parent: auditCheckpoints
  name: 'default'
  properties: {
    immutabilityPeriodSinceCreationInDays: auditCheckpointRetentionDays
    allowProtectedAppendWrites: true
  }
}

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'backstop-delete-recordings'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'appendBlob'
              ]
              prefixMatch: [
                '${containerName}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterCreationGreaterThan: lifecycleDeleteAfterDays
                }
              }
            }
          }
        }
      ]
    }
  }
  dependsOn: [
    container
  ]
}

resource voicelogAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(voicelogPrincipalId)) {
  scope: container
  name: guid(container.id, voicelogPrincipalId, blobDataContributorRoleId)
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', blobDataContributorRoleId)
    principalId: voicelogPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Exactly what app/audit/blob_sink.py does: list the checkpoint blobs and read their tails (blobs/read), create
// the next append blob if missing and append one block per checkpoint (blobs/add/action: new blobs and appends
// only). No blobs/write (overwrite, properties, metadata), no delete, no container rights, no management plane.
resource checkpointAppender 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (!empty(voicelogPrincipalId) && !empty(auditCheckpointContainerName)) {
  name: guid(resourceGroup().id, accountName, 'voicelog-audit-checkpoint-appender')
  properties: {
    roleName: 'voicelog audit checkpoint appender (${accountName})'
    description: 'Read, create and append voicelog audit checkpoint blobs in one container: no overwrite, no delete.'
    type: 'CustomRole'
    assignableScopes: [
      resourceGroup().id
    ]
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: [
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/add/action'
        ]
        notDataActions: []
      }
    ]
  }
}

resource checkpointAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(voicelogPrincipalId) && !empty(auditCheckpointContainerName)) {
  scope: auditCheckpoints
  name: guid(auditCheckpoints.id, voicelogPrincipalId, 'voicelog-audit-checkpoint-appender')
  properties: {
    roleDefinitionId: checkpointAppender.id
    principalId: voicelogPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource blobLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = if (!empty(logAnalyticsWorkspaceId)) {
  scope: blobService
  name: 'voicelog-blob-audit'
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [
      {
        category: 'StorageRead'
        enabled: true
      }
      {
        category: 'StorageWrite'
        enabled: true
      }
      {
        category: 'StorageDelete'
        enabled: true
      }
    ]
  }
}

@description('Account URL for the region\'s `blob_account_url` setting.')
output blobEndpoint string = account.properties.primaryEndpoints.blob

@description('Container for the region\'s `blob_container` setting.')
output containerName string = container.name

@description('Container of the audit checkpoints (voicelog setting `audit.checkpoint_blob_container`); empty: none here.')
output auditCheckpointContainerName string = auditCheckpointContainerName

@description('Storage account resource ID (for the private endpoint).')
output accountId string = account.id

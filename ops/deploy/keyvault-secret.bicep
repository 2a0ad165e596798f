// voicelog: one secret in an existing vault of this resource group. main.bicep writes the audit trail's keys
// with it, and only when the operator gives a value (first deployment, rotation): a later deployment that gives
// none leaves the secret, and so the key every relay runs, untouched (docs/DEPLOY.md, "Audit keys").

targetScope = 'resourceGroup'

@description('Name of the vault (in this resource group) that holds the secret.')
param vaultName string

@description('Secret name.')
param secretName string

@description('Secret value; each deployment of this module writes it as a new version.')
@secure()
param value string

@description('What the value is (Key Vault contentType), e.g. application/json.')
param contentType string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41:no expiry: an expired audit key would stop every relay from starting; rotation is DEPLOY.md "Audit keys"
  parent: vault
  name: secretName
  properties: {
    contentType: contentType
    value: value
  }
}

@description('The secret\'s name (its versions: az keyvault secret list-versions).')
output name string = secret.name

// voicelog: the PostgreSQL Flexible Server every region shares (deploy once, in the home region).
//
// It holds metadata only: resources, tickets, consents, grants, the audit chain, recording rows with their
// *wrapped* data keys. No session content ever reaches it (C1, C2), and a wrapped key is useless once its
// region's hour-bucket KEK is destroyed (C7), so backups need no 30-day limit of their own.
// Zone-redundant HA (synchronous standby in another zone, automatic failover), VNet-integrated (no public
// access), TLS required.
//
//   az deployment group create -g rg-voicelog-shared -f ops/deploy/postgres.bicep \
//     -p serverName=voicelog-pg delegatedSubnetId=<subnet> privateDnsZoneId=<zone> administratorPassword=<...>
//
// Then, as the administrator, make the two roles (docs/DEPLOY.md, "Database roles"; PostgreSQL has no ARM
// resource for roles). The OWNER role owns the schema's tables and is used only by migrations; the SERVICE
// role owns nothing, so it can never `ALTER TABLE ... DISABLE TRIGGER` on the audit tables (C6):
//
//   CREATE ROLE voicelog_owner LOGIN PASSWORD '<owner password>';
//   CREATE ROLE voicelog_app LOGIN PASSWORD '<service password>';   -- NOT a member of voicelog_owner
//   GRANT voicelog_owner TO voicelogadmin;                           -- only to hand the database over
//   ALTER DATABASE voicelog OWNER TO voicelog_owner;
//   REVOKE voicelog_owner FROM voicelogadmin;
//
// and pass their URLs to main.bicep (ownerDatabaseUrl, serviceDatabaseUrl):
// postgresql+asyncpg://<role>:<password>@<fqdn>:5432/voicelog?ssl=require. The migration Job runs
// `voicelog db upgrade` as the owner with VOICELOG_DATABASE_SERVICE_ROLE=voicelog_app, which grants the service
// role exactly its privileges (app/db_privileges.py) after every migration.

targetScope = 'resourceGroup'

param serverName string
param location string = resourceGroup().location

@description('Compute: General Purpose D8ds_v5 (8 vCores, 32 GiB, 3,422 user connections) carries one region at 10,000 concurrent sessions (100 pods x 2 workers x 14 connections = 2,800), or two at a realistic recorded share; docs/DEPLOY.md, "Capacity".')
param skuName string = 'Standard_D8ds_v5'

@allowed([
  'GeneralPurpose'
  'MemoryOptimized'
])
param skuTier string = 'GeneralPurpose'

@description('Storage in GiB; it grows by itself past 95% used.')
param storageSizeGB int = 128

@allowed([
  '16'
  '17'
])
param postgresVersion string = '16'

param administratorLogin string = 'voicelogadmin'

@description('Role that owns voicelog\'s tables; migrations connect as it (Helm: migration.databaseUrlSecret).')
param ownerRoleName string = 'voicelog_owner'

@description('Role the relays connect as: owns nothing, holds only the grants `voicelog db upgrade` makes.')
param serviceRoleName string = 'voicelog_app'

@secure()
param administratorPassword string

@description('Delegated subnet (Microsoft.DBforPostgreSQL/flexibleServers) in the shared VNet.')
param delegatedSubnetId string

@description('Private DNS zone <name>.postgres.database.azure.com linked to every region\'s AKS VNet.')
param privateDnsZoneId string

@description('Availability zone of the primary; the standby goes to standbyZone.')
param primaryZone string = '1'
param standbyZone string = '2'

@description('Days of point-in-time restore.')
@minValue(7)
@maxValue(35)
param backupRetentionDays int = 14

param tags object = {}

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2024-08-01' = {
  name: serverName
  location: location
  tags: tags
  sku: {
    name: skuName
    tier: skuTier
  }
  properties: {
    version: postgresVersion
    administratorLogin: administratorLogin
    administratorLoginPassword: administratorPassword
    authConfig: {
      // voicelog connects with a password from the secrets vault (asyncpg URL); Entra sign-in is for people.
      activeDirectoryAuth: 'Enabled'
      passwordAuth: 'Enabled'
      tenantId: subscription().tenantId
    }
    availabilityZone: primaryZone
    highAvailability: {
      mode: 'ZoneRedundant'
      standbyAvailabilityZone: standbyZone
    }
    storage: {
      storageSizeGB: storageSizeGB
      autoGrow: 'Enabled'
    }
    backup: {
      backupRetentionDays: backupRetentionDays
      geoRedundantBackup: 'Disabled'
    }
    network: {
      delegatedSubnetResourceId: delegatedSubnetId
      privateDnsZoneArmResourceId: privateDnsZoneId
      publicNetworkAccess: 'Disabled'
    }
  }
}

resource requireTls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'require_secure_transport'
  properties: {
    value: 'on'
    source: 'user-override'
  }
}

resource minimumTls 'Microsoft.DBforPostgreSQL/flexibleServers/configurations@2024-08-01' = {
  parent: server
  name: 'ssl_min_protocol_version'
  properties: {
    value: 'TLSv1.2'
    source: 'user-override'
  }
  dependsOn: [
    requireTls
  ]
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2024-08-01' = {
  parent: server
  name: 'voicelog'
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

output fqdn string = server.properties.fullyQualifiedDomainName
output databaseName string = database.name
output ownerRoleName string = ownerRoleName
output serviceRoleName string = serviceRoleName

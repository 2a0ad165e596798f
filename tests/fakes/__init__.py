"""Fakes for components that cannot run here (only Key Vault)."""

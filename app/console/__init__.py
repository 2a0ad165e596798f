"""The web console for engineers, managers, customer admins and auditors (server-rendered, /console)."""

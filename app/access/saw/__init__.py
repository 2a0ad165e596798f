"""Secure access workstations: registered client-certificate devices, each bound to one staff member (C5)."""

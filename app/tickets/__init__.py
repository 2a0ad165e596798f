"""Support tickets, engineer assignments, and customer logging consents (the opt-in, C1)."""

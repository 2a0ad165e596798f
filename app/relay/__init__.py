"""The WebSocket relay: clients connect as to Voice Live; frames pass both ways untouched."""

"""voicelog: an opt-in, encrypted debug-logging relay for realtime voice AI."""

__version__ = "0.1.0"

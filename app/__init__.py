"""voicelog: an opt-in, encrypted debug-logging relay for realtime voice AI."""

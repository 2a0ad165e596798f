"""Point-wise playback of one recording (C4): caller/service audio as WAV, the event timeline, transcripts."""

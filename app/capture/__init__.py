"""The recorder: taps frames of consented sessions, seals them into regional blobs (C1, C2, C8, C9)."""

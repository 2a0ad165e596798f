"""Access: secure access workstations, just-in-time grants, the read policy and point-wise playback."""

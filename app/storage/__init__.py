"""Regional blob storage for recordings (C3): one BlobStore per region, local directory or Azure append blobs.

Knows nothing of tickets, people, keys or HTTP: it keeps sealed bytes under a request ID and a start hour.
"""

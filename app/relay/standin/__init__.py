"""A built-in upstream that speaks enough of the Voice Live / Realtime protocol for the SDK to run."""

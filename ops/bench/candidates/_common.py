"""What every candidate relay in this folder shares: its command line, the upstream URL, close-code mapping.

A candidate is the least a relay needs, on one WebSocket library, for `ops/bench/relay_candidates.py`: it accepts
a WebSocket at `/resources/<name>/<rest>?<query>`, opens one WebSocket to `<upstream>/<rest>?<query>`, relays every
message both ways byte-identical (text stays text, binary stays binary; the upstream's handshake happens after
the client's, so the client's first frames wait for it), passes a close code and reason on to the other side, and
answers pings on the side they arrive. No recording, no admission, no metrics, no logging.
"""

from __future__ import annotations

import argparse

PREFIX = "/resources/"
MAX_MESSAGE_BYTES = 8 * 1024 * 1024  # the load generator's own limit (relay_latency.py connects with 8 MiB)


def parse_args(description: str, no_aiofastnet: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="ws://host:port of the stand-in")
    if no_aiofastnet:
        parser.add_argument("--no-aiofastnet", action="store_true", help="uvloop's transports, not aiofastnet's")
    return parser.parse_args()


def upstream_url(upstream: str, path_and_query: str) -> str | None:
    """`/resources/<name>/<rest>?q` -> `<upstream>/<rest>?q`; None for any other path (the relay answers 404)."""
    if not path_and_query.startswith(PREFIX):
        return None
    _name, sep, rest = path_and_query[len(PREFIX):].partition("/")
    if not sep:
        return None
    return f"{upstream.rstrip('/')}/{rest}"


def sendable_close(code: int | None) -> int:
    """A received close code as one that may be sent: 1006 (vanished) becomes 1001 as voicelog reports it,
    1005 (no status) and a missing code 1000, since none of these libraries sends an empty close frame."""
    if code is None or code == 1005:
        return 1000
    if code == 1006:
        return 1001
    return code

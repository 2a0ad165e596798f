"""The dev issuer's gate: a browser on this machine, addressing this machine by a name of this machine.

A loopback peer alone is not enough. A web page whose own name is re-pointed at 127.0.0.1 (DNS rebinding)
talks to the service from the loopback address as a same-origin page, with its own name in `Host`; only the
name tells it apart from the user's own browser tab.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def names_this_machine(host: str | None, issuer_url: str) -> bool:
    """`host` (a Host header, `name[:port]`) is `localhost`, a loopback address, or the dev issuer's own host."""
    if not host:
        return False
    try:
        name = urlsplit(f"//{host}").hostname
        _ = urlsplit(f"//{host}").port  # a malformed port raises
    except ValueError:
        return False
    if name is None:
        return False
    if name == "localhost" or name == urlsplit(issuer_url).hostname:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False

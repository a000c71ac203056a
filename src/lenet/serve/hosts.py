"""The Host header check: the server answers only to the names it is meant to be reached by.

    app.add_middleware(HostCheck, names=["digits.lan"])    # + the loopback names, always
    lenet serve --allow-host digits.lan                   # the same from the command line

Why: a page on any web site can point its own name at 127.0.0.1 (DNS rebinding) and then
read the answers of a server on loopback as if they were its own. Such requests carry the
attacker's name in `Host`; refusing every name that is not configured stops them. Loopback
names (`localhost`, `127.0.0.1`, `::1`, ...) are always accepted: no other site can use them.
Anything else gets a 400 JSON error naming the flag that allows it.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"localhost"})  # and every loopback IP address (is_loopback)


def normalise(name: str) -> str:
    """A host name as compared: lower case, no trailing dot, IPv6 without brackets."""
    return name.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def host_of(header: str) -> str:
    """The name in a Host header value (`name`, `name:port`, `[v6]:port`), normalised."""
    header = header.strip()
    if header.startswith("["):  # [::1]:8000
        return normalise(header.split("]")[0])
    return normalise(header.rsplit(":", 1)[0] if header.count(":") == 1 else header)


def is_loopback(name: str) -> bool:
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostCheck:
    """ASGI middleware: requests whose Host is neither loopback nor in `names` get a 400."""

    def __init__(self, app: ASGIApp, names: Iterable[str] = ()):
        self.app = app
        self.names = frozenset(normalise(name) for name in names)

    def allows(self, name: str) -> bool:
        return is_loopback(name) or name in self.names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            values = [value for key, value in scope["headers"] if key == b"host"]
            name = host_of(values[0].decode("latin-1")) if len(values) == 1 else None
            if name is None or not self.allows(name):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})  # policy violation
                else:
                    await self.refuse(values, scope, receive, send)
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def refuse(values: list[bytes], scope: Scope, receive: Receive, send: Send) -> None:
        if len(values) != 1:
            message = "the request needs exactly one Host header (HTTP/1.1)"
        else:
            name = host_of(values[0].decode("latin-1"))
            message = (f"Host {name!r} is not a name this server answers to (it stops DNS rebinding); "
                       f"start it with --allow-host {name} to allow it")
        await JSONResponse({"error": message}, status_code=400)(scope, receive, send)

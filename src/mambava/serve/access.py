"""Who may use a server: the Host and Origin checks and the token, one ASGI middleware in front of every route.

- **Host**: a request must name this server: the address the client connected to (a loopback server also
  answers to `localhost`), or a host of an `--allow-origin`. A web page on another site that points its own name
  at 127.0.0.1 (DNS rebinding) sends its own name as Host, and is refused (400).
- **Origin**: a browser names the page behind a request; a page of another site is refused (403), a page of
  this server or of an `--allow-origin` is not. Programs that send no Origin (curl, scripts) are not browsers
  driven by someone else's page, and pass.
- **Token**: when the server has one, every route but the page and its script needs it, as
  `Authorization: Bearer TOKEN` or `?token=TOKEN` (the WebSocket of a browser cannot send headers); else 401.

A refused WebSocket gets the same JSON answer over HTTP where the server can send one (the ASGI
`websocket.http.response` extension), else close code 1008 before the handshake completes.
"""

from __future__ import annotations

import ipaddress
import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from fastapi.responses import JSONResponse

from mambava.core.errors import MambavaError

PUBLIC = frozenset({"/", "/app.js"})  # the page and its script: no data, and they must load for the token to be read
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """True for an address (or `localhost`) only this machine can reach.

    Args:
        host: a bind address or host name.

    Returns:
        Whether it is a loopback address.
    """
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A fresh random token (32 URL-safe characters, 192 bits), as notebook servers make them."""
    return secrets.token_urlsafe(24)


def _split_host(value: str) -> tuple[str, str]:
    """("name", "port") of a Host header or an origin's netloc; IPv6 in brackets; port "" when absent."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    name, _, port = value.partition(":")
    return name, port


def normalize_origin(origin: str) -> str:
    """An origin as browsers send it: scheme://host[:port], lower case, no path. MambavaError for anything
    else (an `--allow-origin` value is checked at start).

    Args:
        origin: e.g. "https://va.example.org".

    Returns:
        The normalized origin.
    """
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise MambavaError(f"--allow-origin {origin!r}: expected scheme://host[:port], e.g. https://va.example.org")
    return f"{parts.scheme}://{parts.netloc.lower()}"


@dataclass(frozen=True)
class Access:
    """The access policy of one server.

    Attributes:
        token: the token every route but the page needs (None: none needed).
        allow_origins: origins (scheme://host[:port]) of other sites whose pages may use the server, e.g. the
            public address of a TLS reverse proxy in front of it; their hosts are also allowed as Host.
    """

    token: str | None = None
    allow_origins: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self):
        object.__setattr__(self, "allow_origins", tuple(normalize_origin(o) for o in self.allow_origins))
        if self.token is not None and len(self.token) < 8:
            raise MambavaError("--token: at least 8 characters (leave it out for a generated one)")

    def allowed_hosts(self, server: tuple | None) -> set[str]:
        """The host names a request may carry on a connection to `server` (ASGI scope["server"])."""
        names = {_split_host(urlsplit(o).netloc)[0] for o in self.allow_origins}
        if server:
            address = str(server[0]).lower().strip("[]")
            names.add(address)
            if is_loopback(address):
                names |= LOOPBACK_NAMES
        return names

    def refusal(self, scope) -> tuple[int, str] | None:
        """(status, one-line reason) for a request this policy refuses, None for one it lets through."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if _split_host(host)[0] not in self.allowed_hosts(scope.get("server")):
            return 400, (
                f"Host {host[:100]!r} is not this server's address (a page of another site?); "
                "a name of your own needs --allow-origin SCHEME://NAME[:PORT]"
            )
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, host):
            return 403, (
                f"Origin {origin[:100]!r}: a page of another site may not use this server (--allow-origin allows one)"
            )
        if self.token is not None and scope.get("path") not in PUBLIC:
            given = _bearer(headers.get("authorization", ""))
            if given is None:
                given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [None])[0]
            if given is None:
                return 401, "this server needs its token: Authorization: Bearer TOKEN, or ?token=TOKEN"
            if not secrets.compare_digest(given.encode("utf-8", "replace"), self.token.encode("utf-8")):
                return 401, "wrong token"
        return None

    def _origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.strip().lower()
        if origin in self.allow_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc == host.strip().lower()


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class AccessGuard:
    """ASGI middleware: requests `access` refuses get their one-line JSON error and never reach a route.

    Args:
        app: the ASGI application behind it.
        access: the policy.
    """

    def __init__(self, app, access: Access):
        self.app = app
        self.access = access

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        refused = self.access.refusal(scope)
        if refused is None:
            return await self.app(scope, receive, send)
        status, reason = refused
        if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
            # (a WebSocket handshake is answered with the refusal itself, status and JSON, as HTTP)
            return await JSONResponse({"error": reason}, status_code=status)(scope, receive, send)
        await send({"type": "websocket.close", "code": 1008, "reason": reason[:120]})


__all__ = ["Access", "AccessGuard", "PUBLIC", "is_loopback", "new_token", "normalize_origin"]

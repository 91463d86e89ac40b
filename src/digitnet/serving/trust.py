"""Which requests the server trusts: Host and Origin checks, and log-safe text.

A server on 127.0.0.1 is still reachable from every web page the user opens: a page may post
forms and ``fetch`` in no-cors mode to it (CSRF), and a hostile domain re-pointed at 127.0.0.1
(DNS rebinding) may even read the answers. Two checks stop both:

- **Host**: the name the client asked for must be one this server answers to: the loopback
  names, the address it is bound to, and ``--allowed-host`` names. A rebinding page's requests
  carry its own domain and are refused (400).
- **Origin** on requests that change state (anything but GET, HEAD, OPTIONS): a browser names
  the page that sent the request; it must be this server itself (403 otherwise).
  ``Sec-Fetch-Site: cross-site`` or ``same-site`` is refused too, for browsers that omit
  Origin. Clients that are not browsers (curl, scripts, TF Serving clients) send neither
  header and are not affected.
"""

from __future__ import annotations

from collections.abc import Iterable

from digitnet.serving.limits import LOOPBACK_HOSTS

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ANY_HOST = "*"
_WILDCARD_ADDRESSES = {"0.0.0.0", "::", "[::]", ""}


def host_name(host: str) -> str:
    """The name part of a Host header or of an Origin's authority, lower case: "[::1]" for
    "[::1]:8000", "localhost" for "LOCALHOST.:80"."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return name.rstrip(".")


def allowed_host_names(bound_host: str | None, extra: Iterable[str] = ()) -> frozenset[str]:
    """The Host names a server bound to ``bound_host`` answers to: loopback names, the bound
    address itself unless it is a wildcard (0.0.0.0, ::), and ``extra``."""
    names = set(LOOPBACK_HOSTS)
    if bound_host is not None and bound_host not in _WILDCARD_ADDRESSES:
        names.add(f"[{bound_host}]" if ":" in bound_host and "[" not in bound_host else bound_host)
    names.update(extra)
    return frozenset(ANY_HOST if name == ANY_HOST else host_name(name) for name in names)


def host_refusal(host: bytes | None, allowed: frozenset[str]) -> str | None:
    """Why a request naming ``host`` is refused, or None if it is allowed (or sent no Host,
    which only non-browser HTTP/1.0 clients do)."""
    if host is None or ANY_HOST in allowed:
        return None
    name = host_name(host.decode("latin-1"))
    if name in allowed:
        return None
    return (
        f"this server does not answer to the host name {shorten(name)!r} (a guard against "
        f"DNS rebinding); it answers to {', '.join(sorted(allowed))}. To reach it under "
        f"another name, start it with --allowed-host NAME"
    )


def origin_refusal(
    method: str, host: bytes | None, origin: bytes | None, fetch_site: bytes | None
) -> str | None:
    """Why a cross-origin state-changing request is refused, or None if it may go on."""
    if method in SAFE_METHODS:
        return None
    if fetch_site is not None and fetch_site.lower() in (b"cross-site", b"same-site"):
        return (
            f"cross-site request refused (Sec-Fetch-Site: {shorten(fetch_site.decode('latin-1'))}):"
            f" only this server's own pages and non-browser clients may send {method} requests"
        )
    if origin is None:
        return None
    text = origin.decode("latin-1").strip()
    authority = text.split("://", 1)[1] if "://" in text else None
    if authority is not None and host is not None:
        if authority.lower().rstrip("/") == host.decode("latin-1").strip().lower():
            return None
    return (
        f"cross-origin request refused: a page at {shorten(text)!r} may not send {method} "
        f"requests to this server; its own pages and clients without an Origin header (curl, "
        f"scripts) may"
    )


def shorten(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def printable(text: str, limit: int = 300) -> str:
    """``text`` safe for a one-line log: control characters, backslashes and non-ASCII
    escaped (a decoded "%0a" cannot start a forged line), cut at ``limit`` characters."""
    if text.isascii() and text.isprintable() and "\\" not in text:
        return shorten(text, limit)
    escaped = []
    for char in text:
        code = ord(char)
        if char == "\\":
            escaped.append("\\\\")
        elif 0x20 <= code < 0x7F:
            escaped.append(char)
        elif code < 0x100:
            escaped.append(f"\\x{code:02x}")
        else:
            escaped.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return shorten("".join(escaped), limit)

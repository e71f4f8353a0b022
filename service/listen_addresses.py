"""The ``host:port`` addresses ``unimeter serve`` listens on: parsing them, and finding out that one
is taken before the data directory is touched.

A port already in use must stop a server before it locks and recovers its data directory (minutes
for a big one, and a second server must not touch a live directory at all), and must read as one
line, not as gRPC's C-core log plus a traceback. Checking is a bind of a throwaway socket with the
same ``SO_REUSEADDR`` the real listeners use, so a port left in TIME_WAIT by the last run is free
and a port someone listens on is not. It is not a reservation: the real listeners bind right after.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterator

__all__ = ["AddressInUse", "check_free", "naming_address_in_use", "split_host_port"]


class AddressInUse(Exception):
    """Something already listens on the address."""

    def __init__(self, addr: str) -> None:
        super().__init__(f"{addr} is already in use")
        self.addr = addr


def split_host_port(addr: str) -> tuple[str, int]:
    """``"host:port"`` → (host, port); raises ValueError on a malformed address."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address {addr!r} is not host:port")
    return host.strip("[]"), int(port)


def check_free(addr: str) -> None:
    """Raise :class:`AddressInUse` if ``addr`` cannot be listened on because it is taken, and
    ValueError (one sentence) if it cannot be listened on at all; port 0 is always free."""
    host, port = split_host_port(addr)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValueError(f"cannot listen on {addr}: {exc.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressInUse(addr) from None
                raise ValueError(f"cannot listen on {addr}: {exc.strerror}") from None


@contextlib.contextmanager
def naming_address_in_use(addr: str) -> Iterator[None]:
    """Turn the EADDRINUSE of a listener bound in the block into :class:`AddressInUse` (the port
    was taken between :func:`check_free` and the bind)."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise AddressInUse(addr) from None
        raise

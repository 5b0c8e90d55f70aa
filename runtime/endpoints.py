"""Where sockets live: ipc endpoints in a private 0700 directory, tcp on one interface
(and which interface holds an address, for libraries that bind by interface name)."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import struct
import tempfile

from actorexec.protocol.errors import ConfigError


class EndpointDir:
    """A private directory for ``ipc://`` socket files; removed (with them) on ``cleanup``.

    Why: socket files in a shared /tmp are reachable by other users and leak
    when a process is killed; one 0700 directory per executor fixes both.
    """

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="actorexec-")  # mkdtemp creates it 0700

    def ipc(self, name: str) -> str:
        return f"ipc://{os.path.join(self.path, name)}"

    def cleanup(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port free on ``host`` right now (the usual small race applies)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tcp(host: str) -> str:
    """``tcp://host:port`` on a free port of ``host``; refuses every all-interfaces form."""
    if host in ("", "*", "0.0.0.0", "::"):
        raise ValueError("refusing to bind all interfaces; name one host")
    return f"tcp://{host}:{free_tcp_port(host)}"


_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def interface_of(host: str) -> str:
    """The name of the network interface holding ``host``'s IPv4 address (``"lo"`` for
    127.0.0.1); ConfigError if none does."""
    if host in ("::1", "localhost"):
        host = "127.0.0.1"
    try:
        address = socket.gethostbyname(host)
    except OSError as exc:
        raise ConfigError(f"ParallelConfig.host={host!r} does not resolve: {exc}") from None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                reply = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, request)
            except OSError:  # no IPv4 address on this interface
                continue
            if socket.inet_ntoa(reply[20:24]) == address:
                return name
    raise ConfigError(f"no network interface holds ParallelConfig.host={host!r} ({address})")

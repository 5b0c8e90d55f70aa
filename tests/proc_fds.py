"""What a process holds open, read from /proc (Linux): for the leftover checks."""

from __future__ import annotations

import os


def fd_targets(pid: int) -> list[str]:
    """Where each of ``pid``'s open fds points (``socket:[inode]``, ``/memfd:name``, a path);
    fds closed while being read are skipped."""
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def socket_inodes(pid: int) -> set[str]:
    """Inodes (as /proc/net/* lists them) of the sockets ``pid`` holds open."""
    return {t[len("socket:["):-1] for t in fd_targets(pid) if t.startswith("socket:[")}

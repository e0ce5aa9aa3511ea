"""Claims on a partial run folder, so that concurrent processes (a sweep's workers, two sweeps
on one folder, machines sharing a file system) compute each run once.

A claim is ``lease.json`` in the folder: the owner's host, pid, process start time and a random
token, written with ``O_EXCL``. Its modification time is the heartbeat, refreshed while the owner
trains. A claim is taken over when its owner is dead (same host: no such process, or another
process with that pid) or its heartbeat is older than :data:`LEASE_STALE_S`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import time
import uuid
from pathlib import Path

#: seconds after which a claim on another host (or without a live owner) counts as abandoned
LEASE_STALE_S = 600.0
LEASE_FILE = "lease.json"


class Claimed(RuntimeError):
    """The runs are being computed by another live process (the message names it)."""


def proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc; None elsewhere or when it is gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner_alive(lease: dict) -> bool:
    if lease.get("host") != socket.gethostname():
        return True  # another machine: only its heartbeat can tell
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError):
        return True
    start = lease.get("start")
    return start is None or proc_start(int(lease["pid"])) == start


class Lease:
    """This process's claim on a partial folder (see the module docstring)."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / LEASE_FILE
        self.token = uuid.uuid4().hex
        self._touched = 0.0

    def acquire(self) -> Lease:
        """Take the claim, or raise :class:`Claimed` if a live owner holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": proc_start(os.getpid()),
            "token": self.token,
            "since": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text())
                    age = time.time() - self.path.stat().st_mtime
                except (OSError, ValueError):
                    time.sleep(0.05)  # being written or taken over right now
                    continue
                if _owner_alive(other) and age < LEASE_STALE_S:
                    raise Claimed(f"claimed by {other.get('host')} pid {other.get('pid')} since {other.get('since')}")
                try:  # abandoned: move it aside (only one taker succeeds), then claim anew
                    os.rename(self.path, self.path.with_name(f"{LEASE_FILE}.stale-{self.token}"))
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise Claimed(f"could not claim {self.path.parent} (contended)")

    def refresh(self, every_s: float = 10.0) -> None:
        """Advance the heartbeat (at most every ``every_s`` seconds)."""
        now = time.time()
        if now - self._touched >= every_s:
            try:
                os.utime(self.path)
            except OSError:
                pass
            self._touched = now

    def release(self) -> None:
        try:
            if json.loads(self.path.read_text()).get("token") == self.token:
                self.path.unlink()
        except (OSError, ValueError):
            pass

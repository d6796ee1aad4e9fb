"""train.lock: one `linkedout train` at a time per run directory, stale locks taken over."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from linkedout.errors import LinkedOutError


class RunLock:
    """train.lock: one `train` at a time per run directory. Created with O_CREAT|O_EXCL, it
    holds the pid, host and start time of its holder; a lock whose process no longer runs on
    this host is stale and taken over."""

    def __init__(self, lock_file: Path, command: str = "train"):
        self.file = lock_file
        self.command = command
        """What holds it: `train`, or a catalog change (`catalog add`), which must not run
        beside training (which rewrites the catalog when it ends) nor beside another change."""
        self.held = False

    def holder(self) -> dict | None:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written, or damaged

    def describe(self, holder: dict | None = None) -> str:
        holder = self.holder() if holder is None else holder
        if not holder:
            return f"{self.file} exists"
        started = holder.get("started")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
        return f"pid {holder.get('pid')} on {holder.get('host')}, since {when}"

    def holder_alive(self, holder: dict | None = None) -> bool:
        """Whether the holder may still run (True when that cannot be told from here)."""
        holder = self.holder() if holder is None else holder
        if holder is None:
            return False
        if not holder or holder.get("host") != socket.gethostname():
            return True
        return _pid_alive(holder.get("pid"))

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock was taken over. A live holder is
        one line naming it."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(3):
            if self._create():
                self.held = True
                return note
            holder = self.holder()
            if holder is None:
                continue  # released in the meantime
            if self.holder_alive(holder):
                self._refuse(holder)
            note = (
                f"took over the stale lock of pid {holder.get('pid')} (no longer running) on "
                f"{self.file.parent}"
            )
            # Claimed by renaming first, so two processes taking over the same stale lock
            # cannot both remove it: only one rename of that file succeeds.
            claimed = self.file.with_name(f"{self.file.name}.stale-{os.getpid()}")
            try:
                os.replace(self.file, claimed)
            except FileNotFoundError:
                continue
            if self._read(claimed) != holder:  # someone else's fresh lock: put it back
                try:
                    os.link(claimed, self.file)
                except FileExistsError:
                    pass
                claimed.unlink(missing_ok=True)
                continue
            claimed.unlink(missing_ok=True)
        raise LinkedOutError(
            f"{self.file.parent} is being locked by other `linkedout train` runs: wait for them"
        )

    def refuse_if_held(self) -> None:
        """One line naming the holder when another live process holds the lock."""
        holder = self.holder()
        if holder is None or self.held or not self.holder_alive(holder):
            return
        self._refuse(holder)

    def _refuse(self, holder: dict) -> None:
        command = holder.get("command", "train") if holder else "train"
        if command != "train":
            raise LinkedOutError(
                f"{self.file.parent} is being changed by `linkedout {command}` "
                f"({self.describe(holder)}): wait for it to finish"
            )
        if not holder:
            raise LinkedOutError(
                f"{self.file.parent} is locked by another `linkedout train` ({self.file} "
                f"exists and is unreadable): if no training runs on it, delete {self.file}"
            )
        here = holder.get("host") == socket.gethostname()
        hint = "wait for it to finish, or choose a new --out" + (
            "" if here else f" (if it no longer runs on that host, delete {self.file})"
        )
        raise LinkedOutError(
            f"{self.file.parent} is being trained by another `linkedout train` "
            f"({self.describe(holder)}): {hint}"
        )

    def release(self) -> None:
        if self.held:
            self.held = False
            holder = self.holder()
            if holder and holder.get("pid") == os.getpid():
                self.file.unlink(missing_ok=True)

    def _create(self) -> bool:
        try:
            fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": self.command,
        }
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return True

    @staticmethod
    def _read(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True

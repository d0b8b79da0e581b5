"""The writer lock: ``NAME.lock`` next to a state, so two jobs never write the same state at once.

The lock file holds ``{"pid", "host", "created"}`` of its holder. A lock left by a dead process on
this host is stale and taken over; a lock from another host cannot be checked and always blocks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from types import TracebackType

from ricordo.errors import StateLockedError
from ricordo.state.fs import Location
from ricordo.state.manifest import utc_now
from ricordo.state.paths import LOCK_SUFFIX, STALE_MARK

log = logging.getLogger(__name__)

# A lock file that exists but cannot be parsed is normally one being written this instant;
# only after this many seconds is it treated as the debris of a crash.
UNREADABLE_GRACE_S = 10.0
_ATTEMPTS = 5


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` on this host exists and is not a zombie."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:  # a killed but unreaped child still answers kill(0); /proc tells it is a zombie
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _parse_holder(raw: bytes) -> tuple[int, str] | None:
    try:
        data = json.loads(raw.decode("utf-8"))
        pid, host = data["pid"], data["host"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not isinstance(host, str):
        return None
    return pid, host


class StateLock:
    """Context manager holding ``NAME.lock`` while a state is written (local: O_EXCL create)."""

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.path = loc.path + LOCK_SUFFIX
        self.display = loc.url.rstrip("/") + LOCK_SUFFIX
        self.host = socket.gethostname()
        self._payload = json.dumps(
            {"pid": os.getpid(), "host": self.host, "created": utc_now()}, sort_keys=True
        ).encode("utf-8")
        self._held = False

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def _locked_error(self, holder: tuple[int, str] | None) -> StateLockedError:
        who = f"pid {holder[0]} on host {holder[1]}" if holder else "unknown holder"
        return StateLockedError(
            f"another job ({who}) is writing {self.loc.url}; "
            f"wait for it or remove {self.display} if it is dead"
        )

    def _is_stale(self, raw: bytes, age_s: float, *, taking_over: bool = True) -> bool:
        """Decide whether an existing lock with content ``raw`` may be taken over."""
        holder = _parse_holder(raw)
        if holder is None:
            if age_s < UNREADABLE_GRACE_S:
                raise self._locked_error(None)
            return True
        pid, host = holder
        if host != self.host or pid_alive(pid):
            raise self._locked_error(holder)
        if taking_over:
            log.warning("taking over stale lock %s of dead pid %d", self.display, pid)
        return True

    def check(self) -> None:
        """Raise StateLockedError if a live job holds the lock now; take nothing. A long job
        calls this before its work so that a write doomed to fail fails first."""
        try:
            if self.loc.is_local:
                raw, age = _read(self.path), time.time() - os.stat(self.path).st_mtime
            else:
                raw, age = self.loc.fs.cat_file(self.path), UNREADABLE_GRACE_S
        except FileNotFoundError:
            return
        self._is_stale(raw, age, taking_over=False)

    def acquire(self) -> None:
        """Take the lock or raise StateLockedError naming the live holder."""
        if self.loc.is_local:
            self._acquire_local()
        else:
            self._acquire_remote()
        self._held = True

    def _acquire_local(self) -> None:
        for _ in range(_ATTEMPTS):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._clear_stale_local()
                continue
            try:
                os.write(fd, self._payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            return
        raise StateLockedError(
            f"could not take {self.display}: other jobs keep taking it; retry in a moment"
        )

    def _clear_stale_local(self) -> None:
        """Remove a stale lock without deleting a fresh one another taker just created."""
        try:
            raw = _read(self.path)
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return  # released meanwhile: just retry
        self._is_stale(raw, age)  # raises when the lock is live
        # Rename aside, then check we moved the very file we judged stale; if another job
        # replaced it meanwhile, put theirs back (link fails if a newer lock already exists).
        aside = f"{self.path}{STALE_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            if _read(aside) != raw:
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
        finally:
            os.unlink(aside)

    def _acquire_remote(self) -> None:
        # Object stores have no exclusive create we can rely on everywhere: best effort only.
        fs = self.loc.fs
        if fs.exists(self.path):
            try:
                raw = fs.cat_file(self.path)
            except FileNotFoundError:
                raw = None
            if raw is not None:
                self._is_stale(raw, age_s=UNREADABLE_GRACE_S)
                fs.rm(self.path)
        fs.pipe_file(self.path, self._payload)

    def release(self) -> None:
        """Remove the lock if it is still ours (never another job's that took over)."""
        if not self._held:
            return
        self._held = False
        try:
            if self.loc.is_local:
                if _read(self.path) == self._payload:
                    os.unlink(self.path)
            elif self.loc.fs.cat_file(self.path) == self._payload:
                self.loc.fs.rm(self.path)
        except FileNotFoundError:
            pass


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()

"""Per-tab sessions of the viewer and their freeing: by idle time and by a memory budget, least recently used first.

A session is keyed by :meth:`salt_seg_apps.viewer.guard.SessionGuard.session_key` (a keyed hash of the server-issued secret
and the tab's session hash, never the client's hash alone). It is created on the tab's first event and freed
(engine thread stopped, arrays dropped, its folder removed) when

* the tab closes (Gradio's ``unload``);
* it has had no event for ``idle_timeout_s``;
* the sessions together hold more than ``memory_budget_bytes`` (:meth:`ViewerSession.nbytes`): the least recently
  used sessions are freed until the rest fit -- never one with an event in progress, never the one that grew;
* more than ``max_sessions`` are open (a guard against floods of empty sessions; empty ones go first).

Opening a session never frees another one by itself: only memory does. A session freed by the registry leaves a
note, and the tab's next event gets a fresh session and that note (:meth:`SessionRegistry.use`), so the user reads
why the volume is gone instead of a bare "open a volume first".
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from salt_seg_apps.viewer.session import ViewerSession

log = logging.getLogger(__name__)

#: notes of freed sessions kept at most (the oldest are dropped first).
MAX_NOTES = 4096


@dataclass
class _Entry:
    session: ViewerSession
    used: float  # clock time of the last event's start or end
    busy: int = 0  # events in progress
    nbytes: int = 0  # memory measured after the last event


def _minutes(seconds: float) -> str:
    return f"{max(seconds, 0.0) / 60.0:.0f} min"


class SessionRegistry:
    """The open sessions; freed on unload, when idle, beyond the memory budget or beyond capacity.

    Args:
        factory: builds a session in the given private folder.
        root: parent of the sessions' folders.
        idle_timeout_s: a session without events for this long is freed.
        memory_budget_bytes: what all sessions together may hold.
        max_sessions: sessions kept at most.
        clock: seconds (monotonic); tests pass a fake one.

    Raises:
        ValueError: a non-positive limit.
    """

    def __init__(
        self,
        factory: Callable[[Path], ViewerSession],
        root: Path,
        *,
        idle_timeout_s: float,
        memory_budget_bytes: int,
        max_sessions: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (
            ("idle_timeout_s", idle_timeout_s),
            ("memory_budget_bytes", memory_budget_bytes),
            ("max_sessions", max_sessions),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        self.factory, self.root = factory, Path(root)
        self.idle_timeout_s, self.memory_budget_bytes = float(idle_timeout_s), int(memory_budget_bytes)
        self.max_sessions, self.clock = int(max_sessions), clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first
        self._notes: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def peek(self, key: str) -> ViewerSession | None:
        """The session under ``key`` if open, without touching it."""
        entry = self._entries.get(key)
        return entry.session if entry is not None else None

    def sessions(self) -> list[ViewerSession]:
        """The open sessions, least recently used first."""
        with self._lock:
            return [e.session for e in self._entries.values()]

    @property
    def nbytes(self) -> int:
        """Memory held by the open sessions as last measured."""
        return sum(e.nbytes for e in self._entries.values())

    # --- use ------------------------------------------------------------------------------------------------------
    @contextmanager
    def use(self, key: str, *, take_note: bool = True) -> Iterator[tuple[ViewerSession, str | None]]:
        """The session under ``key`` (created on first use) for one event, and the note of its freeing, if it was
        (``take_note=False``: the note stays for a later event and ``None`` is given).

        While the event runs the session cannot be freed; afterwards it is measured and, if the budget is exceeded,
        other sessions are freed (least recently used first).
        """
        with self._lock:
            now = self.clock()
            entry = self._entries.get(key)
            if entry is None:
                # a folder of its own: a freed session's folder may still be being removed
                entry = _Entry(self.factory(self.root / secrets.token_hex(8)), now)
                self._entries[key] = entry
            entry.busy += 1
            entry.used = now
            self._entries.move_to_end(key)
            note = self._notes.pop(key, None) if take_note else None
            freed = self._select(now, keep=key)
        self._free(freed)
        try:
            yield entry.session, note
        finally:
            try:
                nbytes = entry.session.nbytes()
            except (RuntimeError, AttributeError):  # a concurrent hover changed it mid-count: next time
                log.debug("session size not measured", exc_info=True)
                nbytes = entry.nbytes
            with self._lock:
                entry.busy -= 1
                entry.used = now = self.clock()
                entry.nbytes = nbytes
                freed = self._select(now, keep=key)
            self._free(freed)

    def get(self, key: str) -> ViewerSession:
        """The session under ``key`` (created on first use), as one event that does nothing."""
        with self.use(key) as (session, _):
            return session

    def sweep(self) -> int:
        """Free idle sessions (and any beyond the budget) now; returns how many were freed."""
        with self._lock:
            freed = self._select(self.clock(), keep=None)
        self._free(freed)
        return len(freed)

    # --- freeing ----------------------------------------------------------------------------------------------------
    def _select(self, now: float, keep: str | None) -> list[ViewerSession]:
        """Take the sessions to free out of the registry (under the lock) and note why for their tabs."""
        freed: list[ViewerSession] = []

        def take(key: str, note: str) -> None:
            entry = self._entries.pop(key)
            freed.append(entry.session)
            self._notes[key] = note
            self._notes.move_to_end(key)
            while len(self._notes) > MAX_NOTES:
                self._notes.popitem(last=False)

        for key, e in list(self._entries.items()):
            if key != keep and not e.busy and now - e.used > self.idle_timeout_s:
                take(key, f"your session was closed after {_minutes(now - e.used)} without activity")
        total = sum(e.nbytes for e in self._entries.values())
        for key, e in list(self._entries.items()):  # least recently used first
            if total <= self.memory_budget_bytes:
                break
            if key != keep and not e.busy and e.nbytes > 0:
                total -= e.nbytes
                take(
                    key,
                    f"your session was closed to free memory for other users after {_minutes(now - e.used)} "
                    "without activity",
                )
        if len(self._entries) > self.max_sessions:
            idle = [k for k, e in self._entries.items() if k != keep and not e.busy]
            idle.sort(key=lambda k: self._entries[k].nbytes > 0)  # empty sessions first, then by age (stable)
            for key in idle[: len(self._entries) - self.max_sessions]:
                take(key, "your session was closed: too many sessions were open")
        if total > self.memory_budget_bytes:
            log.warning(
                "viewer sessions hold %.0f MB, over the budget of %.0f MB, and none can be freed now",
                total / 1024**2,
                self.memory_budget_bytes / 1024**2,
            )
        return freed

    @staticmethod
    def _free(sessions: list[ViewerSession]) -> None:
        for s in sessions:
            with s.lock:  # an event that got hold of it just before it was taken finishes first
                s.close()

    def close(self, key: str) -> None:
        """Free the session under ``key`` (its tab closed); no note is kept."""
        with self._lock:
            entry = self._entries.pop(key, None)
            self._notes.pop(key, None)
        if entry is not None:
            self._free([entry.session])

    def close_all(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._notes.clear()
        self._free([e.session for e in entries])


def freed_message(note: str) -> str:
    """The status line a tab gets on its first event after its session was freed."""
    return f"⚠️ {note}; open the volume again"

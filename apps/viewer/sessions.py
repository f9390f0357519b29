"""Per-tab sessions of the viewer, keyed by Gradio's session hash, and their freeing.

A session is created on a tab's first event and freed (engine thread stopped, arrays dropped, its folder removed)
when the tab closes (Gradio's ``unload``), after ``idle_timeout_s`` without events, or when more than
``max_sessions`` are open (least recently used first).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from apps.viewer.session import ViewerSession


def _clean(session_id: str) -> str:
    """A session hash as a safe folder name."""
    return re.sub(r"[^A-Za-z0-9_-]", "", str(session_id))[:64]


class SessionRegistry:
    """Per-tab sessions keyed by Gradio's session hash; freed on unload, when idle, or beyond capacity."""

    def __init__(
        self, factory: Callable[[Path], ViewerSession], root: Path, idle_timeout_s: float, max_sessions: int
    ) -> None:
        self.factory, self.root = factory, Path(root)
        self.idle_timeout_s, self.max_sessions = float(idle_timeout_s), int(max_sessions)
        self._sessions: OrderedDict[str, tuple[ViewerSession, float]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._sessions

    def get(self, session_id: str) -> ViewerSession:
        """The tab's session, created on its first event."""
        sid = _clean(session_id) or "anonymous"
        stale: list[ViewerSession] = []
        with self._lock:
            now = time.monotonic()
            for key, (_, used) in list(self._sessions.items()):
                if key != sid and now - used > self.idle_timeout_s:
                    stale.append(self._sessions.pop(key)[0])
            if sid in self._sessions:
                session = self._sessions.pop(sid)[0]
            else:
                session = self.factory(self.root / sid)
            self._sessions[sid] = (session, now)
            while len(self._sessions) > self.max_sessions:
                stale.append(self._sessions.popitem(last=False)[1][0])
        for s in stale:
            s.close()
        return session

    def close(self, session_id: str) -> None:
        sid = _clean(session_id)
        with self._lock:
            item = self._sessions.pop(sid, None)
        if item is not None:
            item[0].close()

    def close_all(self) -> None:
        with self._lock:
            items = list(self._sessions.values())
            self._sessions.clear()
        for s, _ in items:
            s.close()

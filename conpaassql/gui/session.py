"""
Sign-in sessions of the web front-end.

The manager's API token a person signs in with is kept here, in memory on
the server, under a random session id; the browser only ever holds the id,
in an HttpOnly, SameSite=Strict cookie.  Nothing about a session is written
to disk, so a restart of the front-end signs everybody out.

CSRF tokens are derived from the cookie value with an HMAC keyed by the
front-end's secret (kept in its state directory), so they are per-session,
need no storage, and also protect the sign-in form itself: a visitor who
is not signed in gets a random I{pre-session} cookie that is never stored,
and the sign-in form's CSRF token is derived from it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Session", "SessionStore", "newSessionId"]

#: Sessions end after this long without a request (seconds).
DEFAULT_IDLE_TIMEOUT = 8 * 3600.0
#: ...and at the latest this long after sign-in.
DEFAULT_MAX_AGE = 24 * 3600.0
#: At most this many signed-in sessions; the least recently used go first.
DEFAULT_MAX_SESSIONS = 1000


def newSessionId() -> str:
    """A fresh, unguessable cookie value (256 random bits)."""
    return secrets.token_urlsafe(32)


@dataclass
class Session:
    """
    One signed-in browser.

    @ivar sid: the cookie value.
    @ivar token: the manager API token this session acts with.
    @ivar flash: messages to show on the next page, as (kind, text);
        kind is C{"ok"} or C{"error"}.
    """

    sid: str
    token: str
    created: float
    lastSeen: float
    flash: list[tuple[str, str]] = field(default_factory=list)

    def __repr__(self) -> str:
        # Never let the token reach a log line through a repr.
        return f"<Session created={self.created:.0f}>"

    def addFlash(self, kind: str, text: str) -> None:
        self.flash.append((kind, text))

    def popFlash(self) -> list[tuple[str, str]]:
        messages, self.flash = self.flash, []
        return messages


class SessionStore:
    """
    The signed-in sessions, keyed by the cookie value.

    @param secret: the key of the CSRF HMAC (at least 16 bytes).
    @param clock: returns the current time in seconds (C{reactor.seconds}).
    """

    def __init__(
        self,
        secret: bytes,
        clock: Callable[[], float],
        *,
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        maxAge: float = DEFAULT_MAX_AGE,
        maxSessions: int = DEFAULT_MAX_SESSIONS,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the session secret must be at least 16 bytes")
        self._secret = secret
        self._clock = clock
        self.idleTimeout = idleTimeout
        self.maxAge = maxAge
        self.maxSessions = maxSessions
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def _expired(self, session: Session, now: float) -> bool:
        return now - session.lastSeen > self.idleTimeout or now - session.created > self.maxAge

    def get(self, sid: str | None) -> Session | None:
        """The live session with this cookie value, touched; or L{None}."""
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = self._clock()
        if self._expired(session, now):
            del self._sessions[sid]
            return None
        session.lastSeen = now
        return session

    def create(self, token: str) -> Session:
        """Start a session for C{token} under a new random id."""
        now = self._clock()
        for sid, session in list(self._sessions.items()):
            if self._expired(session, now):
                del self._sessions[sid]
        while len(self._sessions) >= self.maxSessions:
            oldest = min(self._sessions.values(), key=lambda s: s.lastSeen)
            del self._sessions[oldest.sid]
        session = Session(sid=newSessionId(), token=token, created=now, lastSeen=now)
        self._sessions[session.sid] = session
        return session

    def end(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def csrfToken(self, sid: str) -> str:
        """The CSRF token that goes with the cookie value C{sid}."""
        mac = hmac.new(self._secret, b"csrf\x00" + sid.encode("utf-8"), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode("ascii")

    def checkCsrf(self, sid: str | None, presented: str | None) -> bool:
        """Whether C{presented} is the CSRF token of C{sid}, compared in constant time."""
        if not sid or not presented:
            return False
        expected = self.csrfToken(sid).encode("ascii")
        return hmac.compare_digest(expected, presented.encode("utf-8", "replace"))

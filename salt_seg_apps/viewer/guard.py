"""HTTP-level guards of the viewer: a server-issued session secret, session hashes bound to it, uploads never served.

Gradio identifies a tab by a *session hash* that the client itself chooses and sends with every request, so a
client that learns another tab's hash could send it and act as that tab. The viewer therefore does not trust the
hash alone:

* every browser (and every ``gradio_client.Client``) gets a secret in an ``HttpOnly`` cookie, issued and signed by
  this server (:class:`SessionGuard`); a request without a valid one gets a fresh one;
* the first request that names a session hash binds the hash to the secret it came with; a request naming that
  hash with another secret is refused with 403 (so nobody else can join its events, read its event stream or
  close it);
* a viewer session is looked up by :meth:`SessionGuard.session_key`, a keyed hash of the secret *and* the session
  hash: without the secret there is no way to reach another tab's session, even past the binding;
* files that reached Gradio through its upload route are never served back by its ``/file=`` route (the page
  never needs them, and the handlers delete them once read).

:class:`GuardMiddleware` is plain ASGI (no buffering of responses, so Gradio's event streams pass untouched).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: the request header (set by the middleware only) that carries the checked secret to the event handlers.
SECRET_HEADER = "x-salt-seg-viewer-secret"
API_PREFIX = "/gradio_api"
#: largest request body (other than a file upload) accepted: Gradio's event bodies hold file references, not files.
MAX_JSON_BODY = 4 * 1024**2


class SessionGuard:
    """Issues and checks session secrets, and remembers which secret owns which session hash.

    Args:
        owner_ttl_s: a session hash unseen for this long is forgotten (its tab is gone or idle-closed).
        max_owners: session hashes remembered at most (the least recently seen are forgotten first).
    """

    def __init__(self, owner_ttl_s: float = 24 * 3600.0, max_owners: int = 100_000) -> None:
        if max_owners < 1:
            raise ValueError(f"max_owners must be >= 1, got {max_owners}")
        self._key = secrets.token_bytes(32)
        self.owner_ttl_s, self.max_owners = float(owner_ttl_s), int(max_owners)
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()

    # --- secrets ----------------------------------------------------------------------------------------------------
    def _sign(self, token: str) -> str:
        return hmac.new(self._key, token.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self) -> str:
        """A fresh secret: 32 random bytes (URL-safe) and this server's signature of them."""
        token = secrets.token_urlsafe(32)
        return f"{token}.{self._sign(token)}"

    def is_valid(self, secret: str | None) -> bool:
        """Whether ``secret`` was issued by this server (a forged or foreign cookie is not)."""
        if not secret or secret.count(".") != 1:
            return False
        token, sig = secret.split(".")
        return len(token) >= 32 and hmac.compare_digest(sig, self._sign(token))

    def session_key(self, secret: str, session_hash: str) -> str:
        """The viewer session's key: a keyed hash of the secret and the tab's session hash (hex, a safe folder name).

        Raises:
            PermissionError: ``secret`` was not issued by this server.
        """
        if not self.is_valid(secret):
            raise PermissionError("this request carries no valid viewer session; reload the page")
        msg = f"{secret}\0{session_hash}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:40]

    # --- session hash -> owner ----------------------------------------------------------------------------------------
    def claim(self, session_hash: str, secret: str) -> bool:
        """Bind ``session_hash`` to ``secret`` on first sight; ``False`` when another secret holds it."""
        now = time.monotonic()
        with self._lock:
            owner = self._owners.get(session_hash)
            if (
                owner is not None
                and now - owner[1] <= self.owner_ttl_s
                and not hmac.compare_digest(owner[0], secret)
            ):
                return False
            self._owners[session_hash] = (secret, now)
            self._owners.move_to_end(session_hash)
            while self._owners:
                oldest, (_, seen) = next(iter(self._owners.items()))
                if len(self._owners) <= self.max_owners and now - seen <= self.owner_ttl_s:
                    break
                del self._owners[oldest]
        return True


def _cookie_name(scope: Scope) -> str:
    """One cookie per port: browsers share cookies between ports of a host, and two viewers must not clash."""
    server = scope.get("server") or (None, None)
    return f"salt_seg_viewer_{server[1] or 0}"


def _header(scope: Scope, name: bytes) -> str:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return ""


def _path_hashes(path: str) -> list[str]:
    """Session hashes named in the URL path (Gradio's heartbeat and media-stream routes)."""
    rest = path[len(API_PREFIX) :] if path.startswith(API_PREFIX) else path
    parts = [p for p in rest.split("/") if p]
    if len(parts) >= 2 and parts[0] == "heartbeat":
        return [parts[1]]
    if len(parts) >= 4 and parts[0] == "stream":  # /stream/{session_hash}/{run}/{component}/...
        return [parts[1]]
    return []


def _forbidden(text: str) -> tuple[int, bytes]:
    return 403, text.encode()


class GuardMiddleware:
    """ASGI middleware applying a :class:`SessionGuard` to every HTTP request of the Gradio app.

    Args:
        app: the wrapped ASGI app.
        guard: secrets and session-hash owners.
        is_upload: whether a (normalised, absolute) file path is a file received through the upload route.
    """

    def __init__(self, app: ASGIApp, guard: SessionGuard, is_upload: Callable[[str], bool]) -> None:
        self.app, self.guard, self.is_upload = app, guard, is_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = _cookie_name(scope)
        cookie = SimpleCookie()
        try:
            cookie.load(_header(scope, b"cookie"))
        except Exception:  # noqa: BLE001 - a malformed cookie header is just no cookie
            cookie = SimpleCookie()
        secret = cookie[name].value if name in cookie else None
        fresh = not self.guard.is_valid(secret)
        if fresh:
            secret = self.guard.issue()
        assert secret is not None
        # the handlers read the checked secret from this header; a client-sent copy is dropped
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != SECRET_HEADER.encode()]
        headers.append((SECRET_HEADER.encode(), secret.encode()))
        scope = {**scope, "headers": headers}

        refusal = self._file_refusal(scope)
        hashes = _path_hashes(scope.get("path", ""))
        hashes += parse_qs(scope.get("query_string", b"").decode("latin-1")).get("session_hash", [])
        # every POST body but a file upload's is read: FastAPI parses JSON from any content type that is not a
        # form (even a missing or upper-case one), so checking only ``application/json`` would be a way round
        content_type = _header(scope, b"content-type").lower()
        if refusal is None and scope.get("method") == "POST" and not content_type.startswith("multipart/"):
            body, receive = await _read_body(receive)
            if body is None:
                refusal = (413, b"request body too large")
            else:
                hashes += _json_hash(body)
        if refusal is None and any(not self.guard.claim(h, secret) for h in hashes):
            refusal = _forbidden("this session belongs to another client")
        if refusal is not None:
            await _respond(send, *refusal)
            return

        async def send_with_cookie(message: Message) -> None:
            if fresh and message["type"] == "http.response.start":
                value = f"{name}={secret}; Path=/; HttpOnly; SameSite=Lax"
                message = {
                    **message,
                    "headers": [*message.get("headers", []), (b"set-cookie", value.encode())],
                }
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _file_refusal(self, scope: Scope) -> tuple[int, bytes] | None:
        """403 for Gradio's file routes (``/file=PATH`` and the older ``/file/PATH``) naming an uploaded file."""
        path = scope.get("path", "")
        for marker in (f"{API_PREFIX}/file=", f"{API_PREFIX}/file/"):
            if path.startswith(marker):
                target = path[len(marker) :]
                break
        else:
            return None
        candidates = set()
        for t in (target, "/" + target.lstrip("/")):
            candidates |= {os.path.normpath(os.path.abspath(t)), os.path.realpath(t)}
        if any(self.is_upload(c) for c in candidates):
            return _forbidden("uploaded files are not served")
        return None


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole request body and a ``receive`` that replays it (``None`` body: over :data:`MAX_JSON_BODY`)."""
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"", receive
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_JSON_BODY:
            return None, receive
        chunks.append(chunk)
        more = bool(message.get("more_body", False))
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _json_hash(body: bytes) -> list[str]:
    try:
        data = json.loads(body or b"null")
    except ValueError:
        return []
    value = data.get("session_hash") if isinstance(data, dict) else None
    return [value] if isinstance(value, str) and value else []


async def _respond(send: Send, status: int, text: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(text)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


def upload_checker(uploaded: Collection[str]) -> Callable[[str], bool]:
    """``is_upload`` for :class:`GuardMiddleware` over Gradio's set of uploaded paths (read live)."""
    return lambda path: path in uploaded

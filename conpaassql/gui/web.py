"""
The web front-end as a C{twisted.web} resource, to mount under C{/ui/} of the
manager's site or of the stand-alone front-end's site (L{makeGUIResource}).

Every request is answered by one coroutine, L{GUIResource._handle}, which
routes on the method and the path below the mount point.  Rules that hold
for every route:

  - Pages and JSON need a signed-in session (cookie); without one, pages
    redirect to the sign-in form and JSON answers 401.
  - Every state-changing request is a POST whose Origin (or, lacking it,
    Referer) is this front-end's own, carrying the session's CSRF token
    (form field C{csrf} or header C{X-CSRF-Token}).  There is no
    destructive GET.
  - Every response carries the security headers of L{_securityHeaders};
    pages with data are C{no-store}.
  - Form bodies are parsed here from C{request.content}: the site's request
    class (L{conpaassql.rpc.resource.RPCRequest}) leaves them unparsed and
    spools uploads to disk.  A dump upload is read from that spool file and
    streamed on to the manager's C{send_mysqldump}; it is never held in
    memory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.client import FileBodyProducer
from twisted.web.server import NOT_DONE_YET
from twisted.web.template import Tag

from conpaassql.gui import model, pages
from conpaassql.gui.session import Session, SessionStore, newSessionId
from conpaassql.rpc.errors import UNAUTHORIZED, RPCError, TransportError
from conpaassql.rpc.multipart import parseMultipart
from conpaassql.rpc.resource import headerText

__all__ = ["COOKIE_NAME", "GUIResource", "makeGUIResource"]

log = Logger()

COOKIE_NAME = b"conpaassql_session"
#: The longest API token accepted at sign-in.
MAX_TOKEN = 1024
#: The largest urlencoded form body accepted.
MAX_FORM = 64 * 1024
#: Files served from C{static/}, with their content types.
STATIC_TYPES = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8"}

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

_NODE_ID = re.compile(r"[0-9]{1,18}")

ClientFactory = Callable[[str], model.ManagerClient]


class _Refused(Exception):
    """A request refused with a status and a message for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _spoolToFile(content: IO[bytes], directory: str | None) -> IO[bytes]:
    """A real file holding C{content}, for a site that kept a body in memory."""
    out = tempfile.TemporaryFile(dir=directory)
    content.seek(0)
    shutil.copyfileobj(content, out)
    out.seek(0)
    return out


@dataclass(frozen=True)
class _Route:
    method: bytes
    pattern: re.Pattern[str]
    handler: str
    #: JSON answers (401 instead of a redirect when signed out).
    json: bool = False


def _route(method: str, path: str, handler: str, json: bool = False) -> _Route:
    regex = "^" + path.replace("<id>", r"(?P<id>[^/]+)") + "$"
    return _Route(method.encode("ascii"), re.compile(regex), handler, json)


ROUTES = (
    _route("GET", "", "servicePage"),
    _route("GET", "login", "loginPage"),
    _route("POST", "login", "signIn"),
    _route("POST", "logout", "signOut"),
    _route("GET", "nodes", "nodesPage"),
    _route("POST", "nodes/add", "addNodes"),
    _route("GET", "nodes/<id>", "nodePage"),
    _route("GET", "nodes/<id>/remove", "removePage"),
    _route("POST", "nodes/<id>/remove", "removeNode"),
    _route("POST", "nodes/<id>/master", "makeMaster"),
    _route("POST", "nodes/<id>/slave", "makeSlave"),
    _route("POST", "nodes/<id>/users", "createUser"),
    _route("POST", "nodes/<id>/users/delete", "deleteUser"),
    _route("POST", "nodes/<id>/dump", "uploadDump"),
    _route("GET", "api/nodes", "apiNodes", json=True),
    _route("GET", "api/service", "apiService", json=True),
    _route("GET", "api/nodes/<id>", "apiNode", json=True),
)


def _loadStatic() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    folder = resources.files("conpaassql.gui").joinpath("static")
    for entry in folder.iterdir():
        if os.path.splitext(entry.name)[1] in STATIC_TYPES:
            files[entry.name] = entry.read_bytes()
    return files


class GUIResource(resource.Resource):
    """
    The front-end.  See L{makeGUIResource}.
    """

    isLeaf = True

    def __init__(
        self,
        clientFactory: ClientFactory,
        sessions: SessionStore,
        *,
        managerURL: str = "",
        secureCookies: bool = False,
        allowedOrigins: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self._clients = clientFactory
        self.sessions = sessions
        self.managerURL = managerURL
        self.secureCookies = secureCookies
        self.allowedOrigins = tuple(o.rstrip("/").lower() for o in allowedOrigins)
        self._static = _loadStatic()

    # -- plumbing ---------------------------------------------------------

    def render(self, request: server.Request) -> int:
        d = Deferred.fromCoroutine(self._handle(request))
        d.addErrback(self._crashed, request)
        return NOT_DONE_YET

    def _crashed(self, failure: Failure, request: server.Request) -> None:
        log.failure("web front-end: error answering {path}", failure,
                    path=request.path.decode("ascii", "replace"))
        if not request.finished and not request._disconnected:
            request.setResponseCode(500)
            self._finish(request, b"internal error; see the front-end's log", b"text/plain")

    def _base(self, request: server.Request) -> str:
        prefix = "/".join(p.decode("utf-8", "replace") for p in request.prepath or [])
        return "/" + (prefix + "/" if prefix else "")

    def _securityHeaders(self, request: server.Request) -> None:
        request.setHeader(b"content-security-policy", CSP.encode("ascii"))
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"same-origin")
        request.setHeader(b"cross-origin-opener-policy", b"same-origin")
        request.setHeader(b"cross-origin-resource-policy", b"same-origin")

    def _finish(self, request: server.Request, body: bytes, contentType: bytes,
                cache: bytes = b"no-store") -> None:
        if request.finished or request._disconnected:
            return
        self._securityHeaders(request)
        request.setHeader(b"content-type", contentType)
        request.setHeader(b"cache-control", cache)
        request.setHeader(b"content-length", str(len(body)).encode("ascii"))
        if request.method != b"HEAD":
            request.write(body)
        request.finish()

    async def _page(self, request: server.Request, page: Tag, status: int = 200) -> None:
        body = await pages.render(page)
        request.setResponseCode(status)
        self._finish(request, body, b"text/html; charset=utf-8")

    def _json(self, request: server.Request, obj: Any, status: int = 200) -> None:
        request.setResponseCode(status)
        self._finish(request, json.dumps(obj).encode("utf-8"), b"application/json")

    def _redirect(self, request: server.Request, location: str) -> None:
        request.setResponseCode(303)
        request.setHeader(b"location", location.encode("utf-8"))
        self._finish(request, b"", b"text/plain")

    def _setCookie(self, request: server.Request, base: str, value: str,
                   maxAge: int | None = None) -> None:
        request.addCookie(
            COOKIE_NAME, value.encode("ascii"),
            path=base.encode("utf-8"),
            httpOnly=True,
            sameSite="strict",
            secure=self.secureCookies or request.isSecure(),
            max_age=str(maxAge).encode("ascii") if maxAge is not None else None,
        )

    def _cookie(self, request: server.Request) -> str | None:
        raw = request.getCookie(COOKIE_NAME)
        if not raw:
            return None
        try:
            value = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        return value if re.fullmatch(r"[A-Za-z0-9_\-]{20,100}", value) else None

    def _ownOrigin(self, request: server.Request) -> str:
        host = headerText(request, "host")
        scheme = "https" if request.isSecure() else "http"
        return f"{scheme}://{host}".lower()

    def _checkOrigin(self, request: server.Request) -> None:
        allowed = {self._ownOrigin(request), *self.allowedOrigins}
        origin = headerText(request, "origin") or None
        if origin is not None and origin != "null":
            if origin.rstrip("/").lower() not in allowed:
                raise _Refused(403, "Refused: this request came from another site "
                                    f"({origin[:100]}). Use the front-end's own pages.")
            return
        referer = headerText(request, "referer") or None
        if referer:
            parts = urlsplit(referer)
            if f"{parts.scheme}://{parts.netloc}".lower() in allowed:
                return
            raise _Refused(403, "Refused: this request came from another site. "
                                "Use the front-end's own pages.")
        raise _Refused(403, "Refused: the request did not say which page it came from "
                            "(no Origin or Referer header). Use the front-end's own pages.")

    async def _form(self, request: server.Request) -> dict[str, str]:
        ctype = headerText(request, "content-type").lower()
        if not ctype.startswith("application/x-www-form-urlencoded"):
            raise _Refused(415, "Expected a form submission.")
        content = request.content
        if content is None:
            raise _Refused(400, "The form is empty.")
        content.seek(0)
        body = content.read(MAX_FORM + 1)
        if len(body) > MAX_FORM:
            raise _Refused(413, "The form is too large.")
        try:
            parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            raise _Refused(400, "The form could not be read.") from None
        return {k: v[0] for k, v in parsed.items() if v}

    def _requireCsrf(self, sid: str | None, presented: str | None) -> None:
        if not self.sessions.checkCsrf(sid, presented):
            raise _Refused(
                403,
                "Refused: the form's security token is missing or out of date. "
                "Reload the page and try again.",
            )

    # -- dispatch ---------------------------------------------------------

    async def _handle(self, request: server.Request) -> None:
        base = self._base(request)
        if not request.postpath and not request.path.endswith(b"/"):
            return self._redirect(request, base)
        path = "/".join(p.decode("utf-8", "replace") for p in request.postpath or [])
        method = b"GET" if request.method == b"HEAD" else request.method
        if path.startswith("static/") and method == b"GET":
            return self._serveStatic(request, path[len("static/"):])
        allowed: set[str] = set()
        for route in ROUTES:
            match = route.pattern.match(path)
            if match is None:
                continue
            allowed.add(route.method.decode("ascii"))
            if route.method != method:
                continue
            try:
                await self._dispatch(request, route, match.groupdict(), base)
            except _Refused as e:
                await self._refuse(request, route, base, e)
            return None
        if allowed:
            request.setHeader(b"allow", ", ".join(sorted(allowed)).encode("ascii"))
            request.setResponseCode(405)
            return self._finish(request, b"method not allowed", b"text/plain; charset=utf-8")
        request.setResponseCode(404)
        return self._finish(request, b"no such page", b"text/plain; charset=utf-8")

    async def _refuse(self, request: server.Request, route: _Route, base: str,
                      refusal: _Refused) -> None:
        log.warn("web front-end refused {method} {path}: {why}",
                 method=request.method.decode("ascii", "replace"),
                 path=request.path.decode("ascii", "replace"), why=refusal.message)
        if route.json or self._wantsJSON(request):
            return self._json(request, {"ok": False, "error": refusal.message}, refusal.status)
        sid = self._cookie(request)
        ctx = pages.Context(base, self.sessions.csrfToken(sid) if sid else "",
                            signedIn=self.sessions.get(sid) is not None)
        await self._page(request, pages.errorPage(ctx, "Refused", refusal.message),
                         refusal.status)

    def _wantsJSON(self, request: server.Request) -> bool:
        return "application/json" in headerText(request, "accept")

    async def _dispatch(self, request: server.Request, route: _Route,
                        args: dict[str, str], base: str) -> None:
        if route.handler in ("loginPage", "signIn"):
            return await getattr(self, route.handler)(request, base)
        if route.method == b"POST":
            self._checkOrigin(request)
        sid = self._cookie(request)
        session = self.sessions.get(sid)
        if session is None:
            if route.method == b"POST":
                raise _Refused(401, "You are not signed in (or your session ended). "
                                    "Sign in again.")
            if route.json:
                return self._json(request, {"ok": False, "error": "not signed in",
                                            "signIn": base + "login"}, 401)
            return self._redirect(request, base + "login")
        if "id" in args:
            if not _NODE_ID.fullmatch(args["id"]):
                request.setResponseCode(404)
                return self._finish(request, b"no such node", b"text/plain; charset=utf-8")
            args["id"] = int(args["id"])  # type: ignore[assignment]
        handler: Callable[..., Awaitable[None]] = getattr(self, route.handler)
        try:
            await handler(request, base, session, **args)
        except RPCError as e:
            if e.code != UNAUTHORIZED:
                raise
            # The manager no longer takes this session's token.
            self.sessions.end(session.sid)
            if route.json:
                return self._json(request, {"ok": False, "error": model.errorText(e),
                                            "signIn": base + "login"}, 401)
            await self._loginForm(request, base, model.errorText(e), 401)

    def _serveStatic(self, request: server.Request, name: str) -> None:
        body = self._static.get(name)
        if body is None:
            request.setResponseCode(404)
            return self._finish(request, b"no such file", b"text/plain; charset=utf-8")
        ctype = STATIC_TYPES[os.path.splitext(name)[1]]
        return self._finish(request, body, ctype, cache=b"no-cache")

    def _context(self, base: str, session: Session) -> pages.Context:
        return pages.Context(
            base, self.sessions.csrfToken(session.sid), signedIn=True,
            flash=session.popFlash(), managerURL=self.managerURL,
        )

    def _client(self, session: Session) -> model.ManagerClient:
        return self._clients(session.token)

    def _error(self, e: BaseException) -> str:
        if isinstance(e, RPCError) and e.code == UNAUTHORIZED:
            raise e
        return model.errorText(e, self.managerURL)

    async def _try(self, work: Awaitable[Any]) -> tuple[Any, str | None]:
        """Await C{work}; return (result, None) or (None, error text)."""
        try:
            return await work, None
        except (RPCError, TransportError) as e:
            return None, self._error(e)

    async def _tryBoth(
        self, first: Coroutine[Any, Any, Any], second: Coroutine[Any, Any, Any]
    ) -> list[tuple[Any, str | None]]:
        """L{_try} two calls at once; a refused token still ends the session."""
        try:
            results: list[tuple[Any, str | None]] = await gatherResults(
                [Deferred.fromCoroutine(self._try(first)),
                 Deferred.fromCoroutine(self._try(second))],
                consumeErrors=True,
            )
        except FirstError as e:
            e.subFailure.raiseException()
        return results

    # -- sign-in ----------------------------------------------------------

    async def _loginForm(self, request: server.Request, base: str, error: str | None = None,
                         status: int = 200) -> None:
        presession = newSessionId()
        self._setCookie(request, base, presession)
        ctx = pages.Context(base, self.sessions.csrfToken(presession), signedIn=False)
        await self._page(request, pages.loginPage(ctx, error), status)

    async def loginPage(self, request: server.Request, base: str) -> None:
        if self.sessions.get(self._cookie(request)) is not None:
            return self._redirect(request, base)
        await self._loginForm(request, base)

    async def signIn(self, request: server.Request, base: str) -> None:
        self._checkOrigin(request)
        form = await self._form(request)
        self._requireCsrf(self._cookie(request), form.get("csrf"))
        token = form.get("token", "").strip()
        peer = getattr(request.getClientAddress(), "host", "?")
        if not token:
            return await self._loginForm(request, base, "Enter the manager's API token.", 400)
        if len(token) > MAX_TOKEN or any(c in token for c in "\r\n\x00"):
            return await self._loginForm(
                request, base, "That is not an API token: paste the content of the manager's "
                "api-token file.", 400)
        try:
            await self._clients(token).call("get_service_info")
        except RPCError as e:
            if e.code == UNAUTHORIZED:
                log.warn("web front-end: refused a sign-in from {peer}: wrong token", peer=peer)
                return await self._loginForm(
                    request, base,
                    "The manager refused this token. Check that you copied the whole "
                    "content of the manager's api-token file.", 401,
                )
            # Any other answer means the manager accepted the token.
        except TransportError as e:
            return await self._loginForm(request, base, model.errorText(e, self.managerURL), 502)
        old = self._cookie(request)
        self.sessions.end(old)
        session = self.sessions.create(token)
        self._setCookie(request, base, session.sid)
        log.info("web front-end: signed in from {peer}", peer=peer)
        self._redirect(request, base)

    async def signOut(self, request: server.Request, base: str, session: Session) -> None:
        form = await self._form(request)
        self._requireCsrf(session.sid, form.get("csrf"))
        self.sessions.end(session.sid)
        self._setCookie(request, base, "", maxAge=0)
        self._redirect(request, base + "login")

    # -- pages ------------------------------------------------------------

    async def servicePage(self, request: server.Request, base: str, session: Session) -> None:
        client = self._client(session)
        (info, error), (_, perfError) = await self._tryBoth(
            client.call("get_service_info"), client.call("get_service_performance")
        )
        await self._page(request, pages.servicePage(self._context(base, session),
                                                    info, error, perfError))

    async def nodesPage(self, request: server.Request, base: str, session: Session) -> None:
        rows, error = await self._try(model.nodeRows(self._client(session)))
        await self._page(request, pages.nodesPage(self._context(base, session), rows or [], error))

    async def nodePage(self, request: server.Request, base: str, session: Session,
                       id: int) -> None:
        client = self._client(session)
        (reply, error), (users, usersError) = await self._tryBoth(
            client.call("get_node_info", {"serviceNodeId": id}),
            client.call("get_users", {"serviceNodeId": id}),
        )
        info = reply.get("serviceNode") if isinstance(reply, Mapping) else None
        ctx = self._context(base, session)
        page = pages.nodePage(ctx, id, info, error,
                              model.usersOfNode(users, id) if users is not None else None,
                              usersError)
        await self._page(request, page)

    async def removePage(self, request: server.Request, base: str, session: Session,
                         id: int) -> None:
        reply, error = await self._try(
            self._client(session).call("get_node_info", {"serviceNodeId": id})
        )
        ctx = self._context(base, session)
        if error:
            ctx.flash.append(("error", error))
        info = reply.get("serviceNode") if isinstance(reply, Mapping) else None
        await self._page(request, pages.removePage(ctx, id, info))

    # -- actions ----------------------------------------------------------

    async def _act(self, request: server.Request, base: str, session: Session,
                   form: dict[str, str], work: Awaitable[Any], done: str,
                   back: str) -> None:
        """Run one manager call for a form; flash its outcome; go back."""
        self._requireCsrf(session.sid, form.get("csrf"))
        _, error = await self._try(work)
        session.addFlash(*(("error", error) if error else ("ok", done)))
        self._redirect(request, base + back)

    def _back(self, form: Mapping[str, str], nodeId: int) -> str:
        return f"nodes/{nodeId}" if form.get("back") == "node" else "nodes"

    async def addNodes(self, request: server.Request, base: str, session: Session) -> None:
        form = await self._form(request)
        self._requireCsrf(session.sid, form.get("csrf"))
        try:
            count = int(form.get("count", "1"))
        except ValueError:
            count = 0
        if not 1 <= count <= 20:
            session.addFlash("error", "Enter a number of nodes from 1 to 20.")
            return self._redirect(request, base + "nodes")
        result, error = await self._try(
            self._client(session).call("add_nodes", {"function": "agent", "count": count})
        )
        if error:
            session.addFlash("error", error)
        else:
            added = result.get("serviceNode") if isinstance(result, Mapping) else None
            added = added if isinstance(added, list) else [added] if added else []
            ids = ", ".join(str(n.get("id")) for n in added if isinstance(n, Mapping))
            session.addFlash(
                "ok", f"Adding {count} node(s)" + (f": {ids}" if ids else "")
                + ". They appear below and start in a minute or two."
            )
        self._redirect(request, base + "nodes")

    async def removeNode(self, request: server.Request, base: str, session: Session,
                         id: int) -> None:
        form = await self._form(request)
        await self._act(request, base, session, form,
                        self._client(session).call("remove_nodes", {"serviceNodeId": id}),
                        f"Node {id} is being removed.", "nodes")

    async def makeMaster(self, request: server.Request, base: str, session: Session,
                         id: int) -> None:
        form = await self._form(request)
        await self._act(request, base, session, form,
                        self._client(session).call("set_up_replica_master", {"id": id}),
                        f"Node {id} is now the master.", self._back(form, id))

    async def makeSlave(self, request: server.Request, base: str, session: Session,
                        id: int) -> None:
        form = await self._form(request)
        await self._act(request, base, session, form,
                        self._client(session).call("set_up_replica_slave", {"id": id}),
                        f"Node {id} is being set up as a slave.", self._back(form, id))

    async def createUser(self, request: server.Request, base: str, session: Session,
                         id: int) -> None:
        form = await self._form(request)
        self._requireCsrf(session.sid, form.get("csrf"))
        username = form.get("username", "").strip()
        password = form.get("password", "")
        if not username or not password:
            session.addFlash("error", "Enter a user name and a password.")
        elif password != form.get("confirm", ""):
            session.addFlash("error", "The two passwords differ; type the same password twice.")
        else:
            _, error = await self._try(self._client(session).call(
                "configure_user",
                {"serviceNodeId": id, "username": username, "password": password},
            ))
            session.addFlash(*(("error", error) if error else
                               ("ok", f"User {username} is set up on node {id}.")))
        self._redirect(request, base + f"nodes/{id}")

    async def deleteUser(self, request: server.Request, base: str, session: Session,
                         id: int) -> None:
        form = await self._form(request)
        username = form.get("username", "")
        params: dict[str, Any] = {"serviceNodeId": id, "username": username}
        if form.get("host"):
            params["host"] = form["host"]
        await self._act(request, base, session, form,
                        self._client(session).call("delete_user", params),
                        f"User {username} was deleted from node {id}.", f"nodes/{id}")

    async def uploadDump(self, request: server.Request, base: str, session: Session,
                         id: int) -> None:
        wantsJSON = self._wantsJSON(request)
        ctype = headerText(request, "content-type")
        if not ctype.lower().startswith("multipart/form-data"):
            raise _Refused(415, "Send the dump as a file upload (multipart/form-data).")
        if getattr(request, "tooLarge", False):
            raise _Refused(413, "The dump is larger than this front-end accepts.")
        if request.content is None:
            raise _Refused(400, "The upload is empty.")
        content: Any = request.content
        spool: IO[bytes] | None = None
        try:
            content.fileno()
        except (AttributeError, OSError, ValueError):
            spool = content = await deferToThread(_spoolToFile, content, None)
        try:
            try:
                fields, files = await deferToThread(parseMultipart, content, ctype)
            except RPCError as e:
                raise _Refused(400, f"The upload could not be read: {e.message}") from None
            self._requireCsrf(session.sid,
                              headerText(request, "x-csrf-token") or fields.get("csrf"))
            upload = files.get("mysqldump")
            if upload is None or upload.size == 0:
                error: str | None = "Choose a non-empty dump file to upload."
                result = None
            else:
                result, error = await self._try(
                    self._client(session).upload(
                        "send_mysqldump",
                        {"serviceNodeId": id},  # type: ignore[dict-item]
                        {"mysqldump": (upload.filename or "dump.sql",
                                       FileBodyProducer(upload.reader()))},
                    )
                )
        finally:
            if spool is not None:
                spool.close()
        name = upload.filename if upload is not None else None
        message = error or f"The dump {name or ''} was loaded into node {id}.".replace("  ", " ")
        if wantsJSON:
            return self._json(request, {"ok": error is None, "message" if not error else "error":
                                        message, "result": result}, 200 if not error else 502)
        session.addFlash("error" if error else "ok", message)
        self._redirect(request, base + f"nodes/{id}")

    # -- JSON for the page scripts ---------------------------------------

    async def apiNodes(self, request: server.Request, base: str, session: Session) -> None:
        rows, error = await self._try(model.nodeRows(self._client(session)))
        self._json(request, {"ok": error is None, "nodes": rows or [], "error": error})

    async def apiNode(self, request: server.Request, base: str, session: Session,
                      id: int) -> None:
        reply, error = await self._try(
            self._client(session).call("get_node_info", {"serviceNodeId": id})
        )
        info = reply.get("serviceNode") if isinstance(reply, Mapping) else None
        info = info if isinstance(info, Mapping) else {}
        self._json(request, {
            "ok": error is None,
            "error": error,
            "details": pages.detailFacts(info) if error is None else None,
            "replication": pages.replicationFacts(info) if error is None else None,
            "lastError": info.get("error"),
        })

    async def apiService(self, request: server.Request, base: str, session: Session) -> None:
        client = self._client(session)
        (info, error), (perf, perfError) = await self._tryBoth(
            client.call("get_service_info"), client.call("get_service_performance")
        )
        self._json(request, {
            "ok": error is None,
            "service": info,
            "error": error,
            "performance": model.performanceFigures(perf) if perfError is None else None,
            "performanceError": perfError,
        })


def makeGUIResource(
    managerClientFactory: ClientFactory,
    *,
    reactor: Any,
    secret: bytes,
    managerURL: str = "",
    secureCookies: bool = False,
    allowedOrigins: tuple[str, ...] = (),
    idleTimeout: float | None = None,
) -> GUIResource:
    """
    The web front-end, to mount as a child (e.g. C{ui}) of a site made with
    L{conpaassql.rpc.resource.makeSite}.

    @param managerClientFactory: called with a signed-in person's API token
        for every request, returns a client of the manager's API
        (an L{conpaassql.rpc.client.RPCClient}; share one connection pool
        between them, see L{conpaassql.gui.tap.ManagerClients}).
    @param reactor: gives the time for session expiry.
    @param secret: at least 16 random bytes (CSRF tokens are keyed with it).
    @param managerURL: named in messages when the manager cannot be reached.
    @param secureCookies: mark the session cookie Secure even on plain HTTP
        (behind a TLS-terminating proxy).
    @param allowedOrigins: origins accepted for POSTs besides the request's
        own (e.g. C{https://db.example.org} behind a proxy).
    """
    sessions = SessionStore(secret, reactor.seconds)
    if idleTimeout is not None:
        sessions.idleTimeout = idleTimeout
    return GUIResource(
        managerClientFactory, sessions, managerURL=managerURL,
        secureCookies=secureCookies, allowedOrigins=allowedOrigins,
    )

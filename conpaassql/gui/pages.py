"""
The HTML of the front-end, built with C{twisted.web.template} tags so that
every value is escaped by construction.  No inline script or style: the
pages load C{static/app.js} and C{static/app.css} only, which the
Content-Security-Policy enforces.

Every function returns a tag tree; L{render} turns a page into bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.template import Tag, flattenString, tags

__all__ = [
    "errorPage",
    "loginPage",
    "nodePage",
    "nodesPage",
    "removePage",
    "render",
    "servicePage",
]


class Context:
    """
    What every page needs: the base path of the front-end (e.g. C{/ui/}), the
    CSRF token of the session (or of the pre-session on the sign-in page),
    whether someone is signed in, and messages to show.
    """

    def __init__(
        self,
        base: str,
        csrf: str,
        *,
        signedIn: bool,
        flash: Sequence[tuple[str, str]] = (),
        managerURL: str = "",
    ) -> None:
        self.base = base
        self.csrf = csrf
        self.signedIn = signedIn
        self.flash = list(flash)
        self.managerURL = managerURL

    def url(self, path: str = "") -> str:
        return self.base + path


def render(page: Tag) -> Deferred[bytes]:
    """The page as UTF-8 bytes, with its doctype."""
    d = flattenString(None, page)
    d.addCallback(lambda body: b"<!DOCTYPE html>\n" + body)
    return d


def _csrfField(ctx: Context) -> Tag:
    return tags.input(type="hidden", name="csrf", value=ctx.csrf)


def postForm(ctx: Context, action: str, *children: Any, **attrs: Any) -> Tag:
    """A POST form to C{action} (relative to the base) carrying the CSRF token."""
    return tags.form(method="post", action=ctx.url(action), **attrs)(_csrfField(ctx), *children)


def button(label: str, *, kind: str = "", **attrs: Any) -> Tag:
    cls = ("button " + kind).strip()
    return tags.button(type="submit", class_=cls, **attrs)(label)


def layout(ctx: Context, title: str, page: str, *body: Any) -> Tag:
    nav: list[Any] = [tags.a(class_="brand", href=ctx.url())("conpaassql")]
    if ctx.signedIn:
        nav += [
            tags.a(href=ctx.url(), **({"aria-current": "page"} if page == "service" else {}))(
                "Service"
            ),
            tags.a(
                href=ctx.url("nodes"), **({"aria-current": "page"} if page == "nodes" else {})
            )("Nodes"),
            postForm(ctx, "logout", button("Sign out", kind="link"), class_="signout"),
        ]
    messages = [
        tags.p(
            class_=f"flash flash-{kind}",
            role="alert" if kind == "error" else "status",
        )(text)
        for kind, text in ctx.flash
    ]
    return tags.html(lang="en")(
        tags.head(
            tags.meta(charset="utf-8"),
            tags.meta(name="viewport", content="width=device-width, initial-scale=1"),
            tags.meta(name="referrer", content="same-origin"),
            tags.meta(name="csrf-token", content=ctx.csrf),
            tags.meta(name="gui-base", content=ctx.base),
            tags.title(f"{title} · conpaassql"),
            tags.link(rel="stylesheet", href=ctx.url("static/app.css")),
            tags.script(src=ctx.url("static/app.js"), defer="defer"),
        ),
        tags.body(**{"data-page": page})(
            tags.a(class_="skip", href="#main")("Skip to content"),
            tags.header(tags.nav(*nav, **{"aria-label": "Main"})),
            Tag("main")(id="main", tabindex="-1")(
                tags.div(id="messages")(*messages),
                *body,
            ),
        ),
    )


def _text(value: Any, unknown: str = "unknown") -> str:
    if value is None or value == "":
        return unknown
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _lag(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:g} s"


def _definitions(items: Iterable[tuple[str, Any]], **attrs: Any) -> Tag:
    dl = tags.dl(class_="facts", **attrs)
    for label, value in items:
        dl(tags.div(tags.dt(label), tags.dd(value)))
    return dl


# ---------------------------------------------------------------------------
# Sign-in


def loginPage(ctx: Context, error: str | None = None) -> Tag:
    body: list[Any] = [tags.h1("Sign in")]
    if error:
        body.append(tags.p(class_="flash flash-error", role="alert", id="login-error")(error))
    body.append(
        postForm(
            ctx,
            "login",
            tags.p(
                "Sign in with the manager's API token. It is in the manager's state "
                "directory, in the file ",
                tags.code("api-token"),
                ".",
            ),
            tags.label(for_="token")("API token"),
            tags.input(
                id="token", name="token", type="password", required="required",
                autocomplete="off", autofocus="autofocus", spellcheck="false",
            ),
            button("Sign in", kind="primary", id="signin"),
            class_="card narrow",
        )
    )
    return layout(ctx, "Sign in", "login", *body)


def errorPage(ctx: Context, title: str, message: str) -> Tag:
    return layout(
        ctx, title, "error",
        tags.h1(title),
        tags.p(class_="flash flash-error", role="alert")(message),
        tags.p(tags.a(href=ctx.url())("Back to the service page")),
    )


# ---------------------------------------------------------------------------
# Service


CHARTS = (
    ("qps", "Queries per second", ""),
    ("connections", "Connections", ""),
    ("lag", "Replication lag", "s"),
)


def servicePage(
    ctx: Context,
    info: Mapping[str, Any] | None,
    error: str | None,
    perfError: str | None,
) -> Tag:
    body: list[Any] = [tags.h1("Service")]
    if error:
        body.append(tags.p(class_="flash flash-error", role="alert")(error))
    info = info or {}
    counts = info.get("nodes")
    countText = (
        ", ".join(f"{state}: {count}" for state, count in sorted(counts.items()))
        if isinstance(counts, Mapping) and counts
        else "no nodes"
    )
    master = info.get("master")
    masterCell: Any = (
        tags.a(href=ctx.url(f"nodes/{master}"), id="service-master")(f"node {master}")
        if master not in (None, "")
        else tags.span(id="service-master")("none")
    )
    if info.get("error"):
        body.append(tags.p(class_="flash flash-error", role="alert", id="service-error")(
            f"The service reports an error: {info['error']}"
        ))
    body.append(
        tags.section(class_="card", **{"aria-labelledby": "h-state"})(
            tags.h2(id="h-state")("State"),
            _definitions(
                [
                    ("Manager state", tags.span(id="service-state")(_text(info.get("state")))),
                    ("Type", tags.span(id="service-type")(_text(info.get("type")))),
                    ("Nodes by state", tags.span(id="service-counts")(countText)),
                    ("Master", masterCell),
                ]
            ),
            tags.p(tags.a(href=ctx.url("nodes"))("Manage nodes")),
        )
    )
    charts = tags.div(class_="charts", id="charts", **({"hidden": "hidden"} if perfError else {}))
    for key, title, unit in CHARTS:
        charts(
            tags.figure(class_="chart", id=f"chart-{key}", **{"data-series": key, "data-unit": unit})(
                tags.figcaption(
                    title, ": ", tags.strong(class_="chart-value", id=f"value-{key}")("—")
                ),
                tags.div(class_="chart-plot", role="img", **{"aria-label": f"{title} over time"}),
            )
        )
    body.append(
        tags.section(class_="card", **{"aria-labelledby": "h-perf"})(
            tags.h2(id="h-perf")("Performance"),
            tags.p(id="perf-status", class_="flash flash-note" if perfError else "muted",
                   **{"aria-live": "polite"})(
                perfError if perfError else "Waiting for the first figures…"
            ),
            charts,
        )
    )
    return layout(ctx, "Service", "service", *body)


# ---------------------------------------------------------------------------
# Nodes


def nodeActions(ctx: Context, nodeId: Any, back: str) -> Tag:
    return tags.div(class_="actions")(
        postForm(
            ctx, f"nodes/{nodeId}/master",
            tags.input(type="hidden", name="back", value=back),
            button("Make master", **{"aria-label": f"Make node {nodeId} the master"}),
        ),
        postForm(
            ctx, f"nodes/{nodeId}/slave",
            tags.input(type="hidden", name="back", value=back),
            button("Make slave", **{"aria-label": f"Make node {nodeId} a slave"}),
        ),
        tags.a(
            class_="button danger", href=ctx.url(f"nodes/{nodeId}/remove"),
            **{"aria-label": f"Remove node {nodeId}…"},
        )("Remove…"),
    )


def nodeRowTag(ctx: Context, row: Mapping[str, Any]) -> Tag:
    nodeId = row["id"]
    state: Any = tags.span(class_=f"state state-{_text(row.get('state'))}")(_text(row.get("state")))
    if row.get("error"):
        state = [state, tags.span(class_="row-error")(str(row["error"]))]
    cells = [
        tags.a(href=ctx.url(f"nodes/{nodeId}"))(str(nodeId)),
        _text(row.get("name"), ""),
        _text(row.get("ip"), ""),
        state,
        _text(row.get("role"), ""),
        _text(row.get("mysql")),
        _lag(row.get("lag")),
        nodeActions(ctx, nodeId, "nodes"),
    ]
    return tags.tr(**{"data-node": str(nodeId)})(
        *[tags.td(**{"data-label": label})(cell) for label, cell in zip(NODE_COLUMNS, cells)]
    )


NODE_COLUMNS = ("ID", "Name", "IP", "State", "Role", "MySQL running", "Lag", "Actions")


def nodesPage(ctx: Context, rows: Sequence[Mapping[str, Any]], error: str | None) -> Tag:
    body: list[Any] = [tags.h1("Nodes")]
    if error:
        body.append(tags.p(class_="flash flash-error", role="alert")(error))
    body.append(
        postForm(
            ctx, "nodes/add",
            tags.label(for_="count")("Number of nodes"),
            tags.input(id="count", name="count", type="number", min="1", max="20", value="1",
                       required="required", inputmode="numeric"),
            button("Add nodes", kind="primary", id="add-nodes"),
            class_="card inline",
        )
    )
    head = tags.tr(*[tags.th(scope="col")(c) for c in NODE_COLUMNS])
    tbody = tags.tbody(id="nodes-body")(*[nodeRowTag(ctx, r) for r in rows])
    body.append(
        tags.section(class_="card", **{"aria-labelledby": "h-nodes"})(
            tags.h2(id="h-nodes")("All nodes"),
            tags.p(id="nodes-status", class_="muted", **{"aria-live": "polite"})(
                "no nodes yet" if not rows else f"{len(rows)} node(s)"
            ),
            tags.div(class_="table-wrap")(
                tags.table(id="nodes")(tags.thead(head), tbody)
            ),
        )
    )
    return layout(ctx, "Nodes", "nodes", *body)


def removePage(ctx: Context, nodeId: Any, info: Mapping[str, Any] | None) -> Tag:
    name = (info or {}).get("name")
    label = f"node {nodeId}" + (f" ({name})" if name else "")
    return layout(
        ctx, f"Remove node {nodeId}", "remove",
        tags.h1(f"Remove {label}?"),
        tags.p(
            "This terminates the node's machine and deletes its database. "
            "It cannot be undone."
        ),
        postForm(
            ctx, f"nodes/{nodeId}/remove",
            button(f"Remove node {nodeId}", kind="danger", id="confirm-remove"),
            tags.a(class_="button", href=ctx.url("nodes"))("Cancel"),
            class_="card inline",
        ),
    )


_DETAIL_KEYS = (
    ("id", "ID"),
    ("name", "Name"),
    ("ip", "IP address"),
    ("state", "State"),
    ("role", "Role"),
    ("isRunningMySQL", "MySQL running"),
    ("port", "Agent port"),
    ("mysqld_port", "MySQL port"),
)


NO_REPLICATION = "No replication status reported for this node."


def detailFacts(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A node's details as (label, text): the known keys, then any other plain ones."""
    shown = {k for k, _ in _DETAIL_KEYS} | {"replication", "error"}
    facts = [(label, _text(info.get(key), "none" if key == "role" else "unknown"))
             for key, label in _DETAIL_KEYS]
    facts += [(k, _text(v)) for k, v in sorted(info.items())
              if k not in shown and not isinstance(v, (dict, list))]
    return facts


def replicationFacts(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A node's replication status as (label, text), empty when it reports none."""
    replication = info.get("replication")
    if not isinstance(replication, Mapping):
        return []
    facts: list[tuple[str, str]] = []
    for k, v in sorted(replication.items()):
        # One level of nesting (the manager's "setup": kind, phase, bytes, ...)
        # is shown as its own facts.
        inner = v.items() if isinstance(v, Mapping) else [(None, v)]
        for k2, v2 in sorted(inner, key=lambda item: str(item[0])):
            label = str(k) if k2 is None else f"{k} {k2}"
            facts.append((label, _text(v2 if not isinstance(v2, (dict, list)) else str(v2),
                                       "none")))
    return facts


def nodePage(
    ctx: Context,
    nodeId: Any,
    info: Mapping[str, Any] | None,
    error: str | None,
    users: Sequence[Mapping[str, Any]] | None,
    usersError: str | None,
) -> Tag:
    info = info or {}
    title = f"Node {nodeId}"
    body: list[Any] = [
        tags.h1(title + (f" ({info['name']})" if info.get("name") else ""))
    ]
    if error:
        body.append(tags.p(class_="flash flash-error", role="alert")(error))
    body.append(
        tags.section(class_="card", **{"aria-labelledby": "h-details"})(
            tags.h2(id="h-details")("Details"),
            tags.div(id="node-details", **{"data-node": str(nodeId)})(
                _definitions(detailFacts(info))
            ),
        )
    )
    replication = replicationFacts(info)
    body.append(
        tags.section(class_="card", **{"aria-labelledby": "h-replication"})(
            tags.h2(id="h-replication")("Replication"),
            tags.div(id="replication")(
                _definitions(replication) if replication else tags.p(NO_REPLICATION)
            ),
            nodeActions(ctx, nodeId, "node"),
        )
    )
    body.append(
        tags.section(class_="card", **{"aria-labelledby": "h-error"})(
            tags.h2(id="h-error")("Last error"),
            tags.p(id="last-error", class_="row-error" if info.get("error") else "muted")(
                _text(info.get("error"), "none")
            ),
        )
    )
    userTable: Any
    if usersError:
        userTable = tags.p(class_="flash flash-error", role="alert")(usersError)
    elif not users:
        userTable = tags.p(id="users-empty", class_="muted")("No users yet.")
    else:
        rows = []
        for user in users:
            username = str(user.get("username", ""))
            location = str(user.get("location", ""))
            action: Any
            if user.get("managed"):
                action = tags.span(class_="muted")("managed by the service")
            else:
                action = postForm(
                    ctx, f"nodes/{nodeId}/users/delete",
                    tags.input(type="hidden", name="username", value=username),
                    tags.input(type="hidden", name="host", value=location),
                    button("Delete", kind="danger",
                           **{"aria-label": f"Delete user {username}@{location}"}),
                )
            rows.append(
                tags.tr(**{"data-user": username})(
                    tags.td(username), tags.td(location), tags.td(action),
                )
            )
        userTable = tags.div(class_="table-wrap")(
            tags.table(id="users")(
                tags.thead(tags.tr(tags.th(scope="col")("User"), tags.th(scope="col")("Host"),
                                   tags.th(scope="col")("Actions"))),
                tags.tbody(*rows),
            )
        )
    body.append(
        tags.section(class_="card", **{"aria-labelledby": "h-users"})(
            tags.h2(id="h-users")("Users"),
            userTable,
            tags.h3("Create a user"),
            postForm(
                ctx, f"nodes/{nodeId}/users",
                tags.label(for_="username")("User name"),
                tags.input(id="username", name="username", required="required",
                           autocomplete="off", maxlength="80"),
                tags.label(for_="password")("Password"),
                tags.input(id="password", name="password", type="password",
                           required="required", autocomplete="new-password"),
                tags.label(for_="confirm")("Confirm password"),
                tags.input(id="confirm", name="confirm", type="password",
                           required="required", autocomplete="new-password"),
                button("Create user", kind="primary", id="create-user"),
                class_="stacked",
            ),
        )
    )
    body.append(
        tags.section(class_="card", **{"aria-labelledby": "h-dump"})(
            tags.h2(id="h-dump")("Load a dump"),
            tags.p(class_="muted")(
                "An SQL dump (e.g. from mariadb-dump) is loaded into this node's server."
            ),
            postForm(
                ctx, f"nodes/{nodeId}/dump",
                tags.label(for_="mysqldump")("Dump file"),
                tags.input(id="mysqldump", name="mysqldump", type="file", required="required",
                           accept=".sql,.txt,application/sql,text/plain"),
                button("Upload and load", kind="primary", id="upload-dump"),
                tags.progress(id="upload-progress", max="100", value="0", hidden="hidden",
                              **{"aria-label": "Upload progress"}),
                tags.p(id="upload-status", **{"aria-live": "polite"}),
                enctype="multipart/form-data",
                id="dump-form",
                class_="stacked",
            ),
        )
    )
    return layout(ctx, title, "node", *body)

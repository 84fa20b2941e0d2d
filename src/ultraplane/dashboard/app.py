"""The fleet dashboard: a Starlette app that shows the fleet to a logged-in user, with that user's rights.

Every read of the fleet API is made with the user's own credentials (the token or kubeconfig given at
login), so the fleet's RBAC decides what each user sees. Member clusters are read with the fleet's stored
member credentials, but only after the fleet API says the user may `get clusters/proxy` on that cluster
(Karmada's convention for reaching a member through the fleet), checked by a SelfSubjectAccessReview.
Sessions live in memory behind a random cookie (HttpOnly, Secure, SameSite=Strict); POSTs carry a CSRF
token. Live views stream HTML fragments over server-sent events, fed by watches on the members.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ultraplane.client.http import ApiError, KubeClient
from ultraplane.client.kubeconfig import KubeconfigError
from ultraplane.dashboard import views
from ultraplane.fleet import members as fleet_members
from ultraplane.fleet.controller import EVACUATIONS, INSIGHTS

log = logging.getLogger("ultraplane.dashboard")
Obj = dict[str, Any]
COOKIE = "ultraplane_session"
IDLE_TIMEOUT_S = 3600.0
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                    "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store"}


@dataclass
class Session:
    id: str
    csrf: str
    user: str
    client: KubeClient
    last_used: float = field(default_factory=time.monotonic)


class Dashboard:
    def __init__(self, fleet_server: str, fleet_ca: bytes | None, service: KubeClient) -> None:
        self.fleet_server = fleet_server  # where user clients connect, e.g. https://127.0.0.1:6443
        self.fleet_ca = fleet_ca
        self.service = service  # the dashboard's own identity: reads member credentials only
        self.sessions: dict[str, Session] = {}
        self.member_clients: dict[str, KubeClient] = {}

    # ------------------------------------------------------------------------------------- sessions
    def user_config(self, token: str = "", kubeconfig_text: str = "") -> dict[str, Any]:
        if kubeconfig_text.strip():
            config = yaml.safe_load(kubeconfig_text)
            if not isinstance(config, dict):
                raise KubeconfigError("not a kubeconfig")
            return config
        cluster: Obj = {"server": self.fleet_server}
        if self.fleet_ca:
            import base64

            cluster["certificate-authority-data"] = base64.b64encode(self.fleet_ca).decode()
        return {"current-context": "u", "contexts": [{"name": "u", "context": {"cluster": "f", "user": "u"}}],
                "clusters": [{"name": "f", "cluster": cluster}], "users": [{"name": "u", "user": {"token": token}}]}

    async def login(self, token: str, kubeconfig_text: str) -> Session:
        if not token.strip() and not kubeconfig_text.strip():
            raise PermissionError("give a token or a kubeconfig")
        try:
            client = KubeClient.from_kubeconfig_data(self.user_config(token.strip(), kubeconfig_text), timeout=15.0)
        except (KubeconfigError, yaml.YAMLError, ValueError, OSError) as exc:
            raise PermissionError(f"unusable kubeconfig: {exc}") from exc
        try:
            review = await client.create("/apis/authentication.k8s.io/v1/selfsubjectreviews",
                                         {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
        except ApiError as exc:
            await client.close()
            raise PermissionError("the fleet API refused these credentials" if exc.code == 401
                                  else f"login failed: {exc.status.get('message') if exc.status else exc}") from exc
        except (ConnectionError, OSError) as exc:
            await client.close()
            raise PermissionError(f"the fleet API is not reachable: {exc}") from exc
        user = ((review.get("status") or {}).get("userInfo") or {}).get("username", "unknown")
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24), user, client)
        self.sessions[session.id] = session
        return session

    async def session_of(self, request: Request) -> Session | None:
        session = self.sessions.get(request.cookies.get(COOKIE, ""))
        if session is None:
            return None
        if time.monotonic() - session.last_used > IDLE_TIMEOUT_S:
            await self.logout(session)
            return None
        session.last_used = time.monotonic()
        return session

    async def logout(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        await session.client.close()

    async def may_proxy(self, session: Session, cluster: str) -> bool:
        review = await session.client.create(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
             "spec": {"resourceAttributes": {"group": "cluster.karmada.io", "resource": "clusters",
                                             "subresource": "proxy", "verb": "get", "name": cluster}}})
        return bool((review.get("status") or {}).get("allowed"))

    async def member(self, name: str) -> KubeClient:
        client = self.member_clients.get(name)
        if client is None:
            cluster = await self.service.get(f"{fleet_members.CLUSTERS}/{name}")
            client = await fleet_members.client_for(self.service, cluster)
            self.member_clients[name] = client
        return client

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await self.logout(session)
        for client in self.member_clients.values():
            await client.close()
        await self.service.close()


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode(errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def build_app(dashboard: Dashboard, secure_cookies: bool = True) -> Starlette:
    static = resources.files("ultraplane.dashboard").joinpath("static")

    async def need_session(request: Request) -> Session | Response:
        session = await dashboard.session_of(request)
        if session is None:
            return RedirectResponse("/login", status_code=303)
        return session

    async def check_csrf(request: Request, session: Session) -> dict[str, str] | None:
        form = await _form(request)
        return form if secrets.compare_digest(form.get("csrf", ""), session.csrf) else None

    async def login_page(request: Request) -> Response:
        if request.method == "GET":
            return _html(views.login())
        form = await _form(request)
        try:
            session = await dashboard.login(form.get("token", ""), form.get("kubeconfig", ""))
        except PermissionError as exc:
            return _html(views.login(str(exc)), 401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session.id, httponly=True, secure=secure_cookies, samesite="strict",
                            max_age=int(IDLE_TIMEOUT_S * 8))
        return response

    async def logout(request: Request) -> Response:
        session = await need_session(request)
        if isinstance(session, Session) and await check_csrf(request, session) is not None:
            await dashboard.logout(session)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    async def overview(request: Request) -> Response:
        session = await need_session(request)
        if not isinstance(session, Session):
            return session
        try:
            clusters = (await session.client.list(fleet_members.CLUSTERS)).get("items") or []
        except ApiError as exc:
            return _html(views.error_page("Clusters", _denied(exc), session.user, session.csrf), exc.code or 500)
        insights: dict[str, Obj] = {}
        visible = True
        try:
            insights = {i["metadata"]["name"]: i for i in (await session.client.list(INSIGHTS)).get("items") or []}
        except ApiError:
            visible = False
        return _html(views.overview(clusters, insights, visible, dt.date.today(), session.user, session.csrf))

    async def cluster(request: Request) -> Response:
        session = await need_session(request)
        if not isinstance(session, Session):
            return session
        name = request.path_params["name"]
        if not await dashboard.may_proxy(session, name):
            return _html(views.error_page(f"Cluster {name}", f'{session.user} may not get clusters/proxy "{name}" '
                                          "in the fleet", session.user, session.csrf), 403)
        try:
            member = await dashboard.member(name)
            namespaces = (await member.list("/api/v1/namespaces")).get("items") or []
            deployments = (await member.list("/apis/apps/v1/deployments")).get("items") or []
            pods = (await member.list("/api/v1/pods")).get("items") or []
        except ApiError as exc:
            return _html(views.error_page(f"Cluster {name}", _denied(exc), session.user, session.csrf),
                         exc.code or 502)
        except (ConnectionError, OSError, TimeoutError) as exc:
            return _html(views.error_page(f"Cluster {name}", f"cluster {name} is not reachable: {exc}",
                                          session.user, session.csrf), 502)
        return _html(views.cluster_page(name, namespaces, deployments, pods, session.user, session.csrf))

    async def pods_stream(request: Request) -> Response:
        session = await dashboard.session_of(request)
        name = request.path_params["name"]
        if session is None or not await dashboard.may_proxy(session, name):
            return Response("forbidden", status_code=403)
        member = await dashboard.member(name)
        return StreamingResponse(_pod_updates(member), media_type="text/event-stream", headers=SECURITY_HEADERS)

    async def insights_page(request: Request) -> Response:
        session = await need_session(request)
        if not isinstance(session, Session):
            return session
        try:
            items = (await session.client.list(INSIGHTS)).get("items") or []
        except ApiError as exc:
            return _html(views.error_page("Upgrade insights", _denied(exc), session.user, session.csrf),
                         exc.code or 500)
        return _html(views.insights_page(items, session.user, session.csrf))

    async def refresh_insight(request: Request) -> Response:
        session = await need_session(request)
        if not isinstance(session, Session):
            return session
        if await check_csrf(request, session) is None:
            return _html(views.error_page("Upgrade insights", "stale form: reload the page", session.user,
                                          session.csrf), 403)
        name = request.path_params["name"]
        try:
            await session.client.patch(f"{INSIGHTS}/{name}", {"spec": {"refreshRequestedAt": fleet_members.now_rfc3339()}},
                                       content_type="application/merge-patch+json")
        except ApiError as exc:
            return _html(views.error_page("Upgrade insights", _denied(exc), session.user, session.csrf),
                         exc.code or 500)
        return RedirectResponse(f"/insights#insight-{name}", status_code=303)

    async def calendar_page(request: Request) -> Response:
        session = await need_session(request)
        if not isinstance(session, Session):
            return session
        clusters: list[Obj] = []
        with contextlib.suppress(ApiError):
            clusters = (await session.client.list(fleet_members.CLUSTERS)).get("items") or []
        return _html(views.calendar_page(clusters, dt.date.today(), session.user, session.csrf))

    async def evacuations_page(request: Request) -> Response:
        session = await need_session(request)
        if not isinstance(session, Session):
            return session
        try:
            items = (await session.client.list(EVACUATIONS)).get("items") or []
        except ApiError as exc:
            return _html(views.error_page("Evacuations", _denied(exc), session.user, session.csrf), exc.code or 500)
        return _html(views.evacuations_page(items, session.user, session.csrf))

    async def evacuations_stream(request: Request) -> Response:
        session = await dashboard.session_of(request)
        if session is None:
            return Response("forbidden", status_code=403)

        async def updates() -> AsyncIterator[bytes]:
            last = ""
            while True:
                try:
                    items = (await session.client.list(EVACUATIONS)).get("items") or []
                except (ApiError, ConnectionError, OSError):
                    return
                fragment = views.evacuations_fragment(items)
                if fragment != last:
                    last = fragment
                    yield _event(fragment)
                await asyncio.sleep(1.0)

        return StreamingResponse(updates(), media_type="text/event-stream", headers=SECURITY_HEADERS)

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ("dashboard.css", "dashboard.js"):
            return Response("not found", status_code=404)
        media = "text/css" if name.endswith(".css") else "text/javascript"
        return Response(static.joinpath(name).read_bytes(), media_type=media, headers=SECURITY_HEADERS)

    async def healthz(_request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[
        Route("/login", login_page, methods=["GET", "POST"]), Route("/logout", logout, methods=["POST"]),
        Route("/", overview), Route("/clusters/{name}", cluster), Route("/clusters/{name}/pods/stream", pods_stream),
        Route("/insights", insights_page), Route("/insights/{name}/refresh", refresh_insight, methods=["POST"]),
        Route("/calendar", calendar_page), Route("/evacuations", evacuations_page),
        Route("/evacuations/stream", evacuations_stream), Route("/static/{name}", static_file),
        Route("/healthz", healthz)])


def _denied(exc: ApiError) -> str:
    message = exc.status.get("message") if exc.status else str(exc)
    return f"the fleet API answered {exc.code}: {message}"


def _event(html: str) -> bytes:
    return ("event: update\n" + "".join(f"data: {line}\n" for line in html.splitlines() or [""]) + "\n").encode()


async def _pod_updates(member: KubeClient) -> AsyncIterator[bytes]:
    """The pods table, re-rendered at most twice a second while the member's pod watch reports changes."""
    listed = await member.list("/api/v1/pods")
    pods = {(p["metadata"].get("namespace"), p["metadata"]["name"]): p for p in listed.get("items") or []}
    version = (listed.get("metadata") or {}).get("resourceVersion", "")
    yield _event(views.pods_table(list(pods.values())))
    changed = asyncio.Event()

    async def follow() -> None:
        nonlocal version
        while True:
            async for event in member.watch("/api/v1/pods", {"resourceVersion": version,
                                                             "allowWatchBookmarks": "true"}):
                obj = event.get("object") or {}
                meta = obj.get("metadata") or {}
                version = meta.get("resourceVersion", version)
                key = (meta.get("namespace"), meta.get("name"))
                if event.get("type") == "DELETED":
                    pods.pop(key, None)
                elif event.get("type") in ("ADDED", "MODIFIED"):
                    pods[key] = obj
                else:
                    continue
                changed.set()
            await asyncio.sleep(0.5)

    watcher = asyncio.create_task(follow())
    try:
        while True:
            try:
                await asyncio.wait_for(changed.wait(), 15.0)
            except TimeoutError:
                yield b": keep-alive\n\n"
                continue
            changed.clear()
            yield _event(views.pods_table(list(pods.values())))
            await asyncio.sleep(0.5)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher

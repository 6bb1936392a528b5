"""The dashboard's ASGI app (Starlette): a read-only page, JSON, and a server-sent-event
stream that pushes a fresh snapshot only when something changed.

Security: every response carries a strict Content-Security-Policy (scripts, styles and
connections from this origin only, no inline code, no frames); only GET and HEAD are
served; every request is authenticated unless the dashboard is bound to loopback and was
started without tokens; a model owner sees only its own jobs.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib.resources import files
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bastion.dashboard.auth import LOCAL_OPERATOR, TokenStore, Viewer
from bastion.dashboard.sources import Source, summarize

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
COOKIE = "bastion_dashboard"
STREAM_CHECK_SECONDS = 0.5
STREAM_KEEPALIVE_SECONDS = 15.0
PUBLIC = ("/static/", "/login", "/healthz")


def snapshot(source: Source, viewer: Viewer) -> dict[str, Any]:
    """Everything ``viewer`` may see, now."""
    now = time.time()
    sites = []
    for site in source.sites():
        silent = now - float(site["last_seen"])
        offers = site.get("offers") or {}
        sites.append(
            {
                "name": site["name"],
                "online": silent < source.offline_after,
                "last_seen": int(site["last_seen"]),  # whole seconds: no push per heartbeat
                "datasets": sorted((offers.get("datasets") or {}).keys()),
                "attestation": site.get("attestation")
                or {"devices": offers.get("attestation") or []},
                "certificate_expiry": (offers.get("certificate") or {}).get("not_after"),
            }
        )
    jobs = []
    for job in source.jobs():
        if not viewer.may_see_job(str(job["owner"])):
            continue
        jobs.append(
            {
                **job,
                "progress": summarize(job, source.events(job["id"])),
                "log": source.log_tail(job["id"]),
            }
        )
    return {"viewer": {"name": viewer.name, "role": viewer.role}, "sites": sites, "jobs": jobs}


def create_app(source: Source, tokens: TokenStore | None) -> Starlette:
    """The app; ``tokens`` None serves everyone as the local operator (loopback only)."""

    def viewer_of(request: Request) -> Viewer | None:
        if tokens is None:
            return LOCAL_OPERATOR
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header.lower().startswith("bearer ") else ""
        token = token or request.cookies.get(COOKIE, "")
        return tokens.check(token)

    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.method not in ("GET", "HEAD"):
            response: Response = PlainTextResponse(
                "the dashboard is read-only", status_code=405, headers={"Allow": "GET, HEAD"}
            )
        elif (
            not request.url.path.startswith(PUBLIC)
            and request.url.path != "/"
            and (viewer_of(request) is None)
        ):
            response = JSONResponse(
                {"error": "authentication required: a dashboard bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="bastion"'},
            )
        elif request.url.path == "/" and viewer_of(request) is None:
            response = PlainTextResponse(
                "authentication required: open /login?token=TOKEN once "
                "(tokens: bastion dashboard token create)",
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="bastion"'},
            )
        else:
            request.state.viewer = viewer_of(request)
            response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if request.url.path.startswith("/api/"):
            response.headers["Cache-Control"] = "no-store"
        return response

    static = files("bastion.dashboard") / "static"

    async def index(request: Request) -> Response:
        return Response((static / "index.html").read_bytes(), media_type="text/html")

    async def login(request: Request) -> Response:
        token = request.query_params.get("token", "")
        if tokens is None:
            return RedirectResponse("/", status_code=303)
        if tokens.check(token) is None:
            return PlainTextResponse("unknown token", status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return response

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def overview(request: Request) -> Response:
        data = await asyncio.to_thread(snapshot, source, request.state.viewer)
        return JSONResponse(data)

    async def job(request: Request) -> Response:
        data = await asyncio.to_thread(snapshot, source, request.state.viewer)
        for entry in data["jobs"]:
            if entry["id"] == request.path_params["job"]:
                return JSONResponse({**entry, "events": source.events(entry["id"])})
        return JSONResponse({"error": "no such job among those you may see"}, status_code=404)

    async def stream(request: Request) -> Response:
        viewer = request.state.viewer

        async def events() -> AsyncIterator[str]:
            last = ""
            quiet = time.monotonic()
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                data = await asyncio.to_thread(snapshot, source, viewer)
                # the page ticks "last seen" and ETA itself; only real changes are pushed
                text = json.dumps(data, sort_keys=True, default=str)
                digest = hashlib.sha256(text.encode()).hexdigest()
                if digest != last:
                    last = digest
                    quiet = time.monotonic()
                    yield f"event: snapshot\ndata: {text}\n\n"
                elif time.monotonic() - quiet > STREAM_KEEPALIVE_SECONDS:
                    quiet = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(STREAM_CHECK_SECONDS)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/login", login),
            Route("/healthz", healthz),
            Route("/api/overview", overview),
            Route("/api/jobs/{job}", job),
            Route("/api/stream", stream),
            Mount("/static", app=StaticFiles(directory=str(static)), name="static"),
        ],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=guard)],
    )

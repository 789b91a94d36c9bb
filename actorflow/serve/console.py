"""The web console at ``/ui``: a page, one script and one stylesheet, hand-written and shipped in
this package (``actorflow/serve/console/``), with no build step, no framework and no CDN.

The page and its two files answer without the bearer token, as ``/docs`` does: they are the
same static files for everyone and hold no data. Everything the console shows or does goes
through the public HTTP API (``/v1/...``) with the token, which the page asks for when the
service first answers 401 and keeps in the tab's ``sessionStorage``; a later 401 asks again.

It shows the actor types with their counts (``GET /v1/actors``), a type's ids page by page with
a prefix search, one actor's committed state, version, timers, failed timer ticks and failed
deliveries; the workflows by status, and one workflow's step graph (drawn as SVG from each
step's ``deps``) with resume and cancel buttons. The view on screen is read again every two
seconds while the tab is visible (the types' counts, a listing per type, every 15 s).

The files are read when first asked for (nothing is read at import), and the page names its
files and the API by absolute paths under the request's root path, so the console works behind
a route prefix too.
"""

from __future__ import annotations

import functools
import html
import importlib.resources
import pathlib

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

CONSOLE_PATH = "/ui"
#: The console's files besides the page, and their media types.
FILES = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
#: The paths that answer without the bearer token: the page and its files.
PUBLIC_PATHS = frozenset({CONSOLE_PATH, CONSOLE_PATH + "/", *(f"{CONSOLE_PATH}/{name}" for name in FILES)})
#: The page loads only what this service sends, and sends its token to nowhere else.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    # The files change with the package: the browser asks again (a 304 when they did not).
    "cache-control": "no-cache",
}
#: What the page's template says where its root path goes.
ROOT_MARK = "{{root}}"


@functools.cache
def console_dir() -> pathlib.Path:
    """The directory of the console's files in the installed package."""
    return pathlib.Path(str(importlib.resources.files("actorflow.serve") / "console"))


@functools.cache
def page_template() -> str:
    """``index.html``, read once."""
    return (console_dir() / "index.html").read_text(encoding="utf-8")


def console_page(root: str) -> str:
    """The page's HTML, its files and the API under ``root`` (the service's root path)."""
    return page_template().replace(ROOT_MARK, html.escape(root, quote=True))


def console_router() -> APIRouter:
    """``/ui`` and its files (not in the OpenAPI document: they are not API)."""
    router = APIRouter(include_in_schema=False)

    @router.get(CONSOLE_PATH)
    async def console(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(console_page(root), headers=_HEADERS)

    @router.get(CONSOLE_PATH + "/")
    async def console_slash(request: Request) -> RedirectResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(root + CONSOLE_PATH, status_code=308)

    def file_route(name: str, media_type: str) -> None:
        async def console_file() -> FileResponse:
            return FileResponse(console_dir() / name, media_type=media_type, headers=_HEADERS)

        router.add_api_route(f"{CONSOLE_PATH}/{name}", console_file, methods=["GET"], name=f"console_{name}")

    for name, media_type in FILES.items():
        file_route(name, media_type)
    return router

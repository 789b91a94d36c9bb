"""Swagger UI at ``/docs``, offline: its script, stylesheet and icon are served from the
``fastapi-offline`` package, not a CDN, so the page needs no network beyond this service and
names no other host.

The page and its files answer without the bearer token (they are the same static UI for
everyone); the document they show, ``/openapi.json``, stays behind the token as every other
route does, because it names the actor types and methods the service holds. Swagger UI fetches
the document before anyone could click "Authorize", so the page fetches it itself: when the
service answers 401 it asks for the token, fetches the document with it, then starts Swagger UI
on that document with the bearer scheme already authorized by the same token, so "Try it out"
sends it. Without a token configured the document loads at once.
"""

from __future__ import annotations

import functools
import html
import importlib.resources
import json
import pathlib

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

DOCS_PATH = "/docs"
ASSETS_PATH = DOCS_PATH + "/assets"
#: Swagger UI's files (as ``fastapi-offline`` ships them) and their media types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}
#: The paths that answer without the bearer token: the page and its files.
PUBLIC_PATHS = frozenset({DOCS_PATH, *(f"{ASSETS_PATH}/{name}" for name in ASSETS)})
#: The name of the bearer security scheme in the document (the page authorizes it).
BEARER = "bearerAuth"


@functools.cache
def asset_dir() -> pathlib.Path:
    """The directory of the Swagger UI files in the installed ``fastapi-offline`` package."""
    return pathlib.Path(str(importlib.resources.files("fastapi_offline") / "static"))


def docs_router(openapi_url: str, title: str = "actorflow") -> APIRouter:
    """The ``/docs`` page and the files it loads (none in the document)."""
    router = APIRouter(include_in_schema=False)

    @router.get(DOCS_PATH)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return HTMLResponse(docs_page(root + openapi_url, root + ASSETS_PATH, title))

    def asset_route(name: str, media_type: str) -> None:
        async def asset() -> FileResponse:
            return FileResponse(
                asset_dir() / name, media_type=media_type, headers={"cache-control": "public, max-age=86400"}
            )

        router.add_api_route(f"{ASSETS_PATH}/{name}", asset, methods=["GET"], name=f"docs_{name}")

    for name, media_type in ASSETS.items():
        asset_route(name, media_type)
    return router


def docs_page(openapi_url: str, assets: str, title: str) -> str:
    """The HTML of the page: Swagger UI on the document at ``openapi_url``, its files under
    ``assets`` (both paths on this service)."""

    def script_value(value: str) -> str:  # a JSON string that cannot end the <script> element
        return json.dumps(value).replace("<", "\\u003c")

    loader = _LOADER.replace("SCHEME", script_value(BEARER)).replace("SPEC_URL", script_value(openapi_url))
    assets = html.escape(assets, quote=True)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<title>{html.escape(title)} - Swagger UI</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" type="image/png" href="{assets}/favicon.png">
<style>
  #token {{ font-family: sans-serif; margin: 2em auto; max-width: 40em; }}
  #token input {{ width: 24em; }}
  #token-problem {{ color: #b00; }}
</style>
</head>
<body>
<form id="token" hidden>
  <p>This service needs its bearer token to show its API.</p>
  <label>Bearer token <input type="password" name="token" autocomplete="off" required></label>
  <button type="submit">Show the API</button>
  <p id="token-problem"></p>
</form>
<div id="swagger-ui"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script>{loader}</script>
</body>
</html>
"""


# Fetches the document (with the token once one is entered), then starts Swagger UI on it with
# the bearer scheme authorized by that token. SPEC_URL and SCHEME are replaced by JSON strings.
_LOADER = """
(function () {
  var specUrl = SPEC_URL;
  var form = document.getElementById("token");
  var problem = document.getElementById("token-problem");
  function start(spec, token) {
    function authorize() {
      if (token && window.ui) { window.ui.preauthorizeApiKey(SCHEME, token); }
    }
    window.ui = SwaggerUIBundle({
      spec: spec,
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
      layout: "BaseLayout",
      onComplete: authorize
    });
    authorize();
  }
  function load(token) {
    var headers = token ? {"Authorization": "Bearer " + token} : {};
    fetch(specUrl, {headers: headers}).then(function (response) {
      if (response.status === 401) {
        form.hidden = false;
        problem.textContent = token ? "That token was refused." : "";
        return null;
      }
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (spec) {
      if (spec !== null) { form.hidden = true; start(spec, token); }
    }).catch(function (error) {
      form.hidden = false;
      problem.textContent = "The API document could not be loaded: " + error.message;
    });
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    load(form.elements.token.value.trim());
  });
  load("");
})();
"""

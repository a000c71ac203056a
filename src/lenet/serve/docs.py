"""GET /docs: FastAPI's Swagger UI page, working offline, under a strict Content-Security-Policy.

    add_docs(app)    # after FastAPI(..., docs_url=None, redoc_url=None)

FastAPI's own /docs loads Swagger UI from a CDN, so offline it is a blank page. Here the
same page (FastAPI's get_swagger_ui_html) points at the copy in static/swagger/ (see its
SOURCE.txt), and its one inline script, FastAPI's `SwaggerUIBundle({...})` call, is allowed
by its SHA-256 rather than by 'unsafe-inline': nothing else can run on the page. ReDoc
(/redoc) is off: it too would load from a CDN.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

SWAGGER = "/static/swagger"
# No online validator badge: it would fetch an image from validator.swagger.io.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def script_hashes(html: str) -> str:
    """CSP sources allowing exactly the page's inline scripts: 'sha256-...' each."""
    sources = []
    for script in re.findall(r"<script>(.*?)</script>", html, re.S):
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode("ascii")
        sources.append(f"'sha256-{digest}'")
    return " ".join(sources)


def docs_page(app: FastAPI) -> tuple[str, dict[str, str]]:
    """The Swagger UI page for `app` and its headers (the CSP); built once, it never changes."""
    html = get_swagger_ui_html(
        openapi_url=app.openapi_url, title=f"{app.title} API", swagger_js_url=f"{SWAGGER}/swagger-ui-bundle.js",
        swagger_css_url=f"{SWAGGER}/swagger-ui.css", swagger_favicon_url="/static/favicon.svg",
        swagger_ui_parameters=SWAGGER_PARAMETERS).body.decode()
    csp = (f"default-src 'self'; script-src 'self' {script_hashes(html)}; img-src 'self' data:; "
           "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
    return html, {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def add_docs(app: FastAPI) -> None:
    html, headers = docs_page(app)

    async def docs() -> HTMLResponse:
        return HTMLResponse(html, headers=headers)

    app.add_api_route("/docs", docs, include_in_schema=False)

"""The dashboard: a single-page application served by the gateway from ``static/``, with no build step and no CDN.

The pages are ES modules written with Preact and htm (tagged templates instead of JSX), vendored with uPlot for
the charts in ``static/vendor/`` (their licences are in ``LICENSES.txt``). Everything they show comes from the
public API with the key the user signs in with; the key lives in the tab's ``sessionStorage`` only.

Every response carries a Content-Security-Policy that allows this origin alone, so a page can load nothing from
elsewhere and no inline script runs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

STATIC = Path(__file__).parent / "static"
PREFIX = "/ui"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class DashboardFiles(StaticFiles):
    """The static files, with the security headers. The application routes by the URL's fragment (``/ui/#/jobs/…``),
    so every page is ``index.html``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-cache")]
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)


def mount_dashboard(app: FastAPI) -> None:
    app.mount(PREFIX, DashboardFiles(directory=STATIC, html=True), name="dashboard")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/")

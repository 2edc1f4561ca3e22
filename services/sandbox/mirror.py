"""Files the emulated machines download from "the internet": the CPython archive a Python 3.10 machine's
bootstrap fetches, as it would fetch python-build-standalone's."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from .machines import StockImages


def mirror_app(stock: StockImages) -> Starlette:
    return Starlette(routes=[Mount("/files", StaticFiles(directory=Path(stock.python_archive).parent))])


def python_url(base_url: str, stock: StockImages) -> str:
    return f"{base_url.rstrip('/')}/files/{stock.python_archive.name}"

"""The AsyncAPI document of the subjects other systems can subscribe to (``shared.asyncapi``), as JSON and as a page.

Open like ``/docs`` and ``/openapi.json``: it is a schema, and holds no one's data. The page is written here from the
document, with no script and nothing fetched from elsewhere, so it reads the same where the gateway has no internet
access; AsyncAPI's own tools (AsyncAPI Studio, the generator) read ``/asyncapi.json``.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, JSONResponse

from shared.asyncapi import document

router = APIRouter(tags=["asyncapi"], include_in_schema=False)

STYLE = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:auto;padding:1em;line-height:1.4}"
         "table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:.2em .5em;text-align:left;"
         "vertical-align:top}code{background:#f4f4f4;padding:0 .2em}")


@router.get("/asyncapi.json")
def asyncapi_json() -> JSONResponse:
    """The AsyncAPI document."""
    return JSONResponse(document())


@router.get("/asyncapi")
def asyncapi_page() -> HTMLResponse:
    """The AsyncAPI document as a page: each channel, its parameters and message, then each payload's fields."""
    return HTMLResponse(page(document()))


def page(doc: dict[str, Any]) -> str:
    info, servers = doc["info"], doc["servers"].values()
    channels = sorted(doc["channels"].values(), key=lambda channel: channel["address"])
    return "\n".join([
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(info["title"])}</title>'
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])} {escape(info['version'])}</h1>",
        f'<p>AsyncAPI {escape(doc["asyncapi"])} document: <a href="asyncapi.json">asyncapi.json</a>.</p>',
        *(f"<p>{escape(paragraph)}</p>" for paragraph in info["description"].split("\n\n")),
        *(f"<p>Server: <code>{escape(server['protocol'])}://{escape(server['host'])}</code>: "
          f"{escape(server.get('description', ''))}</p>" for server in servers),
        "<h2>Channels</h2>",
        *(_channel(doc, channel) for channel in channels),
        "<h2>Payloads</h2>",
        *(_schema(name, schema) for name, schema in doc["components"]["schemas"].items()),
        "</body></html>",
    ])


def _resolve(doc: dict[str, Any], reference: dict[str, str]) -> dict[str, Any]:
    """What a local ``{"$ref": "#/a/b"}`` points at."""
    target = doc
    for part in reference["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return target


def _channel(doc: dict[str, Any], channel: dict[str, Any]) -> str:
    parameters = "".join(f"<li><code>{{{escape(name)}}}</code>: {escape(parameter['description'])}</li>"
                         for name, parameter in channel.get("parameters", {}).items())
    payloads = ", ".join(_type(_resolve(doc, message)["payload"]) for message in channel["messages"].values())
    return (f"<h3><code>{escape(channel['address'])}</code></h3>"
            f"<p>{escape(channel.get('description', ''))}</p>"
            + (f"<ul>{parameters}</ul>" if parameters else "")
            + f"<p>Payload: {payloads}</p>")


def _schema(name: str, schema: dict[str, Any]) -> str:
    head = f'<h3 id="{escape(name)}">{escape(name)}</h3>' + (
        f"<p>{escape(schema['description'])}</p>" if "description" in schema else "")
    if "properties" not in schema:
        return f"{head}<p>{_type(schema)}</p>"
    required = set(schema.get("required", ()))
    rows = "".join(f"<tr><td><code>{escape(field)}</code></td><td>{_type(prop)}</td>"
                   f"<td>{'yes' if field in required else ''}</td><td>{escape(prop.get('description', ''))}</td></tr>"
                   for field, prop in schema["properties"].items())
    return f"{head}<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>{rows}</table>"


def _type(schema: dict[str, Any]) -> str:
    """A field's type in a few words, linking the payload types it names."""
    if "$ref" in schema:
        name = escape(schema["$ref"].rsplit("/", 1)[1])
        return f'<a href="#{name}">{name}</a>'
    if "anyOf" in schema:
        return " | ".join(_type(option) for option in schema["anyOf"])
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return " | ".join(f"<code>{escape(json.dumps(value))}</code>" for value in values)
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {_type(schema['additionalProperties'])}"
    return escape(f"{kind} ({schema['format']})" if "format" in schema else kind)

"""/docs: the API reference as one self-contained HTML page.

FastAPI's Swagger UI and ReDoc pages load their scripts and styles from a CDN,
so on a machine without internet they show a blank page. This page is
rendered on the server from the app's own OpenAPI document: no script, no
external asset (its Content-Security-Policy forbids loading any), and the
machine-readable document stays at /openapi.json.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

# Nothing may be fetched from anywhere: only the inline style applies.
CSP = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:70rem;margin:2rem auto;padding:0 1rem;
color:#1d1d1f;line-height:1.45}
code,pre{font-family:ui-monospace,monospace;font-size:.92em}
h3{margin:2rem 0 .4rem;padding-top:.6rem;border-top:1px solid #ddd}
.m{display:inline-block;min-width:3.6rem;padding:.05rem .4rem;border-radius:.25rem;
color:#fff;font-weight:600;text-align:center;font-family:ui-monospace,monospace}
.get{background:#2f6fb0}.post{background:#2e8b57}.put{background:#b5822b}
.patch{background:#7b5fb0}.delete{background:#b03a2e}
table{border-collapse:collapse;margin:.4rem 0 1rem}
td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f6}.muted{color:#666}ul.toc{columns:2}
"""

_METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
_CODE = re.compile(r"`([^`]+)`")


def _text(value: Any) -> str:
    """Escaped text, with `backticks` shown as code (as in the route docstrings)."""
    return _CODE.sub(r"<code>\1</code>", html.escape(str(value)))


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(schema: dict[str, Any]) -> str:
    """A short, escaped description of a JSON schema: `string`, `LinkOut[]`, `integer | null`."""
    if "$ref" in schema:
        name = _ref_name(schema["$ref"])
        return f'<a href="#schema-{html.escape(name)}">{html.escape(name)}</a>'
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return " | ".join(_type(s) for s in schema[key])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " | ".join(html.escape(str(k)) for k in kind)
    if kind == "array":
        return _type(schema.get("items", {})) + "[]"
    out = html.escape(str(kind))
    if "format" in schema:
        out += f" ({html.escape(str(schema['format']))})"
    if "enum" in schema:
        values = (f"<code>{html.escape(json.dumps(v))}</code>" for v in schema["enum"])
        out += ": " + ", ".join(values)
    return out


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    # An optional parameter keeps its limits inside `anyOf: [{...}, {type: null}]`.
    for alt in schema.get("anyOf", []):
        if alt.get("type") != "null" and (inner := _constraints(alt)):
            parts.append(inner)
    for key, label in (
        ("minimum", "≥"), ("maximum", "≤"), ("minLength", "min length"),
        ("maxLength", "max length"), ("pattern", "pattern"),
    ):
        if key in schema:
            parts.append(f"{label} <code>{html.escape(str(schema[key]))}</code>")
    if "default" in schema:
        parts.append(f"default <code>{html.escape(json.dumps(schema['default']))}</code>")
    return "; ".join(parts)


def _body_schema(content: dict[str, Any]) -> str:
    return "; ".join(
        f"<code>{html.escape(media)}</code> {_type(spec.get('schema', {}))}"
        for media, spec in content.items()
    )


def _anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"op {method} {path}".lower()).strip("-")


def _operation(method: str, path: str, op: dict[str, Any], auth: str) -> list[str]:
    out = [
        f'<h3 id="{_anchor(method, path)}"><span class="m {method}">{method.upper()}</span> '
        f"<code>{html.escape(path)}</code></h3>"
    ]
    if op.get("summary"):
        out.append(f"<p><strong>{_text(op['summary'])}</strong></p>")
    if op.get("description"):
        out.append(f"<p>{_text(op['description'])}</p>")
    out.append(f"<p class=\"muted\">{auth if op.get('security') else 'No token needed.'}</p>")
    params = op.get("parameters", [])
    if params:
        out.append(
            "<table><tr><th>parameter</th><th>in</th><th>type</th><th>required</th>"
            "<th>description</th></tr>"
        )
        for p in params:
            schema = p.get("schema", {})
            desc = "; ".join(
                x for x in (_text(p.get("description", "")), _constraints(schema)) if x
            )
            out.append(
                f"<tr><td><code>{html.escape(p['name'])}</code></td>"
                f"<td>{html.escape(p.get('in', ''))}</td><td>{_type(schema)}</td>"
                f"<td>{'yes' if p.get('required') else 'no'}</td><td>{desc}</td></tr>"
            )
        out.append("</table>")
    body = op.get("requestBody")
    if body:
        required = "required" if body.get("required") else "optional"
        out.append(f"<p>Body ({required}): {_body_schema(body.get('content', {}))}</p>")
    out.append("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>")
    for code, resp in op.get("responses", {}).items():
        out.append(
            f"<tr><td>{html.escape(str(code))}</td><td>{_text(resp.get('description', ''))}</td>"
            f"<td>{_body_schema(resp.get('content', {}))}</td></tr>"
        )
    out.append("</table>")
    return out


def _schema(name: str, schema: dict[str, Any]) -> list[str]:
    out = [f'<h3 id="schema-{html.escape(name)}"><code>{html.escape(name)}</code></h3>']
    if schema.get("description"):
        out.append(f"<p>{_text(schema['description'])}</p>")
    props = schema.get("properties", {})
    if not props:
        out.append(f"<p>{_type(schema)}</p>")
        return out
    required = set(schema.get("required", []))
    out.append(
        "<table><tr><th>field</th><th>type</th><th>required</th><th>description</th></tr>"
    )
    for field, spec in props.items():
        desc = "; ".join(x for x in (_text(spec.get("description", "")), _constraints(spec)) if x)
        out.append(
            f"<tr><td><code>{html.escape(field)}</code></td><td>{_type(spec)}</td>"
            f"<td>{'yes' if field in required else 'no'}</td><td>{desc}</td></tr>"
        )
    out.append("</table>")
    return out


def render_docs(spec: dict[str, Any], openapi_url: str = "/openapi.json") -> str:
    """The whole reference page for an OpenAPI document (escaped; no external URL)."""
    info = spec.get("info", {})
    title = f"{info.get('title', 'API')} {info.get('version', '')}".strip()
    schemes = spec.get("components", {}).get("securitySchemes", {})
    auth = "Needs <code>Authorization: Bearer TOKEN</code>" + "".join(
        f" ({_text(s['description'])})" for s in schemes.values() if s.get("description")
    ) + "."
    ops = [
        (method, path, op)
        for path, item in spec.get("paths", {}).items()
        for method, op in item.items()
        if method in _METHODS
    ]
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)} API</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)} API</h1>",
    ]
    if info.get("description"):
        out.append(f"<p>{_text(info['description'])}</p>")
    out.append(
        f'<p>The OpenAPI document: <a href="{html.escape(openapi_url)}">'
        f"{html.escape(openapi_url)}</a> (for clients and code generators).</p>"
    )
    out.append('<h2 id="operations">Operations</h2><ul class="toc">')
    for method, path, _ in ops:
        out.append(
            f'<li><a href="#{_anchor(method, path)}">{method.upper()} '
            f"<code>{html.escape(path)}</code></a></li>"
        )
    out.append("</ul>")
    for method, path, op in ops:
        out.extend(_operation(method, path, op, auth))
    schemas = spec.get("components", {}).get("schemas", {})
    if schemas:
        out.append('<h2 id="schemas">Schemas</h2>')
        for name, schema in schemas.items():
            out.extend(_schema(name, schema))
    out.append("</body></html>")
    return "\n".join(out)


def add_docs(app: FastAPI, path: str = "/docs") -> None:
    """Serve the reference at `path`, rendered once from the app's OpenAPI document."""
    page: list[str] = []

    @app.get(path, include_in_schema=False, response_class=HTMLResponse)
    def docs() -> HTMLResponse:
        if not page:  # routes are all added by the first request
            page.append(render_docs(app.openapi(), app.openapi_url or "/openapi.json"))
        return HTMLResponse(page[0], headers={"Content-Security-Policy": CSP})

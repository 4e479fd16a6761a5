"""/docs works without internet: every page the app serves is self-contained.

FastAPI's default /docs and /redoc load Swagger UI and ReDoc from a CDN; on a
machine without internet they are blank. These tests walk every page the live
app serves and refuse any asset or link that leaves the machine, and check
that /docs itself lists every operation of /openapi.json.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest

from crmsync.api.docs import render_docs

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
# Any absolute or protocol-relative URL anywhere in a page (attributes, inline
# CSS `url(...)`, `@import`, script text): its host must be loopback.
ABSOLUTE_URL = re.compile(r"""(?:https?:)?//([A-Za-z0-9.\-\[\]:]+)""")


class _Page(HTMLParser):
    """Collects URL-bearing attributes and the text of each operation heading."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.urls: list[tuple[str, str, str]] = []
        self.headings: list[str] = []
        self.scripts = 0
        self._h3: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self.scripts += 1
        for name, value in attrs:
            if name in ("src", "href", "action", "srcset", "data", "poster") and value:
                self.urls.append((tag, name, value))
        if tag == "h3":
            self._h3 = []

    def handle_data(self, data: str) -> None:
        if self._h3 is not None:
            self._h3.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "h3" and self._h3 is not None:
            self.headings.append(" ".join("".join(self._h3).split()))
            self._h3 = None


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    page.close()
    return page


def _outside_hosts(text: str) -> list[str]:
    hosts = []
    for m in ABSOLUTE_URL.finditer(text):
        host = m.group(1)
        # Strip the port; a bracketed IPv6 literal keeps its brackets.
        name = host[: host.find("]") + 1] if host.startswith("[") else host.split(":")[0]
        if name not in LOOPBACK:
            hosts.append(m.group(0))
    return hosts


def _served_get_paths(spec: dict) -> list[str]:
    """Every GET path the app serves that needs no path parameter.

    From the OpenAPI document, plus the two pages it does not describe itself.
    """
    paths = {p for p, item in spec["paths"].items() if "get" in item and "{" not in p}
    return sorted(paths | {"/docs", "/openapi.json"})


def test_docs_lists_every_operation_without_a_token(service) -> None:
    with service.client() as c:
        spec = c.get("/openapi.json").json()
        r = c.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    page = _parse(r.text)
    operations = {
        f"{method.upper()} {path}"
        for path, item in spec["paths"].items()
        for method in item
    }
    assert len(operations) >= 15, operations
    headings = {h for h in page.headings if h.split(" ", 1)[0].isupper()}
    assert headings == operations
    # Each operation's parameters and summary are on the page, not just its path.
    for item in spec["paths"].values():
        for op in item.values():
            assert op["summary"] in r.text
            for p in op.get("parameters", []):
                assert f"<code>{p['name']}</code>" in r.text
    # Every schema a response names is described on the page.
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in r.text
    assert "Authorization: Bearer TOKEN" in r.text


def test_docs_links_resolve_on_the_same_server(service) -> None:
    with service.client() as c:
        r = c.get("/docs")
        page = _parse(r.text)
        ids = set(re.findall(r'id="([^"]+)"', r.text))
        local = [u for _, _, u in page.urls if not u.startswith("#")]
        assert "/openapi.json" in local
        for url in local:
            assert not urlsplit(url).netloc, url
            assert c.get(url).status_code == 200, url
    anchors = [u[1:] for _, _, u in page.urls if u.startswith("#")]
    assert anchors and set(anchors) <= ids, set(anchors) - ids


def test_no_served_page_loads_anything_from_outside(service) -> None:
    """Walk every GET page: no script, style, font or link that leaves loopback."""
    checked = 0
    with service.client(service.admin) as c:
        for path in _served_get_paths(c.get("/openapi.json").json()):
            r = c.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            assert _outside_hosts(r.text) == [], path
            if r.headers["content-type"].startswith("text/html"):
                page = _parse(r.text)
                assert page.scripts == 0, path
                assert [u for u in page.urls if urlsplit(u[2]).netloc] == [], path
                # The browser may not fetch anything either, should a URL slip in.
                assert "default-src 'none'" in r.headers["content-security-policy"]
            checked += 1
    assert checked >= 8


@pytest.mark.parametrize("path", ["/redoc", "/docs/oauth2-redirect"])
def test_cdn_pages_are_gone(service, path: str) -> None:
    with service.client() as c:
        r = c.get(path)
    assert r.status_code == 404
    assert "cdn" not in r.text.lower()


def test_outside_host_detection_is_not_blind() -> None:
    """The checker above finds what FastAPI's default pages contain."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    swagger = get_swagger_ui_html(openapi_url="/openapi.json", title="x").body.decode()
    redoc = get_redoc_html(openapi_url="/openapi.json", title="x").body.decode()
    assert _outside_hosts(swagger) and _outside_hosts(redoc)
    assert _outside_hosts("<style>@import '//fonts.example/x.css'</style>")
    assert _outside_hosts("http://127.0.0.1:8000/x http://[::1]:9/ //localhost/") == []


def test_untrusted_text_is_escaped() -> None:
    """Descriptions come from code and config names: they render as text, never as HTML."""
    spec = {
        "info": {"title": "t<b>", "version": "1", "description": "`<script>x</script>`"},
        "paths": {
            "/a/{id}": {
                "get": {
                    "summary": 'say "<img src=//evil.example/x>"',
                    "parameters": [
                        {"name": "id", "in": "path", "required": True,
                         "schema": {"type": "string", "pattern": "^<a>$"}},
                        # An optional parameter: its limits sit inside anyOf.
                        {"name": "q", "in": "query", "schema": {"anyOf": [
                            {"type": "string", "maxLength": 7}, {"type": "null"}]}},
                    ],
                    "responses": {"200": {"description": "ok"}},
                },
            },
        },
    }
    text = render_docs(spec)
    page = _parse(text)
    assert page.scripts == 0
    assert not any(tag == "img" for tag, _, _ in page.urls)
    assert "&lt;script&gt;" in text and "&lt;img" in text and "^&lt;a&gt;$" in text
    assert "max length <code>7</code>" in text
    assert page.headings == ["GET /a/{id}"]

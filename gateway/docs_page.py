"""The human-readable API page served at ``/docs``, rendered from the OpenAPI document.

Self-contained on purpose: no CDN, script or stylesheet from outside (the
edge may run where nothing outside can be reached, and a page that pulls
third-party code is a supply-chain risk). ``docs_html_from_spec`` renders the
whole page on the server, once at start-up; ``docs_html`` is a small page that
fetches the spec and renders it with an inline script, for callers that hold
only the spec's URL.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_VERBS = ("get", "put", "post", "delete", "patch", "options", "head", "trace")
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d2330;background:#fafbfc}
header{background:#1d2330;color:#fff;padding:1em 2em}header a{color:#9cf}
main{max-width:1100px;margin:auto;padding:1em 2em}nav a{margin-right:1em}
section.tag{margin-top:2em}details.op{background:#fff;border:1px solid #dde;
border-radius:6px;margin:.5em 0;padding:.4em .8em}summary{cursor:pointer}
.verb{display:inline-block;min-width:4.5em;font-weight:700;font-family:monospace}
.get{color:#07c}.post{color:#090}.patch{color:#b60}.put{color:#a0a}.delete{color:#c00}
code,pre{font-family:ui-monospace,monospace;font-size:13px}
pre{background:#f3f4f7;padding:.6em;overflow:auto;border-radius:4px}
table{border-collapse:collapse}td,th{border-bottom:1px solid #eee;padding:.2em .6em;
text-align:left;vertical-align:top}.lock{font-size:12px;padding:0 .4em;border-radius:3px}
.public{background:#dfd}.auth{background:#fed}.desc{white-space:pre-line}
"""


def docs_html_from_spec(spec: dict[str, Any], spec_url: str = "/openapi.json") -> str:
    """The full page for ``spec``: operations grouped by tag, then the schemas."""
    info = spec.get("info", {})
    title = escape(str(info.get("title", "API")))
    tags = spec.get("tags", [])
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {t["name"]: [] for t in tags}
    for path, item in spec.get("paths", {}).items():
        for verb in _VERBS:
            if verb in item:
                tag = (item[verb].get("tags") or ["default"])[0]
                by_tag.setdefault(tag, []).append((verb, path, item[verb]))
    descriptions = {t["name"]: t.get("description", "") for t in tags}
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{title}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{title} <small>{escape(str(info.get('version', '')))}</small></h1>",
        f'<p>OpenAPI 3.1: <a href="{escape(spec_url)}">{escape(spec_url)}</a></p></header>',
        "<main>",
        f"<div class=desc>{escape(str(info.get('description', '')))}</div>",
        "<nav><h2>Services</h2>",
        *(f'<a href="#tag-{escape(t)}">{escape(t)}</a>' for t in by_tag),
        '<a href="#schemas">Schemas</a></nav>',
    ]
    for tag, operations in by_tag.items():
        out.append(f'<section class=tag id="tag-{escape(tag)}"><h2>{escape(tag)}</h2>')
        out.append(f"<div class=desc>{escape(descriptions.get(tag, ''))}</div>")
        out.extend(_operation(verb, path, op) for verb, path, op in operations)
        out.append("</section>")
    out.append("<section id=schemas><h2>Schemas</h2>")
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        out.append(
            f'<details class=op id="schema-{escape(name)}"><summary><code>{escape(name)}'
            f"</code></summary><pre>{escape(json.dumps(schema, indent=2))}</pre></details>"
        )
    out.append("</section></main></body></html>")
    return "\n".join(out)


def _operation(verb: str, path: str, op: dict[str, Any]) -> str:
    public = op.get("security") == []
    lock = (
        "<span class='lock public'>public</span>"
        if public
        else "<span class='lock auth'>bearer token</span>"
    )
    scopes = op.get("x-required-scopes")
    if scopes:
        lock += f" <span class='lock auth'>scopes: {escape(', '.join(scopes))}</span>"
    parts = [
        f'<details class=op id="op-{escape(op.get("operationId", ""))}"><summary>'
        f"<span class='verb {verb}'>{verb.upper()}</span> <code>{escape(path)}</code> "
        f"— {escape(op.get('summary', ''))} {lock}</summary>",
        f"<p><code>{escape(op.get('operationId', ''))}</code> · gRPC "
        f"<code>{escape(op.get('x-grpc-method', ''))}</code> · template "
        f"<code>{escape(op.get('x-path-template', ''))}</code></p>",
        f"<div class=desc>{escape(op.get('description', ''))}</div>",
    ]
    params = op.get("parameters", [])
    if params:
        parts.append(
            "<h4>Parameters</h4><table><tr><th>Name</th><th>In</th><th>Schema</th>"
            "<th>Description</th></tr>"
        )
        for p in params:
            required = " <b>required</b>" if p.get("required") else ""
            parts.append(
                f"<tr><td><code>{escape(p['name'])}</code>{required}</td><td>{p['in']}</td>"
                f"<td><code>{escape(_short(p.get('schema', {})))}</code></td>"
                f"<td class=desc>{escape(p.get('description', ''))}</td></tr>"
            )
        parts.append("</table>")
    body = op.get("requestBody")
    if body:
        for media, content in body.get("content", {}).items():
            parts.append(f"<h4>Request body <code>{escape(media)}</code></h4>")
            parts.append(f"<pre>{escape(json.dumps(content.get('schema'), indent=2))}</pre>")
    for status, response in op.get("responses", {}).items():
        if "$ref" in response:
            parts.append(f"<h4>Response {escape(status)}</h4><p>google.rpc.Status error</p>")
            continue
        parts.append(f"<h4>Response {escape(status)}</h4>")
        parts.append(f"<p class=desc>{escape(response.get('description', ''))}</p>")
        for media, content in response.get("content", {}).items():
            parts.append(f"<p><code>{escape(media)}</code></p>")
            parts.append(f"<pre>{escape(json.dumps(content.get('schema'), indent=2))}</pre>")
    parts.append("</details>")
    return "\n".join(parts)


def _short(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if schema.get("type") == "array":
        return f"array of {_short(schema.get('items', {}))}"
    kind = str(schema.get("type", "any"))
    return f"{kind} ({schema['format']})" if "format" in schema else kind


def docs_html(spec_url: str = "/openapi.json") -> str:
    """A page that fetches ``spec_url`` and lists its operations with an inline script."""
    # Escape "<" so that the URL cannot close the script element.
    return _CLIENT_PAGE.replace("__SPEC_URL__", json.dumps(spec_url).replace("<", "\\u003c"))


_CLIENT_PAGE = (
    """<!doctype html><html lang=en><head><meta charset=utf-8><title>API</title>
<style>"""
    + _STYLE
    + """</style></head><body><header><h1 id=title>API</h1></header><main id=main>
Loading…</main><script>
const url = __SPEC_URL__;
const esc = s => String(s ?? "").replace(/[&<>"']/g,
  c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
fetch(url).then(r => r.json()).then(spec => {
  document.getElementById("title").textContent = spec.info.title + " " + spec.info.version;
  const groups = {};
  for (const [path, item] of Object.entries(spec.paths))
    for (const [verb, op] of Object.entries(item))
      (groups[(op.tags || ["default"])[0]] ??= []).push([verb, path, op]);
  const tagDesc = Object.fromEntries((spec.tags || []).map(t => [t.name, t.description]));
  let html = "";
  for (const [tag, ops] of Object.entries(groups)) {
    html += `<section class=tag><h2>${esc(tag)}</h2><div class=desc>${esc(tagDesc[tag])}</div>`;
    for (const [verb, path, op] of ops) {
      const lock = op.security && op.security.length === 0 ? "public" : "bearer token";
      html += `<details class=op><summary><span class="verb ${verb}">${verb.toUpperCase()}
        </span> <code>${esc(path)}</code> — ${esc(op.summary)} <span class=lock>${lock}</span>
        </summary><div class=desc>${esc(op.description)}</div>
        <pre>${esc(JSON.stringify({parameters: op.parameters, requestBody: op.requestBody,
          responses: op.responses}, null, 2))}</pre></details>`;
    }
    html += "</section>";
  }
  html += "<h2>Schemas</h2><pre>" +
    esc(JSON.stringify(spec.components.schemas, null, 2)) + "</pre>";
  document.getElementById("main").innerHTML = html;
}).catch(e => { document.getElementById("main").textContent = "Cannot load " + url + ": " + e; });
</script></body></html>"""
)

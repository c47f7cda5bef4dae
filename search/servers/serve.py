"""A read-only HTTP server for a folder of reports (``autosculpt serve``).

Only GET and HEAD are answered (other methods get 501), and only files inside the
folder are served: the request path is decoded once, refused if it holds a NUL byte,
a backslash or a segment starting with a dot (``..``, hidden files), then resolved
with every symlink followed and refused unless the result is inside the folder.
Anything refused or missing is a plain 404, so a probe learns nothing about what lies
outside. A folder answers with a page listing what it holds.
"""

from __future__ import annotations

import html
import mimetypes
import os
import shutil
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote

__all__ = ["ReportServer", "resolve"]


def resolve(root: str, request_path: str) -> str | None:
    """The real path of what ``request_path`` names inside ``root``, or None if it must not be served.

    ``root`` must itself be a real path (no symlinks, absolute). The result is ``root``
    or lies under it; it may not exist. The query string and fragment are ignored.
    Percent-escapes are decoded exactly once, so ``%252e%252e`` names a file called
    ``%2e%2e`` inside ``root``, never the parent folder.
    """
    path = request_path.split("?", 1)[0].split("#", 1)[0]
    if not path.startswith("/"):
        return None
    try:
        decoded = unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\0" in decoded or "\\" in decoded:
        return None
    parts = [part for part in decoded.split("/") if part]
    if any(part.startswith(".") for part in parts):
        return None
    real = os.path.realpath(os.path.join(root, *parts))
    return real if real == root or real.startswith(os.path.join(root, "")) else None


class ReportServer(ThreadingHTTPServer):
    """Serves the folder ``root`` read-only at ``address`` (host, port); port 0 picks a free one."""

    daemon_threads = True

    def __init__(self, root: str | os.PathLike, address: tuple[str, int]):
        self.root = os.path.realpath(root)
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: ReportServer
    server_version = "autosculpt-serve"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def _answer(self, with_body: bool) -> None:
        real = resolve(self.server.root, self.path)
        if real is not None and os.path.isdir(real):
            body = _listing(self.server.root, real).encode()
            self._headers("text/html; charset=utf-8", len(body))
            if with_body:
                self.wfile.write(body)
        elif real is not None and os.path.isfile(real):
            with open(real, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                self._headers(mimetypes.guess_type(real)[0] or "application/octet-stream", size)
                if with_body:
                    shutil.copyfileobj(file, self.wfile)
        else:
            self.send_error(HTTPStatus.NOT_FOUND)

    def _headers(self, content_type: str, length: int) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-cache")  # reports of a running study change
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()


def _listing(root: str, folder: str) -> str:
    """An HTML page linking the sub-folders and files of ``folder`` that would be served."""
    base = "/" + "".join(part + "/" for part in os.path.relpath(folder, root).split(os.sep) if part != ".")
    items = []
    for name in sorted(os.listdir(folder)):
        target = resolve(root, base + quote(name))
        if target is None or not os.path.exists(target):
            continue
        shown = name + "/" if os.path.isdir(target) else name
        items.append(f'<li><a href="{html.escape(quote(base + shown))}">{html.escape(shown)}</a></li>')
    title = html.escape(base)
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head>"
            f"<body><h1>{title}</h1><ul>{''.join(items) or '<li>(empty)</li>'}</ul></body></html>")

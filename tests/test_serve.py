"""``autosculpt serve`` as a user runs it: a subprocess on a free loopback port, probed with raw requests.

Requests go through ``http.client`` (which sends the path as given, without normalising
it) or a bare socket where even ``http.client`` refuses to send the bytes. A secret file
lies next to the served folder, and symlinks inside the folder point at it: it must
never come back, whatever the path.
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "TOP-SECRET-PASSWORD-LIST"
REPORT = "<!doctype html><title>report</title>Dice 0.91"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(port, tmp folder): ``autosculpt serve tmp/exports --port 0`` running, and what it serves."""
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "secret.txt").write_text(SECRET)
    (tmp / "outside").mkdir()
    (tmp / "outside" / "secret.txt").write_text(SECRET)
    exports = tmp / "exports"
    (exports / "study-a").mkdir(parents=True)
    (exports / "study-a" / "report.html").write_text(REPORT)
    (exports / "study-a" / "model.json").write_text('{"dice": 0.91}')
    (exports / ".env").write_text(SECRET)
    (exports / "link.txt").symlink_to(tmp / "secret.txt")
    (exports / "linkdir").symlink_to(tmp / "outside")
    (exports / "inside-link.html").symlink_to(exports / "study-a" / "report.html")
    command = [str(Path(sys.executable).with_name("autosculpt")), "serve", str(exports), "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        first_line = server.stdout.readline()
        assert "http://127.0.0.1:" in first_line, first_line
        yield int(first_line.split("http://127.0.0.1:")[1].split("/")[0]), tmp
    finally:
        server.terminate()
        server.wait(timeout=10)


def request(port: int, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def raw_request(port: int, request_line: bytes) -> bytes:
    """Send ``request_line`` byte for byte and return the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_serves_a_report_and_listings(served):
    port, _ = served
    status, headers, body = request(port, "/study-a/report.html")
    assert (status, body.decode()) == (200, REPORT)
    assert headers["Content-Type"].startswith("text/html")

    status, headers, body = request(port, "/study-a/report.html", method="HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(REPORT)))

    status, _, body = request(port, "/study-a/report.html?refresh=1")
    assert status == 200 and body.decode() == REPORT
    assert request(port, "/inside-link.html")[0] == 200  # a symlink within the folder is fine

    status, _, body = request(port, "/")
    listing = body.decode()
    assert status == 200 and 'href="/study-a/"' in listing and 'href="/inside-link.html"' in listing
    assert "link.txt" not in listing and "linkdir" not in listing and ".env" not in listing
    status, _, body = request(port, "/study-a/")
    assert status == 200 and 'href="/study-a/report.html"' in body.decode()


def test_refuses_other_methods(served):
    port, _ = served
    for method in ("POST", "PUT", "DELETE"):
        status, _, body = request(port, "/study-a/report.html", method=method)
        assert status == 501, method


@pytest.mark.parametrize("path", [
    "/../secret.txt",
    "/study-a/../../secret.txt",
    "/..%2fsecret.txt",
    "/%2e%2e/secret.txt",
    "/%2e%2e%2fsecret.txt",
    "/study-a/%2e%2e/%2e%2e/secret.txt",
    "/%252e%252e/secret.txt",
    "/%252e%252e%252fsecret.txt",
    "/..\\secret.txt",
    "/..%5csecret.txt",
    "/%5c..%5csecret.txt",
    "/.%2e/secret.txt",
    "/..;/secret.txt",
    "/../secret.txt%00.html",
    "/%00/../secret.txt",
    "/%ff/../secret.txt",
    "/link.txt",
    "/linkdir/secret.txt",
    "/linkdir/",
    "/.env",
    "//{secret}",
    "/{secret}",
    "/%2f{secret_escaped}",
    "{secret}",
    "http://127.0.0.1/../secret.txt",
])
def test_traversal_never_reaches_outside(served, path):
    port, tmp = served
    secret = str(tmp / "secret.txt")
    path = path.format(secret=secret, secret_escaped=secret.replace("/", "%2f"))
    status, _, body = request(port, path)
    assert status in (400, 403, 404), (path, status)
    assert SECRET.encode() not in body


@pytest.mark.parametrize("raw_path", [b"/../secret.txt\x00", b"/\x00/../secret.txt", b"/..\\..\\secret.txt"])
def test_raw_bytes_never_reach_outside(served, raw_path):
    port, _ = served
    answer = raw_request(port, b"GET " + raw_path + b" HTTP/1.1")
    assert answer.split(b" ", 2)[1] in (b"400", b"403", b"404"), answer[:80]
    assert SECRET.encode() not in answer


def test_bad_folder_and_busy_port_are_one_line_errors(served, tmp_path):
    port, _ = served
    autosculpt = str(Path(sys.executable).with_name("autosculpt"))
    missing = subprocess.run([autosculpt, "serve", str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith("error: ")
    busy = subprocess.run([autosculpt, "serve", str(tmp_path), "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert busy.returncode == 2 and "choose another --port" in busy.stderr

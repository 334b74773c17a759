#!/usr/bin/env python3
"""Sends exactly N FastCGI GET requests, one after another on one keep-alive
connection (or, with --fresh, each on a new connection without KEEP_CONN,
waiting for the server's close, as nginx does without upstream keepalive),
and checks each answers 200: a fixed request count for instruction
counting (bench/callgrind.sh), where the load generator runs for a duration.

With --debian the params are the ones nginx sends for wrk's `GET /` with
Debian's `include fastcgi_params;` and the bench's SCRIPT_FILENAME (the
bench's configuration (c)) instead of the package snippet's short list.

usage: fcgi_count.py [--fresh] [--debian] SOCKET_PATH N [URI]
"""
import socket
import struct
import sys


def record(kind, rid, content=b""):
    return struct.pack(">BBHHBB", 1, kind, rid, len(content), 0, 0) + content


def pair(k, v):
    def n(x):
        return bytes([len(x)]) if len(x) < 128 else struct.pack(">I", len(x) | 0x80000000)
    return n(k) + n(v) + k + v


def debian_params(uri):
    """What nginx 1.22 sends with Debian 12's fastcgi_params, in its order."""
    path, _, query = uri.partition("?")
    return [
        ("QUERY_STRING", query), ("REQUEST_METHOD", "GET"), ("CONTENT_TYPE", ""),
        ("CONTENT_LENGTH", ""), ("SCRIPT_NAME", path), ("REQUEST_URI", uri),
        ("DOCUMENT_URI", path), ("DOCUMENT_ROOT", "/usr/share/nginx/html"),
        ("SERVER_PROTOCOL", "HTTP/1.1"), ("REQUEST_SCHEME", "http"),
        ("GATEWAY_INTERFACE", "CGI/1.1"), ("SERVER_SOFTWARE", "nginx/1.22.1"),
        ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", "40000"), ("REMOTE_USER", ""),
        ("SERVER_ADDR", "127.0.0.1"), ("SERVER_PORT", "8080"), ("SERVER_NAME", "localhost"),
        ("REDIRECT_STATUS", "200"), ("HTTP_HOST", "localhost"),
        ("SCRIPT_FILENAME", "/var/www/index.php"),
    ]


def short_params(uri):
    """The short list: about what the package's nginx snippet sends."""
    path, _, query = uri.partition("?")
    return [
        ("REQUEST_METHOD", "GET"), ("REQUEST_URI", uri), ("SCRIPT_NAME", path),
        ("QUERY_STRING", query), ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "localhost"), ("SERVER_PORT", "80"),
        ("REMOTE_ADDR", "127.0.0.1"), ("REMOTE_PORT", "40000"),
        ("HTTP_HOST", "localhost"), ("HTTP_USER_AGENT", "fcgi_count"),
    ]


def request(uri, keep=True, debian=False):
    pairs = debian_params(uri) if debian else short_params(uri)
    params = b"".join(pair(k.encode(), v.encode()) for k, v in pairs)
    begin = struct.pack(">HB5x", 1, 1 if keep else 0)  # RESPONDER, KEEP_CONN or not
    return record(1, 1, begin) + record(4, 1, params) + record(4, 1) + record(5, 1)


def connect(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(path)
    return s


def answer(s, buf, i):
    """Reads one response up to END_REQUEST; returns (stdout, rest of buf)."""
    out = b""
    while True:
        while len(buf) < 8 or len(buf) < 8 + struct.unpack(">H", buf[4:6])[0] + buf[6]:
            chunk = s.recv(65536)
            if not chunk:
                sys.exit(f"connection closed at request {i}")
            buf += chunk
        _, kind, _, clen, plen, _ = struct.unpack(">BBHHBB", buf[:8])
        content, buf = buf[8:8 + clen], buf[8 + clen + plen:]
        if kind == 6:
            out += content
        elif kind == 3:
            return out, buf


def main():
    args = sys.argv[1:]
    fresh = "--fresh" in args
    debian = "--debian" in args
    args = [a for a in args if a not in ("--fresh", "--debian")]
    path, n = args[0], int(args[1])
    uri = args[2] if len(args) > 2 else "/"
    req, buf = request(uri, keep=not fresh, debian=debian), b""
    s = None if fresh else connect(path)
    for i in range(n):
        if fresh:
            s, buf = connect(path), b""
        s.sendall(req)
        out, buf = answer(s, buf, i)
        if fresh:
            # without KEEP_CONN the server closes after END_REQUEST
            if buf or s.recv(1):
                sys.exit(f"request {i}: data after END_REQUEST without KEEP_CONN")
            s.close()
        if not out.startswith(b"Status: 200") and b"Status:" in out.split(b"\r\n\r\n")[0]:
            sys.exit(f"request {i}: {out[:80]!r}")
    print(n)


main()

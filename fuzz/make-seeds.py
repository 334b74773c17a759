#!/usr/bin/env python3
"""Writes protocol edge cases as fuzz seeds (fuzz/corpus/*/edge-*.bin):
multiplexed interleaving, GET_VALUES mid-stream, unknown types, other roles,
aborts, straddling name-value pairs, odd padding, 4-byte lengths."""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))

def rec(kind, rid, content=b"", pad=None):
    if pad is None:
        pad = (8 - len(content) % 8) % 8
    return struct.pack(">BBHHBB", 1, kind, rid, len(content), pad, 0) + content + b"\0" * pad

def ln(n):
    return bytes([n]) if n < 128 else struct.pack(">I", n | 0x80000000)

def pair(k, v):
    return ln(len(k)) + ln(len(v)) + k + v

def params(method=b"GET", uri=b"/", body_len=0, extra=b""):
    p = pair(b"REQUEST_METHOD", method) + pair(b"REQUEST_URI", uri) + pair(b"SCRIPT_NAME", uri.split(b"?")[0])
    p += pair(b"CONTENT_LENGTH", str(body_len).encode() if body_len else b"")
    p += pair(b"HTTP_HOST", b"localhost") + pair(b"REMOTE_ADDR", b"127.0.0.1") + extra
    return p

def begin(rid, role=1, keep=1):
    return rec(1, rid, struct.pack(">HB5x", role, keep))

def request(rid, method=b"GET", uri=b"/", body=b"", keep=1):
    out = begin(rid, keep=keep) + rec(4, rid, params(method, uri, len(body))) + rec(4, rid)
    for i in range(0, len(body), 1000):
        out += rec(5, rid, body[i:i + 1000])
    return out + rec(5, rid)

seeds = {}
seeds["get"] = request(1)
seeds["echo"] = request(1, b"POST", b"/echo", b"x" * 3000)
seeds["stream"] = request(1, b"POST", b"/stream", b"y" * 5000)
seeds["keepalive"] = request(1, keep=1) + request(1, uri=b"/echo?x", method=b"POST", body=b"abc") + request(1, keep=0)
a, b = params(b"POST", b"/echo", 6), params(b"GET", b"/x")
seeds["multiplexed"] = (begin(1) + begin(2) + rec(4, 2, b) + rec(4, 1, a[:10]) + rec(4, 1, a[10:]) + rec(4, 2) + rec(5, 2)
                        + rec(4, 1) + rec(5, 1, b"abc") + rec(9, 0, pair(b"FCGI_MPXS_CONNS", b"") + pair(b"FCGI_MAX_REQS", b""))
                        + rec(5, 1, b"def") + rec(5, 1))
seeds["get-values"] = rec(9, 0, pair(b"FCGI_MAX_CONNS", b"") + pair(b"FCGI_MAX_REQS", b"") + pair(b"FCGI_MPXS_CONNS", b"") + pair(b"NOPE", b""))
seeds["unknown-type"] = rec(42, 0, b"abcdefgh") + request(1)
seeds["roles"] = begin(1, role=2) + begin(2, role=3, keep=1) + request(3)
seeds["abort"] = begin(1) + rec(4, 1, params(b"POST", b"/echo", 100)) + rec(4, 1) + rec(5, 1, b"z" * 10) + rec(2, 1) + request(1)
seeds["abort-early"] = begin(1) + rec(4, 1, b"\x0e") + rec(2, 1) + request(2)
p = params(extra=pair(b"HTTP_X_LONG", b"v" * 300) + pair(b"N" * 200, b"w"))
seeds["straddle"] = begin(1) + rec(4, 1, p[:1]) + rec(4, 1, p[1:7]) + rec(4, 1, p[7:400]) + rec(4, 1, p[400:]) + rec(4, 1) + rec(5, 1)
seeds["padding"] = begin(1) + rec(4, 1, params(), pad=255) + rec(4, 1, pad=17) + rec(5, 1, pad=3)
seeds["panic"] = request(1, uri=b"/panic") + request(2)
seeds["bad-version"] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
seeds["too-big-body"] = request(1, b"POST", b"/echo", b"q" * 70000)
seeds["dup-begin"] = begin(1) + begin(1)

for name, data in seeds.items():
    with open(os.path.join(here, "corpus", "connection", f"edge-{name}.bin"), "wb") as f:
        f.write(data)
    with open(os.path.join(here, "corpus", "record_decoder", f"edge-{name}.bin"), "wb") as f:
        f.write(data)
for name, data in {"std": params(), "long": p, "trunc": p[:-3], "huge-len": b"\xff\xff\xff\xff\x01a"}.items():
    with open(os.path.join(here, "corpus", "params_parser", f"edge-{name}.bin"), "wb") as f:
        f.write(data)
print(f"wrote {len(seeds)} connection seeds")

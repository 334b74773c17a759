#!/usr/bin/env python3
"""Captures what a real nginx sends over FastCGI, as fuzz seeds.

Runs nginx (own prefix, temp port) with `fastcgi_pass` to a unix socket held
by this script, which records every connection's bytes and answers each
request minimally (so nginx keeps going, keep-alive included). Then fires a
few requests with curl: GET, POST with a body, repeated headers, several
requests on one kept-alive upstream connection. Each connection's bytes go
to fuzz/corpus/connection/nginx-<n>.bin.

Usage: fuzz/capture-nginx.py   (needs nginx and curl)
"""
import os, socket, struct, subprocess, sys, tempfile, threading, time

here = os.path.dirname(os.path.abspath(__file__))
out_dir = os.path.join(here, "corpus", "connection")
os.makedirs(out_dir, exist_ok=True)
tmp = tempfile.mkdtemp(prefix="mf-capture-")
sock_path = os.path.join(tmp, "fcgi.sock")

def rec(kind, rid, content=b""):
    pad = (8 - len(content) % 8) % 8
    return struct.pack(">BBHHBB", 1, kind, rid, len(content), pad, 0) + content + b"\0" * pad

captures = []

def serve_conn(c):
    data = bytearray()
    buf = bytearray()
    c.settimeout(2.0)
    try:
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            data += chunk
            buf += chunk
            while len(buf) >= 8:
                ver, kind, rid, clen, plen, _ = struct.unpack(">BBHHBB", buf[:8])
                total = 8 + clen + plen
                if len(buf) < total:
                    break
                del buf[:total]
                if kind == 5 and clen == 0:  # end of STDIN: answer
                    body = b"Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nok\n"
                    c.sendall(rec(6, rid, body) + rec(6, rid) + rec(3, rid, struct.pack(">IB3x", 0, 0)))
    except (socket.timeout, OSError):
        pass
    finally:
        c.close()
        captures.append(bytes(data))

def accept_loop(srv):
    while True:
        try:
            c, _ = srv.accept()
        except OSError:
            return
        threading.Thread(target=serve_conn, args=(c,), daemon=True).start()

srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(sock_path)
os.chmod(sock_path, 0o777)
srv.listen(16)
threading.Thread(target=accept_loop, args=(srv,), daemon=True).start()

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
os.makedirs(os.path.join(tmp, "logs"), exist_ok=True)
conf = f"""
daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/logs/error.log;
pid {tmp}/nginx.pid;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/cbt;
    fastcgi_temp_path {tmp}/ft;
    proxy_temp_path {tmp}/pt;
    uwsgi_temp_path {tmp}/ut;
    scgi_temp_path {tmp}/st;
    client_max_body_size 16m;
    upstream app {{ server unix:{sock_path}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        location /ka/ {{
            include /etc/nginx/fastcgi_params;
            fastcgi_keep_conn on;
            fastcgi_pass app;
        }}
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_pass unix:{sock_path};
        }}
    }}
}}
"""
with open(os.path.join(tmp, "nginx.conf"), "w") as f:
    f.write(conf)
nginx = subprocess.Popen(["nginx", "-p", tmp, "-c", os.path.join(tmp, "nginx.conf")])
time.sleep(0.5)
base = f"http://127.0.0.1:{port}"
def curl(*args):
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "5", *args], check=False)
try:
    curl(base + "/index?x=1&y=%20z")
    curl("-H", "X-Rep: a", "-H", "X-Rep: b", "-H", "Cookie: a=1", "-H", "Cookie: b=2", base + "/headers")
    curl("-X", "POST", "--data-binary", "hello world", "-H", "Content-Type: text/plain", base + "/echo")
    big = os.path.join(tmp, "big")
    with open(big, "wb") as f:
        f.write(bytes(range(256)) * 300)
    curl("-X", "POST", "--data-binary", "@" + big, base + "/echo")
    # Three requests on one kept-alive upstream connection.
    curl(base + "/ka/one", base + "/ka/two?q=3", base + "/ka/three")
    time.sleep(2.5)
finally:
    nginx.terminate()
    nginx.wait(timeout=5)
    srv.close()
time.sleep(0.5)
n = 0
for data in captures:
    if not data:
        continue
    n += 1
    with open(os.path.join(out_dir, f"nginx-{n}.bin"), "wb") as f:
        f.write(data)
print(f"captured {n} connections into {out_dir}")
sys.exit(0 if n >= 5 else 1)

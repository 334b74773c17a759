#!/usr/bin/python3
"""The myflask benchmark driver (run it through bench/run.sh, which installs
and builds everything first).

One invocation, peers one after another: for each peer it starts the server
(and an nginx of its own in front of it), checks that GET / and POST /echo
answer correctly (GET / only for the FastCGI floor, which has no /echo),
samples idle RSS, warms up, runs wrk at each point while sampling the RSS of
the server's process tree, then stops everything. Then
cold starts (loadgen coldstart) and a direct FastCGI run with no nginx
(loadgen run). Writes bench/results/<date>.md/.csv and latest.md.

Environment:
  BENCH_DURATION  seconds per measured point (default 5)
  BENCH_WARMUP    seconds of warm-up per peer (default 2)
  BENCH_QUICK=1   smoke: 1 s points, GET c=16 + echo 1 MiB per peer, one cold
                  start, results only under bench/results/raw/
  BENCH_PEERS     comma-separated subset of peer names (default: all)
  BENCH_BASELINE  a git revision: the myflask peer built on the library at
                  that revision (bench/run.sh builds it) runs head to head
                  beside myflask as myflask-base

bench.py --report results/raw/<date> rewrites the reports of an earlier run
from its results.json (no measuring). bench.py --dry-run prints what a run
would do, peer by peer (server command, points, loadgen arguments), and
writes every peer's nginx.conf to a temporary directory; it starts nothing.
"""

import csv
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
BUILD = os.path.join(BENCH, "build")
RESULTS = os.path.join(BENCH, "results")
RAW = os.path.join(RESULTS, "raw")

# The benchmark app (GET / -> "Hello, World!\n", POST /echo) on the myflask
# library with the full `myflask serve` command line (bench/peers/myflask).
MYFLASK = os.path.join(BUILD, "target", "release", "myflask-hello")
LOADGEN = os.path.join(BUILD, "target", "release", "myflask-loadgen")
TOKIO_FCGI = os.path.join(BUILD, "target", "release", "bench-tokio-fastcgi")
HYPER = os.path.join(BUILD, "target", "release", "bench-hyper")
# The FastCGI floor: myflask's GET / reply, canned, nothing parsed but record
# headers (bench/peers/floor). Not an app server: nginx's fastcgi_pass path
# with no server work behind it.
FLOOR = os.path.join(BUILD, "target", "release", "bench-fastcgi-floor")
GO = os.path.join(BUILD, "bin", "bench-go")
# The nginx location snippet the myflask package installs: the myflask peers
# (and the floor, which mirrors myflask) get its fastcgi_param lines, as an
# operator who installs the package does; the other FastCGI peers get
# Debian's fastcgi_params, as their docs say. The "Debian fastcgi_params"
# myflask peer shows what the difference is worth.
SNIPPET = os.path.join(REPO, "packaging", "debian", "nginx", "app.conf")
UPSTREAM_SNIPPET = os.path.join(REPO, "packaging", "debian", "nginx", "app-upstream.conf")
VENV_PY = os.path.join(BUILD, "venv", "bin", "python")
PHP_FPM = shutil.which("php-fpm8.2") or "/usr/sbin/php-fpm8.2"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
ACTIVATE = shutil.which("systemd-socket-activate") or "/usr/bin/systemd-socket-activate"
ECHO_MODULE = "/usr/lib/nginx/modules/ngx_http_echo_module.so"
LUA = os.path.join(BENCH, "wrk", "bench.lua")

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
DURATION = float(os.environ.get("BENCH_DURATION", "1" if QUICK else "5"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "0.5" if QUICK else "2"))
WRK_THREADS = 2
NGINX_WORKERS = 1
KIB, MIB = 1024, 1024 * 1024

if QUICK:
    GET_CONNS = [16]
    ECHO_BODIES = [MIB]
    COLD_REPEAT = 1
    DIRECT_CONNS = [16]
else:
    GET_CONNS = [16, 64, 256]
    ECHO_BODIES = [16 * KIB, 256 * KIB, MIB, 8 * MIB]
    COLD_REPEAT = 5
    DIRECT_CONNS = [16, 64]
ECHO_CONNS = 16
MUX = (4, 16)  # connections x requests in flight per connection

# Head to head: the peers the targets compare, all started at once and
# measured in turn, several rounds, the order rotating each round. A ratio
# is then taken between figures measured seconds apart, and the median of
# the rounds' ratios is what the targets are judged on: one pass per peer,
# minutes apart, moved ±10% on this (virtual, shared) machine.
# The FastCGI floor rides along in the GET rounds as context (the same
# fastcgi_pass path with no server work behind it), never as a target; it
# has no /echo, so the echo rounds stay myflask against hyper.
# The ceiling too: its single pass moved from 129k to 148k req/s between two
# runs, so the ≥ 0.40× ceiling target is judged on rounds like the others.
# BENCH_H2H=fresh runs only the rounds of the configurations most sites
# run (issue 16), each myflask peer against hyper configured the same way:
# (a) no upstream keepalive, a connection per request; (b) the package's
# upstream snippet as shipped (its keepalive); (c) Debian's fastcgi_params
# with keepalive. FRESH_PAIRS names the pairs the report compares.
FRESH = os.environ.get("BENCH_H2H", "") == "fresh"
FRESH_PAIRS = [("myflask-nokeep", "hyper-nokeep", "(a) connection per request"),
               ("myflask-shipped", "hyper-shipped", "(b) the shipped snippets"),
               ("myflask-fcgiparams", "hyper", "(c) Debian fastcgi_params, keepalive 512")]
# The management endpoints' peers ride in the GET rounds: their ×mf is what
# serving /metrics (and the status page and ping) costs the same build.
# BENCH_BASELINE adds myflask-base to the GET and echo rounds (not to the
# fresh ones, which have no plain myflask peer to hold it against).
BASE = "myflask-base"
ENDPOINT_PEERS = ["myflask-metrics", "myflask-mgmt"]
if FRESH:
    H2H_PEERS = [n for pair in FRESH_PAIRS for n in pair[:2]]
    H2H_ECHO_PEERS = []
else:
    H2H_PEERS = ["myflask", "hyper", "tokio-fastcgi", "fastcgi-floor", "myflask-fcgiparams", "ceiling",
                 *ENDPOINT_PEERS, BASE]
    H2H_ECHO_PEERS = ["myflask", "hyper", BASE]
H2H_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if QUICK else "5"))
H2H_CONNS = [16] if QUICK else ([16, 64, 256] if FRESH else [16, 64])

# myflask runs with its access log off (nginx runs with access_log off too).
MYFLASK_LOG = ["--log-target", "stderr", "--log-level", "info,myflask::access=off"]

PHP_SCRIPT = os.path.join(BENCH, "peers", "php", "index.php")

# The management endpoints as an operator turns them on (off by default for
# a hosted app such as the bench's): /metrics alone, then all three.
METRICS_ON = ("--metrics-path", "/metrics")
ENDPOINTS_ON = (*METRICS_ON, "--status-path", "/status", "--ping-path", "/ping")


def baseline():
    """BENCH_BASELINE as {rev, sha, bin, subject}, or None when unset: the
    revision as given, its 12-digit sha, and the bench peer bench/run.sh
    built on the library at that revision (build/base-<sha>/)."""
    rev = os.environ.get("BENCH_BASELINE", "")
    if not rev:
        return None
    p = subprocess.run(["git", "-C", REPO, "rev-parse", "--verify", "--quiet", "--short=12", rev + "^{commit}"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench.py: BENCH_BASELINE={rev} is not a commit of {REPO}")
    sha = p.stdout.strip()
    subject = subprocess.run(["git", "-C", REPO, "log", "-1", "--format=%s", sha],
                             capture_output=True, text=True).stdout.strip()
    return dict(rev=rev, sha=sha, subject=subject,
                bin=os.path.join(BUILD, f"base-{sha}", "target", "release", "myflask-hello"))


BASELINE = None if FRESH else baseline()


@dataclass(frozen=True)
class PeerSpec:
    """One peer: the server behind nginx, how it starts, how nginx talks to
    it, and which points it runs."""
    name: str
    label: str
    # argv of the server listening on unix socket `sock`, given its Peer
    # (None: nginx alone, the ceiling)
    command: Optional[Callable[["Peer", str], List[str]]] = None
    proto: Optional[str] = None  # "fcgi" (fastcgi_pass) or "http" (proxy_pass)
    keep: bool = False  # upstream keepalive, fastcgi_keep_conn / HTTP/1.1 to the upstream
    keepalive: int = 512  # the upstream's keepalive count when keep is on
    snippet: bool = False  # fastcgi_param lines of the package's snippet instead of Debian's fastcgi_params
    nginx_extra: str = ""  # more lines in nginx's location (flup routes on PATH_INFO)
    fcgi_params: Tuple[str, ...] = ()  # NAME=VALUE params loadgen sends when it talks to the peer directly
    echo: bool = True  # serves POST /echo (the floor answers everything with its canned GET reply)
    get_only: bool = False  # GET points only: no echo points
    cold: bool = True  # cold start measured
    direct: Optional[str] = None  # loadgen run without nginx: "mux" (keep-alive + multiplexed), "keep", "nokeep"
    h2h_only: bool = False  # measured in the head-to-head rounds only: no pass of its own
    # (path, status, text in the body) of GETs the correctness check sends
    # through nginx besides GET / and POST /echo
    probes: Tuple[Tuple[str, int, str], ...] = ()


def myflask_argv(binary, sock, *extra):
    """A myflask peer binary serving FastCGI on `sock`, with `extra` flags."""
    return [binary, "serve", "--listen", "unix:" + sock, "--socket-mode", "0666", *MYFLASK_LOG, *extra]


def myflask_cmd(peer, sock):
    """myflask serving FastCGI on `sock`."""
    return myflask_argv(MYFLASK, sock)


def myflask_http_cmd(peer, sock):
    """myflask serving HTTP on `sock` (and FastCGI on a socket nobody uses)."""
    return [MYFLASK, "serve", "--listen", "unix:" + os.path.join(peer.dir, "fcgi.sock"),
            "--http", "unix:" + sock, "--socket-mode", "0666", *MYFLASK_LOG]


def php_cmd(peer, sock):
    """php-fpm in the foreground with a config of its own for `sock`."""
    return [PHP_FPM, "-F", "-R", "-y", peer.php_conf(sock), "-p", peer.dir]


def shipped_keepalive():
    """The `keepalive N;` of the package's upstream snippet (UPSTREAM_SNIPPET)."""
    with open(UPSTREAM_SNIPPET) as f:
        found = re.findall(r"^\s*keepalive\s+(\d+)\s*;", f.read(), re.M)
    if len(found) != 1:
        raise RuntimeError(f"{UPSTREAM_SNIPPET}: expected one keepalive line, found {len(found)}")
    return int(found[0])


SHIPPED_KEEPALIVE = shipped_keepalive()

PEERS = [
    PeerSpec("ceiling", "nginx return 200 (ceiling)"),
    # Diagnostic, not a contender: the ceiling's counterpart for fastcgi_pass,
    # with exactly the nginx config of the keep_conn FastCGI peers. GET only,
    # and no cold start: its start says nothing about a server.
    PeerSpec("fastcgi-floor", "FastCGI floor (canned reply, no parsing)", lambda p, sock: [FLOOR, sock],
             proto="fcgi", keep=True, snippet=True, echo=False, get_only=True, cold=False),
    # Without keep-alive on both paths: with FCGI_KEEP_CONN each of the 4
    # workers stays bound to one connection and the others starve.
    PeerSpec("php-fpm", "php-fpm 8.2 (static, 4 children)", php_cmd, proto="fcgi", keep=False,
             fcgi_params=("SCRIPT_FILENAME=" + PHP_SCRIPT,), direct="nokeep"),
    PeerSpec("flup", "Python flup + Flask",
             lambda p, sock: [VENV_PY, os.path.join(BENCH, "peers", "flup", "app.py"), sock],
             proto="fcgi", keep=True,
             # flup/Flask route on PATH_INFO (Flask's own FastCGI docs set these two).
             nginx_extra='fastcgi_param SCRIPT_NAME ""; fastcgi_param PATH_INFO $fastcgi_script_name;',
             fcgi_params=("SCRIPT_NAME=", "PATH_INFO=/")),
    # Go and myflask multiplex, so their direct runs include the multiplexed mode.
    PeerSpec("go", "Go net/http/fcgi", lambda p, sock: [GO, sock], proto="fcgi", keep=True, direct="mux"),
    PeerSpec("tokio-fastcgi", "Rust tokio-fastcgi 1.3", lambda p, sock: [TOKIO_FCGI, sock], proto="fcgi",
             keep=True, direct="keep"),
    PeerSpec("hyper", "Rust hyper 1.x, proxy_pass", lambda p, sock: [HYPER, sock], proto="http", keep=True),
    # Its management endpoints are off (a hosted app's default): the probe
    # holds the peers below to the same build with them on.
    PeerSpec("myflask", "myflask FastCGI, keep_conn", myflask_cmd, proto="fcgi", keep=True, snippet=True,
             direct="mux", probes=(("/metrics", 404, ""),)),
    # The same server with Debian's fastcgi_params instead of the package's
    # snippet (a GET comparison: no echo, and its start is myflask's).
    PeerSpec("myflask-fcgiparams", "myflask FastCGI, keep_conn, Debian fastcgi_params", myflask_cmd,
             proto="fcgi", keep=True, get_only=True, cold=False),
    # The same server, one connection per request (its start is myflask's).
    PeerSpec("myflask-nokeep", "myflask FastCGI, no keepalive", myflask_cmd, proto="fcgi", keep=False,
             snippet=True, cold=False),
    PeerSpec("myflask-http", "myflask HTTP, proxy_pass", myflask_http_cmd, proto="http", keep=True),
    # The counterparts of the fresh-connection rounds (BENCH_H2H=fresh): the
    # package's snippets as shipped, and hyper configured the same way.
    PeerSpec("myflask-shipped", f"myflask FastCGI, shipped snippets (keepalive {SHIPPED_KEEPALIVE})",
             myflask_cmd, proto="fcgi", keep=True, keepalive=SHIPPED_KEEPALIVE, snippet=True,
             get_only=True, cold=False),
    PeerSpec("hyper-nokeep", "Rust hyper 1.x, proxy_pass, no keepalive", lambda p, sock: [HYPER, sock],
             proto="http", keep=False, get_only=True, cold=False),
    PeerSpec("hyper-shipped", f"Rust hyper 1.x, proxy_pass, keepalive {SHIPPED_KEEPALIVE}",
             lambda p, sock: [HYPER, sock], proto="http", keep=True, keepalive=SHIPPED_KEEPALIVE,
             get_only=True, cold=False),
    # The same server with the management endpoints on: /metrics only, and
    # all three (the status page adds the in-flight registry). The built-in
    # app behind it serves none of these paths or bodies, so the probes
    # prove the endpoints answer.
    PeerSpec("myflask-metrics", "myflask FastCGI, keep_conn, --metrics-path",
             lambda p, sock: myflask_argv(MYFLASK, sock, *METRICS_ON), proto="fcgi", keep=True, snippet=True,
             get_only=True, cold=False, h2h_only=True, probes=(("/metrics", 200, "myflask_requests_total"),)),
    PeerSpec("myflask-mgmt", "myflask FastCGI, keep_conn, status + metrics + ping",
             lambda p, sock: myflask_argv(MYFLASK, sock, *ENDPOINTS_ON), proto="fcgi", keep=True, snippet=True,
             get_only=True, cold=False, h2h_only=True,
             probes=(("/metrics", 200, "myflask_requests_total"), ("/status?full", 200, '"requests"'),
                     ("/ping", 200, "ok"))),
]
if BASELINE:
    # Next to myflask in PEERS, so the two are measured back to back.
    PEERS.insert(next(i for i, p in enumerate(PEERS) if p.name == "myflask") + 1, PeerSpec(
        BASE, f"myflask FastCGI, keep_conn, library at {BASELINE['rev']} (baseline)",
        lambda p, sock: myflask_argv(BASELINE["bin"], sock), proto="fcgi", keep=True, snippet=True,
        cold=False, h2h_only=True, probes=(("/metrics", 404, ""),)))
REF = "myflask"
CEIL = "ceiling"
FLOOR_PEER = "fastcgi-floor"


def snippet_params():
    """The fastcgi_param lines of the package's nginx snippet (SNIPPET)."""
    with open(SNIPPET) as f:
        lines = [l.strip() for l in f if l.strip().startswith("fastcgi_param ")]
    if not any(" REQUEST_URI " in l for l in lines):
        raise RuntimeError(f"{SNIPPET}: no fastcgi_param REQUEST_URI line")
    return lines


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def proc_cpu():
    """{pid: (comm, utime+stime ticks)} of every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            comm = s[s.index("(") + 1:s.rindex(")")]
            v = s[s.rindex(")") + 2:].split()
            out[int(d)] = (comm, int(v[11]) + int(v[12]))
        except (OSError, ValueError, IndexError):
            pass
    return out


def top_background(before, after, wall, n=5):
    """Other processes' CPU during the run (alive at the end; short-lived
    ones that came and went are only in the machine-wide figure)."""
    me = os.getpid()
    use = {}
    for pid, (comm, t) in after.items():
        if pid == me:
            continue
        t0 = before.get(pid, (comm, 0))[1] if before.get(pid, ("", 0))[0] == comm else 0
        d = (t - t0) / CLK
        if d > 0:
            use[comm] = use.get(comm, 0) + d
    top = sorted(use.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{c} {100 * s / wall:.0f}% of a core" for c, s in top) or "none"


CLK = os.sysconf("SC_CLK_TCK")


def cpu_sample():
    """(wall s, machine busy CPU s, this benchmark's CPU s incl. reaped children)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = (sum(v) - v[3] - v[4]) / CLK  # all but idle and iowait
    t = os.times()
    return time.time(), busy, t.user + t.system + t.children_user + t.children_system


def cpu_delta(a, b, live=0.0):
    """Machine busy % and the background (not this benchmark) in cores.
    `live`: CPU s the benchmark's still running processes used between `a`
    and `b` (os.times() counts a child only once it is reaped)."""
    wall = b[0] - a[0]
    busy, ours = b[1] - a[1], b[2] - a[2] + live
    if wall <= 0:
        return 0.0, 0.0
    return 100.0 * busy / (wall * os.cpu_count()), max(0.0, busy - ours) / wall


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# ------------------------------------------------------------------ RSS ----

def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError):
            pass
    return kids


def tree_pids(root):
    kids = _children_map()
    out, stack = [], [root]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, []))
    return out


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_ticks(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
            v = s[s.rindex(")") + 2:].split()
            total += int(v[11]) + int(v[12])  # utime + stime (all threads)
        except (OSError, ValueError, IndexError):
            pass
    return total


def peers_cpu_s(peers):
    """CPU seconds the running peers' servers and nginxes have used so far."""
    pids = []
    for p in peers:
        for proc in (p.server, p.nginx):
            if proc:
                pids += tree_pids(proc.pid)
    return cpu_ticks(pids) / CLK


class RssSampler:
    """Peak VmRSS of a process tree, sampled every 50 ms in a thread, and the
    CPU time the tree (and nginx, if given) used meanwhile."""

    def __init__(self, root, nginx=None):
        self.root, self.nginx, self.peak, self._stop = root, nginx, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self.cpu_s = self.nginx_cpu_s = 0.0

    def _run(self):
        pids, n = tree_pids(self.root), 0
        while not self._stop.is_set():
            n += 1
            if n % 10 == 0:
                pids = tree_pids(self.root)
            self.peak = max(self.peak, rss_kib(pids))
            self._stop.wait(0.05)

    def _cpu(self):
        srv = cpu_ticks(tree_pids(self.root))
        ngx = cpu_ticks(tree_pids(self.nginx)) if self.nginx and self.nginx != self.root else 0
        return srv, ngx

    def __enter__(self):
        self._cpu0 = self._cpu()
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()
        c1 = self._cpu()
        self.cpu_s = (c1[0] - self._cpu0[0]) / CLK
        self.nginx_cpu_s = (c1[1] - self._cpu0[1]) / CLK

    def per_req(self, requests):
        """CPU microseconds per request: (server, nginx)."""
        if not requests:
            return None, None
        return 1e6 * self.cpu_s / requests, 1e6 * self.nginx_cpu_s / requests


# --------------------------------------------------------------- peers ----

class Peer:
    def __init__(self, spec, tmp):
        self.spec = spec
        self.name = spec.name
        self.dir = os.path.join(tmp, self.name)
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "app.sock")
        self.port = free_port()
        self.server = None  # Popen of the app server (None for the ceiling)
        self.nginx = None
        self.logs = []

    # -- commands ------------------------------------------------------
    def server_cmd(self, sock=None):
        return self.spec.command(self, sock or self.sock)

    def php_conf(self, sock):
        path = os.path.join(self.dir, "php-fpm.conf")
        with open(path, "w") as f:
            f.write(f"""[global]
pid = {self.dir}/php-fpm.pid
error_log = {self.dir}/php-fpm.log
daemonize = no

[bench]
listen = {sock}
listen.mode = 0666
listen.backlog = 4096
pm = static
pm.max_children = 4
php_admin_value[post_max_size] = 64M
php_admin_value[memory_limit] = 512M
php_admin_value[output_buffering] = 0
""")
        return path

    def nginx_conf(self):
        d = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""
        if self.spec.command is None:
            mod, body = self._ceiling_locations()
            upstream = ""
        else:
            mod = ""
            ka = f"keepalive {self.spec.keepalive};" if self.spec.keep else ""
            upstream = f"upstream app {{ server unix:{self.sock}; {ka} }}"
            body = self._fastcgi_location() if self.spec.proto == "fcgi" else self._proxy_location()
        conf = f"""{user}{mod}worker_processes {NGINX_WORKERS};
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    fastcgi_temp_path {d}/fastcgi_temp;
    proxy_temp_path {d}/proxy_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    client_max_body_size 64m;
    keepalive_requests 10000000;
    {upstream}
    server {{
        listen 127.0.0.1:{self.port} backlog=4096;
        {body}
    }}
}}
"""
        path = os.path.join(d, "nginx.conf")
        with open(path, "w") as f:
            f.write(conf)
        return path

    def _ceiling_locations(self):
        """nginx answers itself: `return 200`, and the echo module's echo
        when it is installed. Returns (load_module line, locations)."""
        mod, echo = "", ""
        if os.path.exists(ECHO_MODULE):
            mod = f"load_module {ECHO_MODULE};\n"
            echo = "location = /echo { echo_read_request_body; echo_request_body; }\n"
        body = f"""
        location = / {{ default_type text/plain; return 200 "Hello, World!\\n"; }}
        {echo}"""
        return mod, body

    def _fastcgi_location(self):
        s = self.spec
        keep = "fastcgi_keep_conn on;" if s.keep else ""
        if s.snippet:
            params = "\n            ".join(snippet_params())
        else:
            params = f"include /etc/nginx/fastcgi_params;\n            fastcgi_param SCRIPT_FILENAME {PHP_SCRIPT};"
        return f"""
        location / {{
            {params}
            {s.nginx_extra}
            fastcgi_pass app;
            {keep}
        }}"""

    def _proxy_location(self):
        conn = 'proxy_http_version 1.1; proxy_set_header Connection "";' if self.spec.keep else ""
        return f"""
        location / {{
            proxy_pass http://app;
            {conn}
        }}"""

    # -- lifecycle -----------------------------------------------------
    def _spawn(self, cmd, tag):
        out = open(os.path.join(self.dir, f"{tag}.log"), "wb")
        self.logs.append(out)
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=self.dir)

    def start(self):
        if self.spec.command is not None:
            self.server = self._spawn(self.server_cmd(), "server")
            wait_unix(self.sock, 20, self.server)
        conf = self.nginx_conf()
        self.nginx = self._spawn([NGINX, "-p", self.dir, "-c", conf], "nginx")
        wait_tcp(self.port, 20, self.nginx)

    def root_pid(self):
        return self.server.pid if self.server else self.nginx.pid

    def stop(self):
        for p in (self.nginx, self.server):
            if p and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in (self.nginx, self.server):
            if p:
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for f in self.logs:
            f.close()


def wait_unix(path, timeout, proc):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(path)
            s.close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"{path} not ready after {timeout}s")


def wait_tcp(port, timeout, proc):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"port {port} not ready after {timeout}s")


def http_req(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
    c.request(method, path, body=body, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def check_peer(peer):
    """Correctness gate: GET / is 200 with a body; POST /echo returns the body."""
    st, body = http_req(peer.port, "GET", "/")
    if st != 200 or not body:
        raise RuntimeError(f"GET / -> {st} {body[:80]!r}")
    for path, status, text in peer.spec.probes:
        st, got = http_req(peer.port, "GET", path)
        if st != status or text.encode() not in got:
            want = f"{status} with {text!r} in the body" if text else str(status)
            raise RuntimeError(f"GET {path} -> {st} {got[:80]!r}, expected {want}")
    if not peer.spec.echo:
        # The floor answers every request with its canned GET / reply, so an
        # echo check could only fail: it has no /echo and is never measured on it.
        return len(body)
    payload = os.urandom(16 * KIB)
    st, back = http_req(peer.port, "POST", "/echo", payload)
    if peer.name == CEIL and not os.path.exists(ECHO_MODULE):
        return len(body)
    if st != 200 or back != payload:
        raise RuntimeError(f"POST /echo -> {st}, {len(back)} bytes back of {len(payload)}")
    return len(body)


# ----------------------------------------------------------------- wrk ----

def run_wrk(port, conns, duration, body_size=0):
    env = dict(os.environ, BENCH_BODY_SIZE=str(body_size))
    cmd = [WRK, f"-t{min(WRK_THREADS, conns)}", f"-c{conns}", f"-d{max(1, round(duration))}s",
           "--timeout", "10s", "-s", LUA, f"http://127.0.0.1:{port}/"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    for line in p.stdout.splitlines():
        if line.startswith("BENCHJSON "):
            r = json.loads(line[len("BENCHJSON "):])
            secs = r["duration_us"] / 1e6
            return dict(
                rps=r["requests"] / secs if secs else 0.0,
                p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000,
                mib_s=r["bytes"] / secs / MIB if secs else 0.0,
                requests=r["requests"],
                non2xx=r["status"] + r["bad_len"],
                sock_err=r["connect"] + r["read"] + r["write"] + r["timeout"],
                err_detail=f"connect {r['connect']} read {r['read']} write {r['write']} "
                           f"timeout {r['timeout']} status {r['status']} bad_len {r['bad_len']}",
            )
    raise RuntimeError(f"wrk failed: {p.stdout[-500:]} {p.stderr[-500:]}")


def run_loadgen(args, timeout):
    p = subprocess.run([LOADGEN, *args], capture_output=True, text=True, timeout=timeout)
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"loadgen failed: {p.stdout[-300:]} {p.stderr[-300:]}")


# ---------------------------------------------------------------- main ----

def bench_peer(peer, rows, direct_rows, errors):
    """Every point of one peer, on its own: idle RSS, GET, echo, direct
    FastCGI, and the machine's load around it all."""
    log(f"== {peer.name}: {peer.spec.label}")
    cpu0 = cpu_sample()
    la0 = loadavg()
    peer.start()
    try:
        get_len = check_peer(peer)
        time.sleep(0.5)
        idle = rss_kib(tree_pids(peer.root_pid()))
        rows.append(dict(section="idle", peer=peer.name, rss_kib=idle))
        # warm-up (not recorded)
        run_wrk(peer.port, 16, WARMUP)
        bench_get(peer, rows, get_len)
        bench_echo(peer, rows)
        bench_direct(peer, direct_rows)
    finally:
        peer.stop()
    busy, bg = cpu_delta(cpu0, cpu_sample())
    rows.append(dict(section="load", peer=peer.name, load_before=la0, load_after=loadavg(),
                     cpu_busy=busy, background=bg))
    nerr = os.path.join(peer.dir, "nginx-error.log")
    if os.path.exists(nerr):
        lines = [l for l in open(nerr, errors="replace") if "[error]" in l or "[crit]" in l or "[alert]" in l]
        if lines:
            errors.append(f"{peer.name}: {len(lines)} nginx error-log lines, first: {lines[0].strip()[:200]}")


def wrk_point(peer, section, conns, body_size, body, **extra):
    """One wrk point through the peer's nginx (`body_size` bytes posted to
    /echo, 0 for GET /) while sampling the server tree: its row, with `body`
    and `extra` (the round) recorded as given."""
    with RssSampler(peer.root_pid(), peer.nginx.pid) as s:
        r = run_wrk(peer.port, conns, DURATION, body_size)
    cpu, ncpu = s.per_req(r["requests"])
    return dict(section=section, peer=peer.name, conns=conns, body=body, **extra, rss_kib=s.peak,
                cpu_us=cpu, nginx_cpu_us=ncpu, **r)


def bench_get(peer, rows, get_len):
    """GET / through nginx at each connection count."""
    for c in GET_CONNS:
        r = wrk_point(peer, "get", c, 0, get_len)
        rows.append(r)
        log(f"   GET c={c}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.2f} p99 {r['p99_ms']:.2f} ms "
            f"errors {r['non2xx'] + r['sock_err']} rss {r['rss_kib'] / 1024:.1f} MiB")


def echo_bodies(spec):
    """The echo points of a peer: none for a GET-only peer, nor for the
    ceiling without nginx's echo module."""
    if spec.get_only or (spec.name == CEIL and not os.path.exists(ECHO_MODULE)):
        return []
    return ECHO_BODIES


def bench_echo(peer, rows):
    """POST /echo through nginx at each of the peer's body sizes."""
    for b in echo_bodies(peer.spec):
        r = wrk_point(peer, "echo", ECHO_CONNS, b, b)
        rows.append(r)
        log(f"   echo {b // KIB} KiB: {r['rps']:.0f} req/s {r['mib_s']:.0f} MiB/s p99 {r['p99_ms']:.1f} ms "
            f"errors {r['non2xx'] + r['sock_err']} rss {r['rss_kib'] / 1024:.1f} MiB")


def direct_runs(peer):
    """loadgen arguments of the peer's direct FastCGI runs, by (connections,
    requests in flight): none unless its spec asks for them (not the floor:
    it is there to show nginx's fastcgi_pass path, not a server)."""
    spec = peer.spec
    if spec.direct is None:
        return []
    extra = ["--no-keepalive"] if spec.direct == "nokeep" else []
    for p in spec.fcgi_params:
        extra += ["--param", p]
    modes = [(c, 1) for c in DIRECT_CONNS] + ([MUX] if spec.direct == "mux" else [])
    return [((c, m), ["run", "--addr", "unix:" + peer.sock, "--conns", str(c), "--mux", str(m),
                      "--duration", str(DURATION), "--warmup", str(min(1.0, WARMUP)), *extra])
            for c, m in modes]


def bench_direct(peer, direct_rows):
    """Direct FastCGI on the same server process, no nginx in the path."""
    for (c, m), args in direct_runs(peer):
        with RssSampler(peer.root_pid()) as s:
            r = run_loadgen(args, DURATION + 60)
        r["rss_kib"] = s.peak
        r["cpu_us"] = s.per_req(r["requests"])[0]
        r["peer"] = peer.name
        direct_rows.append(r)
        log(f"   direct c={c} mux={m}: {r['rps']:.0f} req/s p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} ms "
            f"errors {r['non2xx'] + r['bad_len'] + r['io_errors']}")


def cold_starts(tmp, names):
    """Process start -> first response, direct on the socket (no nginx)."""
    out = []
    d = os.path.join(tmp, "cold")
    os.makedirs(d, exist_ok=True)
    sock = os.path.join(d, "app.sock")
    for spec in PEERS:
        if not spec.cold or spec.name not in names:
            continue
        r = run_loadgen(cold_start_args(Peer(spec, d), sock), 120)
        r["peer"] = spec.name
        r["mode"] = "process start -> first response"
        out.append(r)
        log(f"   cold {spec.name}: median {r['median_ms']:.1f} ms ({r['failures']} failures)")
    if "myflask" not in names:
        return out
    r = run_loadgen(activated_start_args(sock), 120)
    r["peer"] = "myflask-activated"
    r["mode"] = "first connection -> response (systemd-socket-activate)"
    out.append(r)
    log(f"   cold myflask socket-activated: median {r['median_ms']:.1f} ms ({r['failures']} failures)")
    return out


def cold_start_args(peer, sock):
    """loadgen arguments that time the peer's start: its server on `sock`
    (the ceiling: nginx on its port) from spawn to the first response."""
    spec = peer.spec
    if spec.command is None:
        cmd = [NGINX, "-p", peer.dir, "-c", peer.nginx_conf()]
        proto, addr = "http", f"127.0.0.1:{peer.port}"
    else:
        cmd = peer.server_cmd(sock)
        proto, addr = spec.proto, "unix:" + sock
    extra = [a for p in spec.fcgi_params for a in ("--param", p)]
    return ["coldstart", "--addr", addr, "--proto", proto, "--repeat", str(COLD_REPEAT),
            "--path", "/", *extra, "--", *cmd]


def activated_start_args(sock):
    """loadgen arguments that time myflask socket-activated:
    systemd-socket-activate holds `sock` and execs myflask on the first
    connection."""
    cmd = [ACTIVATE, "-l", sock, "--fdname=fcgi", MYFLASK, "serve", *MYFLASK_LOG]
    return ["coldstart", "--addr", "unix:" + sock, "--activated", "--repeat", str(COLD_REPEAT), "--", *cmd]


def head_to_head(tmp, names, rows):
    """Interleaved rounds of the target comparisons (see H2H_PEERS), with
    each peer's idle RSS once all have answered their checks, and the
    machine's load around each round."""
    specs = [p for p in PEERS if p.name in H2H_PEERS and p.name in names]
    if len(specs) < 2 or H2H_ROUNDS < 1:
        return
    log(f"== head to head: {', '.join(p.name for p in specs)}, {H2H_ROUNDS} rounds")
    peers = []
    try:
        for spec in specs:
            p = Peer(spec, os.path.join(tmp, "h2h"))
            peers.append(p)
            p.start()
            check_peer(p)
        time.sleep(0.5)
        for p in peers:
            rows.append(dict(section="h2h_idle", peer=p.name, rss_kib=rss_kib(tree_pids(p.root_pid()))))
        for p in peers:
            run_wrk(p.port, 16, WARMUP)
        for rnd in range(H2H_ROUNDS):
            cpu0, la0, live0 = cpu_sample(), loadavg(), peers_cpu_s(peers)
            for section, c, body, who in round_points(peers, rnd):
                for p in who:
                    rows.append(wrk_point(p, section, c, body, body, round=rnd))
            busy, bg = cpu_delta(cpu0, cpu_sample(), peers_cpu_s(peers) - live0)
            rows.append(dict(section="round_load", peer="", round=rnd, load_before=la0, load_after=loadavg(),
                             cpu_busy=busy, background=bg))
            log(f"   round {rnd + 1}: " + "; ".join(
                f"{r['peer']} {r['section'][4:]} c={r['conns']} {r['rps']:.0f}"
                for r in rows if r.get("round") == rnd and r["section"].startswith("h2h")))
    finally:
        for p in peers:
            p.stop()


def round_points(peers, rnd):
    """(section, conns, body, peers in order) of round `rnd`: the order
    rotates each round, and odd rounds run it backwards, so two peers next
    to each other (myflask and myflask-base) swap places every round."""
    k = rnd % len(peers)
    order = peers[k:] + peers[:k]
    if rnd % 2:
        order.reverse()
    points = [("h2h_get", c, 0, order) for c in H2H_CONNS]
    points.append(("h2h_echo", ECHO_CONNS, MIB, [p for p in order if p.name in H2H_ECHO_PEERS]))
    return points


def h2h_summary(rows, section, conns):
    """{peer: rows} of one head-to-head point, and per-round ratios to myflask."""
    by_peer = {}
    for r in rows:
        if r["section"] == section and r["conns"] == conns:
            by_peer.setdefault(r["peer"], []).append(r)
    mf = {r["round"]: r for r in by_peer.get(REF, [])}
    ratios = {}
    for peer, rs in by_peer.items():
        ratios[peer] = [mf[r["round"]]["rps"] / r["rps"] for r in rs if r["round"] in mf and r["rps"]]
    return by_peer, ratios


def median(xs):
    """statistics.median, or None for no figures."""
    return statistics.median(xs) if xs else None


def versions():
    def cmd(*c):
        try:
            p = subprocess.run(list(c), capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return "n/a"

    def lockver(peer, crate):
        try:
            lines = open(os.path.join(BENCH, "peers", peer, "Cargo.lock")).read().split("[[package]]")
            for blk in lines:
                if f'name = "{crate}"' in blk:
                    return blk.split('version = "')[1].split('"')[0]
        except OSError:
            pass
        return "?"

    git = cmd("git", "-C", REPO, "describe", "--always", "--dirty")
    pyv = subprocess.run([VENV_PY, "-c", "import flask, importlib.metadata as m, sys;"
                          "print(sys.version.split()[0], m.version('flup'), m.version('flask'))"],
                         capture_output=True, text=True).stdout.split()
    return dict(
        myflask=f"{cmd(MYFLASK, '--version')} (git {git})",
        nginx=cmd(NGINX, "-v").replace("nginx version: ", ""),
        php=cmd(PHP_FPM, "-v"),
        go=cmd("go", "version"),
        python=f"Python {pyv[0]}, flup {pyv[1]}, Flask {pyv[2]}" if len(pyv) == 3 else "n/a",
        rust=cmd("rustc", "--version"),
        tokio_fastcgi=lockver("tokio-fastcgi", "tokio-fastcgi"),
        hyper=lockver("hyper", "hyper"),
        wrk="wrk " + cmd(WRK, "-v").split()[1].split("/")[-1] if cmd(WRK, "-v").startswith("wrk") else "wrk",
    )


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    deb = open("/etc/debian_version").read().strip() if os.path.exists("/etc/debian_version") else "?"
    return f"{os.cpu_count()} × {model}, {mem} RAM, Linux {platform.release()}, Debian {deb}"


def selected_peers():
    """The peers BENCH_PEERS names (all when it is unset; the fresh rounds'
    peers with BENCH_H2H=fresh), in PEERS order."""
    wanted = os.environ.get("BENCH_PEERS", ",".join(H2H_PEERS) if FRESH else "")
    return [p for p in PEERS if not wanted or p.name in wanted.split(",")]


def dry_run():
    """Prints what a run would do, peer by peer, and writes every peer's
    configs to a temporary directory that it keeps; starts nothing."""
    tmp = tempfile.mkdtemp(prefix="myflask-bench-dry.")
    peers = selected_peers()
    names = [p.name for p in peers]
    print(f"{len(peers)} peers, {DURATION:g} s per point after {WARMUP:g} s warm-up; configs in {tmp}")
    for spec in peers:
        peer = Peer(spec, tmp)
        peer.nginx_conf()
        print(f"\n{spec.name}: {spec.label}")
        print("  server: " + (" ".join(peer.server_cmd()) if spec.command else "none (nginx answers)"))
        print(f"  nginx: {os.path.join(peer.dir, 'nginx.conf')}")
        for path, status, text in spec.probes:
            print(f"  check: GET {path} -> {status}" + (f" with {text!r}" if text else ""))
        if FRESH or spec.h2h_only:  # the rounds alone: no points of its own, no cold start
            echo = " and echo 1 MiB" if spec.name in H2H_ECHO_PEERS else ""
            print(f"  head to head only: GET at {', '.join(map(str, H2H_CONNS))}{echo}, {H2H_ROUNDS} rounds")
            continue
        print(f"  GET at {', '.join(map(str, GET_CONNS))} connections; echo: "
              + (", ".join(body_label(b) for b in echo_bodies(spec)) or "none"))
        for _, args in direct_runs(peer):
            print("  direct: loadgen " + " ".join(args))
        cold = os.path.join(tmp, "cold")
        if spec.cold:
            print("  cold start: loadgen " + " ".join(cold_start_args(Peer(spec, cold), os.path.join(cold, "app.sock"))))
        if spec.name == REF:
            print("  cold start, socket-activated: loadgen "
                  + " ".join(activated_start_args(os.path.join(cold, "app.sock"))))
        if spec.name in H2H_PEERS and len([n for n in H2H_PEERS if n in names]) >= 2 and H2H_ROUNDS >= 1:
            echo = " and echo 1 MiB" if spec.name in H2H_ECHO_PEERS else ""
            print(f"  head to head: GET at {', '.join(map(str, H2H_CONNS))}{echo}, {H2H_ROUNDS} rounds")
    return 0


def main():
    """A whole run: measure, keep the raw data, write the reports; exit
    status 1 if a peer failed (or, in a quick run, any request failed)."""
    os.makedirs(RAW, exist_ok=True)
    peers = selected_peers()
    if BASELINE and BASE in [p.name for p in peers] and not os.access(BASELINE["bin"], os.X_OK):
        sys.exit(f"bench.py: no {BASELINE['bin']}: build it with BENCH_BASELINE={BASELINE['rev']} bench/run.sh")
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    tmp = tempfile.mkdtemp(prefix="myflask-bench.", dir=shm)
    os.chmod(tmp, 0o755)
    started = datetime.datetime.now().astimezone()
    meta = dict(date=started.strftime("%Y-%m-%d %H:%M %Z"), machine=machine(), versions=versions(),
                load_before=loadavg(), quick=QUICK, duration=DURATION, warmup=WARMUP, baseline=BASELINE)
    procs0 = proc_cpu()
    log(f"bench: {len(peers)} peers, {DURATION:g} s per point, load before {meta['load_before']}")
    cpu0 = cpu_sample()
    t0 = time.time()
    res = measure_all(peers, tmp)
    cpu1 = cpu_sample()
    busy, bg = cpu_delta(cpu0, cpu1)
    meta.update(load_after=loadavg(), elapsed_s=round(time.time() - t0), cpu_busy=busy, background=bg,
                top_background=top_background(procs0, proc_cpu(), cpu1[0] - cpu0[0]))
    stamp = started.strftime("%Y-%m-%d-%H%M")
    raw_dir = save_raw(tmp, stamp, meta, res)
    rows, direct_rows, failed = res["rows"], res["direct"], res["failed"]
    base = write_reports(meta, peers, rows, direct_rows, res["cold"], res["errors"], failed, stamp)
    log(f"bench: wrote {base}.md and .csv (raw data in {raw_dir}); load after {meta['load_after']}, "
        f"background {meta['background']:.2f} cores")
    total_err = sum(r.get("non2xx", 0) + r.get("sock_err", 0) for r in rows) + \
        sum(r["non2xx"] + r["bad_len"] + r["io_errors"] for r in direct_rows)
    if failed:
        log("bench: FAILED peers: " + "; ".join(failed))
        return 1
    if QUICK and total_err:
        log(f"bench: {total_err} errors")
        return 1
    return 0


def measure_all(peers, tmp):
    """Every peer on its own, then the head-to-head rounds, then the cold
    starts; a failure costs only its own part and is listed in "failed"."""
    rows, direct_rows, errors, failed = [], [], [], []
    # BENCH_H2H=fresh: the fresh-connection rounds alone (a few minutes)
    for spec in [] if FRESH else [p for p in peers if not p.h2h_only]:
        peer = Peer(spec, tmp)
        try:
            bench_peer(peer, rows, direct_rows, errors)
        except Exception as e:  # noqa: BLE001
            failed.append(f"{peer.name}: {e}")
            log(f"   FAILED: {e}")
            peer.stop()
    try:
        head_to_head(tmp, [p.name for p in peers], rows)
    except Exception as e:  # noqa: BLE001
        failed.append(f"head to head: {e}")
        log(f"   FAILED: {e}")
    cold = []
    log("== cold starts")
    try:
        cold = [] if FRESH else cold_starts(tmp, [p.name for p in peers])
    except Exception as e:  # noqa: BLE001
        failed.append(f"cold starts: {e}")
        log(f"   FAILED: {e}")
    return dict(rows=rows, direct=direct_rows, cold=cold, errors=errors, failed=failed)


def save_raw(tmp, stamp, meta, res):
    """Moves the run's configs and logs to results/raw/<stamp>/ with
    results.json beside them (what --report reads); returns that directory."""
    raw_dir = os.path.join(RAW, stamp)
    shutil.copytree(tmp, raw_dir, ignore=shutil.ignore_patterns("*.sock", "client_body", "*_temp"),
                    dirs_exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    with open(os.path.join(raw_dir, "results.json"), "w") as f:
        json.dump(dict(meta=meta, rows=res["rows"], direct=res["direct"], cold=res["cold"],
                       errors=res["errors"], failed=res["failed"]), f, indent=1)
    return raw_dir


def write_reports(meta, peers, rows, direct_rows, cold, errors, failed, stamp):
    quick = meta["quick"]
    md, csv_rows, _ = report(meta, peers, rows, direct_rows, cold, errors, failed)
    # A fresh-rounds run is a part of the picture: it stays out of latest.md and the README.
    part = quick or FRESH
    prefix = "quick-" if quick else "fresh-" if FRESH else ""
    base = os.path.join(RAW if quick else RESULTS, prefix + stamp)
    with open(base + ".md", "w") as f:
        f.write(md)
    with open(base + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(csv_rows)
    if not part:
        shutil.copyfile(base + ".md", os.path.join(RESULTS, "latest.md"))
        update_readme(md)
    return base


def rereport(raw_dir):
    """Rewrites the reports of an earlier run from its raw results.json."""
    d = json.load(open(os.path.join(raw_dir, "results.json")))
    names = {r["peer"] for r in d["rows"]}
    peers = [p for p in PEERS if p.name in names]
    stamp = os.path.basename(os.path.normpath(raw_dir))
    base = write_reports(d["meta"], peers, d["rows"], d["direct"], d["cold"], d["errors"], d["failed"], stamp)
    log(f"bench: rewrote {base}.md and .csv from {raw_dir}")
    return 0


# -------------------------------------------------------------- report ----

README_BEGIN = "<!-- latest results: written by bench.py -->"
README_END = "<!-- end of latest results -->"


def update_readme(md):
    """Copies the headline tables of the run into bench/README.md."""
    path = os.path.join(BENCH, "README.md")
    try:
        text = open(path).read()
    except OSError:
        return
    if README_BEGIN not in text or README_END not in text:
        return
    keep = []
    for sec in md.split("\n## "):
        head = sec.split("\n", 1)[0]
        if sec.startswith("# ") or head.startswith(("GET /", "Targets", "Memory")):
            keep.append(sec if sec.startswith("# ") else "## " + sec)
    body = "\n".join(keep).replace("\n# ", "\n### ").replace("\n## ", "\n#### ")
    body = body.lstrip("# ").strip()
    block = f"{README_BEGIN}\n### {body}\n\nFull report: [results/latest.md](results/latest.md).\n{README_END}"
    pre, rest = text.split(README_BEGIN, 1)
    post = rest.split(README_END, 1)[1]
    with open(path, "w") as f:
        f.write(pre + block + post)


CSV_FIELDS = ["section", "peer", "conns", "mux", "body", "round", "rps", "x_ceiling", "x_myflask", "mib_s",
              "p50_ms", "p99_ms", "p99_x_myflask", "non2xx", "sock_err", "rss_kib", "rss_x_myflask",
              "cpu_us_server", "cpu_us_nginx",
              "median_ms", "load_before", "load_after", "cpu_busy", "background_cores"]


def fmt_n(v):
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt_r(v):
    return "–" if v is None else f"{v:.2f}×"


def mib(kib):
    return "–" if kib is None else f"{kib / 1024:.1f}"


def fmt_us(v, na=False):
    return "–" if v is None or na else f"{v:.1f}"


def rnd(v):
    return None if v is None else round(v, 2)


def body_label(b):
    return f"{b // MIB} MiB" if b >= MIB else f"{b // KIB} KiB"


class Report:
    """The report being written: its markdown lines, its CSV rows, and the
    run's rows found by (section, peer, conns, body)."""

    def __init__(self, rows):
        self.lines = []
        self.csv = []
        self.labels = {p.name: p.label for p in PEERS}
        self.pick = {}
        for r in rows:
            self.pick[(r["section"], r["peer"], r.get("conns"), r.get("body") if r["section"] == "echo" else None)] = r

    def w(self, line):
        self.lines.append(line)

    def get(self, section, peer, conns=None, body=None):
        return self.pick.get((section, peer, conns, body))


def report(meta, peers, rows, direct_rows, cold, errors, failed):
    """The markdown report, its CSV rows, and whether every target was met."""
    rep = Report(rows)
    if meta.get("baseline"):  # a report rewritten without BENCH_BASELINE set
        rep.labels[BASE] = f"myflask FastCGI, keep_conn, library at {meta['baseline']['rev']} (baseline)"
    write_header(rep, meta, failed)
    write_get(rep, peers, rows)
    write_echo(rep, peers)
    write_memory(rep, peers)
    write_cold(rep, cold)
    write_direct(rep, direct_rows)
    write_load(rep, rows)
    h2h = h2h_points(rows)
    write_h2h(rep, h2h, meta)
    write_round_load(rep, rows)
    write_baseline(rep, h2h, rows, meta)
    write_endpoints(rep, h2h, rows)
    write_fresh(rep, h2h)
    targets_ok = True
    if not meta["quick"] and not FRESH:
        targets_ok = write_targets(rep, h2h, rows, direct_rows, cold)
    write_floor_context(rep, h2h)
    write_errors(rep, errors)
    return "\n".join(rep.lines) + "\n", rep.csv, targets_ok


def write_header(rep, meta, failed):
    """Title, machine, load, versions, settings, and what failed."""
    w = rep.w
    title = "myflask benchmark" + (" (quick smoke)" if meta["quick"] else "")
    w(f"# {title} — {meta['date']}\n")
    w(f"Machine: {meta['machine']}.  ")
    w(f"Load average (1/5/15 min) before: **{meta['load_before']}**, after: **{meta['load_after']}**; "
      f"machine CPU busy over the run {meta['cpu_busy']:.0f}%, of which **background (other "
      f"processes, not this benchmark) {meta['background']:.2f} of {os.cpu_count()} cores** on average; "
      f"run took {meta['elapsed_s']} s.  ")
    w(f"Busiest other processes during the run: {meta['top_background']}.\n")
    v = meta["versions"]
    w(f"Versions: {v['myflask']}; {v['nginx']}; {v['php']}; {v['go']}; {v['python']}; "
      f"{v['rust']} (tokio-fastcgi {v['tokio_fastcgi']}, hyper {v['hyper']}); {v['wrk']}.\n")
    w(f"Settings: {meta['duration']:g} s per point after {meta['warmup']:g} s warm-up per peer; wrk "
      f"{WRK_THREADS} threads, timeout 10 s; nginx `worker_processes {NGINX_WORKERS}` for every peer, "
      f"`access_log off`, upstream `keepalive 512` where keep-alive is on; echo at {ECHO_CONNS} "
      f"connections. myflask runs with its access log off. Ratios: ×ceil = figure / nginx ceiling, "
      f"×mf = figure / myflask (FastCGI, keep_conn) at the same point. RSS = summed VmRSS of the "
      f"server's process tree (not nginx, except for the ceiling), peak of 50 ms samples. CPU µs/req = "
      f"user+system CPU time of the server tree (and of nginx) during the point / requests completed: "
      f"the figure least disturbed by background load.\n")
    if failed:
        w("**Failed:** " + "; ".join(failed) + "\n")


def write_get(rep, peers, rows):
    """GET / through nginx, every peer at every connection count."""
    w = rep.w
    w("## GET / through nginx\n")
    w("| peer | conns | req/s | ×ceil | ×mf | p50 ms | p99 ms | p99 ×mf | non-2xx | socket err | RSS MiB | "
      "CPU µs/req server | CPU µs/req nginx |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in peers:
        for c in GET_CONNS:
            r = rep.get("get", p.name, c)
            if not r:
                continue
            ce, mf = rep.get("get", CEIL, c), rep.get("get", REF, c)
            xc, xm = ratio(r["rps"], ce and ce["rps"]), ratio(r["rps"], mf and mf["rps"])
            p99m = ratio(r["p99_ms"], mf and mf["p99_ms"])
            w(f"| {rep.labels[p.name]} | {c} | {fmt_n(r['rps'])} | {fmt_r(xc)} | {fmt_r(xm)} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {fmt_r(p99m)} | {r['non2xx']} | {r['sock_err']} | "
              f"{mib(r['rss_kib'])} | {fmt_us(r.get('cpu_us'))} | {fmt_us(r.get('nginx_cpu_us'), p.name == CEIL)} |")
            rep.csv.append(dict(section="get", peer=p.name, conns=c, body=r["body"], rps=round(r["rps"], 1),
                                x_ceiling=xc and round(xc, 3), x_myflask=xm and round(xm, 3),
                                mib_s=round(r["mib_s"], 2), p50_ms=r["p50_ms"], p99_ms=r["p99_ms"],
                                p99_x_myflask=p99m and round(p99m, 3), non2xx=r["non2xx"],
                                sock_err=r["sock_err"], rss_kib=r["rss_kib"],
                                cpu_us_server=rnd(r.get("cpu_us")), cpu_us_nginx=rnd(r.get("nginx_cpu_us"))))
    gl = {r["peer"]: r["body"] for r in rows if r["section"] == "get"}
    if gl:
        w("\nGET / response body bytes: " + ", ".join(f"{k} {v}" for k, v in gl.items()) +
          " (every peer, myflask included, answers \"Hello, World!\\n\").\n")


def write_echo(rep, peers):
    """POST /echo through nginx, every peer at every body size."""
    w = rep.w
    w("## POST /echo through nginx (by body size)\n")
    w("| peer | body | req/s | MiB/s | ×ceil | ×mf | p50 ms | p99 ms | non-2xx/bad len | socket err | "
      "RSS MiB | RSS ×mf | CPU µs/req server | CPU µs/req nginx |")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in peers:
        for b in ECHO_BODIES:
            r = rep.get("echo", p.name, ECHO_CONNS, b)
            if not r:
                continue
            ce, mf = rep.get("echo", CEIL, ECHO_CONNS, b), rep.get("echo", REF, ECHO_CONNS, b)
            xc, xm = ratio(r["rps"], ce and ce["rps"]), ratio(r["rps"], mf and mf["rps"])
            rx = ratio(r["rss_kib"], mf and mf["rss_kib"])
            w(f"| {rep.labels[p.name]} | {body_label(b)} | {fmt_n(r['rps'])} | {r['mib_s']:.0f} | {fmt_r(xc)} | "
              f"{fmt_r(xm)} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non2xx']} | {r['sock_err']} | "
              f"{mib(r['rss_kib'])} | {fmt_r(rx)} | {fmt_us(r.get('cpu_us'))} | "
              f"{fmt_us(r.get('nginx_cpu_us'), p.name == CEIL)} |")
            rep.csv.append(dict(section="echo", peer=p.name, conns=ECHO_CONNS, body=b, rps=round(r["rps"], 1),
                                x_ceiling=xc and round(xc, 3), x_myflask=xm and round(xm, 3),
                                mib_s=round(r["mib_s"], 2), p50_ms=r["p50_ms"], p99_ms=r["p99_ms"],
                                non2xx=r["non2xx"], sock_err=r["sock_err"], rss_kib=r["rss_kib"],
                                rss_x_myflask=rx and round(rx, 3),
                                cpu_us_server=rnd(r.get("cpu_us")), cpu_us_nginx=rnd(r.get("nginx_cpu_us"))))
    if os.path.exists(ECHO_MODULE):
        w("\nThe ceiling's echo is nginx's echo module (`echo_read_request_body; echo_request_body`).\n")


def write_memory(rep, peers):
    """Idle RSS and the peaks of the top GET point and the 1 MiB echo."""
    w = rep.w
    w("## Memory (server process tree, VmRSS)\n")
    top_c = GET_CONNS[-1]
    echo_b = MIB if MIB in ECHO_BODIES else ECHO_BODIES[-1]
    w(f"| peer | idle MiB | ×mf | GET c={top_c} peak MiB | ×mf | echo {body_label(echo_b)} peak MiB | ×mf |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    mf_idle = rep.get("idle", REF)
    mf_get, mf_echo = rep.get("get", REF, top_c), rep.get("echo", REF, ECHO_CONNS, echo_b)
    for p in peers:
        i, g = rep.get("idle", p.name), rep.get("get", p.name, top_c)
        e = rep.get("echo", p.name, ECHO_CONNS, echo_b)
        if not i:
            continue
        ri = ratio(i["rss_kib"], mf_idle and mf_idle["rss_kib"])
        rg = ratio(g and g["rss_kib"], mf_get and mf_get["rss_kib"])
        re_ = ratio(e and e["rss_kib"], mf_echo and mf_echo["rss_kib"])
        w(f"| {rep.labels[p.name]} | {mib(i['rss_kib'])} | {fmt_r(ri)} | {mib(g and g['rss_kib'])} | {fmt_r(rg)} | "
          f"{mib(e and e['rss_kib'])} | {fmt_r(re_)} |")
        rep.csv.append(dict(section="idle", peer=p.name, rss_kib=i["rss_kib"], rss_x_myflask=ri and round(ri, 3)))


def write_cold(rep, cold):
    """Cold starts, direct on the socket."""
    if not cold:
        return
    w = rep.w
    w("\n## Cold start (direct on the socket, no nginx)\n")
    w("| peer | what | median ms | min ms | ×mf | samples ms | failures |")
    w("|---|---|---:|---:|---:|---|---:|")
    mfc = next((c for c in cold if c["peer"] == REF), None)
    for c in cold:
        x = ratio(c["median_ms"], mfc and mfc["median_ms"])
        lab = rep.labels.get(c["peer"], "myflask, socket-activated")
        if c["peer"] == REF:
            lab = "myflask FastCGI"
        w(f"| {lab} | {c['mode']} | {c['median_ms']:.1f} | {c['min_ms']:.1f} | {fmt_r(x)} | "
          f"{', '.join(f'{s:.1f}' for s in c['samples_ms'])} | {c['failures']} |")
        rep.csv.append(dict(section="coldstart", peer=c["peer"], median_ms=c["median_ms"]))


def write_direct(rep, direct_rows):
    """Direct FastCGI runs (loadgen, no nginx)."""
    if not direct_rows:
        return
    w = rep.w
    w("\n## Direct FastCGI, no nginx (bench/loadgen, GET /)\n")
    w("| peer | connections × in flight | keep-alive | req/s | ×mf | p50 ms | p99 ms | errors | RSS MiB | "
      "CPU µs/req server |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    mfd = {(r["conns"], r["mux"]): r for r in direct_rows if r["peer"] == REF}
    for r in direct_rows:
        m = mfd.get((r["conns"], r["mux"]))
        x = ratio(r["rps"], m and m["rps"])
        err = r["non2xx"] + r["bad_len"] + r["io_errors"]
        mode = "multiplexed" if r["mux"] > 1 else ("yes" if r["keepalive"] else "no (conn per request)")
        w(f"| {rep.labels[r['peer']]} | {r['conns']} × {r['mux']} | {mode} | {fmt_n(r['rps'])} | {fmt_r(x)} | "
          f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {err} | {mib(r['rss_kib'])} | {fmt_us(r.get('cpu_us'))} |")
        rep.csv.append(dict(section="direct", peer=r["peer"], conns=r["conns"], mux=r["mux"],
                            rps=r["rps"], x_myflask=x and round(x, 3), p50_ms=r["p50_ms"],
                            p99_ms=r["p99_ms"], non2xx=r["non2xx"] + r["bad_len"], sock_err=r["io_errors"],
                            rss_kib=r["rss_kib"], cpu_us_server=rnd(r.get("cpu_us"))))
    w("\nphp-fpm is driven without keep-alive (as nginx drives it here): with FCGI_KEEP_CONN each of its "
      "4 workers stays bound to one connection. Multiplexed mode only against myflask and Go "
      "(php-fpm, flup and tokio-fastcgi do not multiplex). These runs come right after the echo points "
      "on the same server process, so their RSS column includes heap the server still holds after "
      "the 8 MiB echoes.\n")


def write_load(rep, rows):
    """The machine's load around each peer."""
    loads = [r for r in rows if r["section"] == "load"]
    if not loads:
        return
    w = rep.w
    w("## Machine load per peer\n")
    w("| peer | loadavg before | loadavg after | machine CPU busy % | background cores |")
    w("|---|---|---|---:|---:|")
    for r in loads:
        w(f"| {rep.labels[r['peer']]} | {r['load_before']} | {r['load_after']} | {r['cpu_busy']:.0f} | "
          f"{r['background']:.2f} |")
        rep.csv.append(dict(section="load", peer=r["peer"], load_before=r["load_before"],
                            load_after=r["load_after"], cpu_busy=round(r["cpu_busy"], 1),
                            background_cores=round(r["background"], 2)))
    w("")


def h2h_points(rows):
    """{(section, conns): (rows by peer, myflask ÷ peer per round)} of the
    head-to-head points that ran with two peers or more."""
    h2h = {}
    for section, conns in [("h2h_get", c) for c in H2H_CONNS] + [("h2h_echo", ECHO_CONNS)]:
        by_peer, ratios = h2h_summary(rows, section, conns)
        if len(by_peer) >= 2:
            h2h[(section, conns)] = (by_peer, ratios)
    return h2h


def write_h2h(rep, h2h, meta):
    """The interleaved rounds: medians per point and peer, and every round's ratio."""
    if not h2h:
        return
    w = rep.w
    nr = max(len(v) for by_peer, _ in h2h.values() for v in by_peer.values())
    w("## Head to head: the target comparisons, interleaved\n")
    w(f"The peers the targets compare run side by side (each with its own nginx) and are measured "
      f"in turn, {nr} rounds, the order rotating each round, {meta['duration']:g} s a point. "
      f"×mf is the median of the rounds' ratios (figure / myflask's in the same round), so each "
      f"ratio compares figures taken seconds apart; the targets below use these."
      + (" The FastCGI floor runs in the GET rounds as context for them, not as a target."
         if any(FLOOR_PEER in by_peer for by_peer, _ in h2h.values()) else "") + "\n")
    w("| point | peer | median req/s | min–max req/s | ×mf (median of rounds) | per-round ×mf | "
      "median p99 ms | median CPU µs/req server | nginx |")
    w("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for (section, conns), (by_peer, ratios) in h2h.items():
        what = f"GET c={conns}" if section == "h2h_get" else f"echo 1 MiB c={conns}"
        for peer in [n for n in H2H_PEERS if n in by_peer]:
            write_h2h_peer(rep, section, conns, what, peer, by_peer[peer], ratios[peer])
    w("")


def write_h2h_peer(rep, section, conns, what, peer, rs, ratios):
    """One peer's line of one head-to-head point, and its rounds in the CSV."""
    rps = [r["rps"] for r in rs]
    x = median([1 / q for q in ratios]) if peer != REF and ratios else None
    per = ", ".join(f"{1 / q:.2f}" for q in ratios) if peer != REF else ""
    rep.w(f"| {what} | {rep.labels[peer]} | {fmt_n(median(rps))} | {fmt_n(min(rps))}–{fmt_n(max(rps))} | "
          f"{fmt_r(x) if x else '1' if peer == REF else '–'} | {per} | {median([r['p99_ms'] for r in rs]):.2f} | "
          f"{fmt_us(median([r['cpu_us'] for r in rs if r.get('cpu_us') is not None]))} | "
          f"{fmt_us(median([r['nginx_cpu_us'] for r in rs if r.get('nginx_cpu_us') is not None]), peer == CEIL)} |")
    for r in rs:
        rep.csv.append(dict(section=section, peer=peer, conns=conns, body=r.get("body"),
                            round=r["round"], rps=round(r["rps"], 1), p50_ms=r["p50_ms"],
                            p99_ms=r["p99_ms"], non2xx=r["non2xx"], sock_err=r["sock_err"],
                            rss_kib=r["rss_kib"], cpu_us_server=rnd(r.get("cpu_us")),
                            cpu_us_nginx=rnd(r.get("nginx_cpu_us"))))


# Issue 12 (a hot-path change against the build before it) and issue 14
# (the management endpoints on against off) both ask for ≥ 0.98×, judged
# on the median of the rounds' ratios.
SAME_BUILD_GOAL = 0.98


def round_ratios(by_peer, a, b, key="rps"):
    """{round: a's figure ÷ b's} over the rounds both ran (req/s, or
    key="cpu_us" for the server's CPU per request)."""
    rb = {r["round"]: r.get(key) for r in by_peer.get(b, [])}
    return {r["round"]: r[key] / rb[r["round"]] for r in by_peer.get(a, [])
            if rb.get(r["round"]) and r.get(key) is not None}


def cpu_cell(by_peer, a, b):
    """a's CPU µs/req ÷ b's: the median of the rounds' ratios."""
    xs = list(round_ratios(by_peer, a, b, "cpu_us").values())
    return f"{median(xs):.3f}" if xs else "–"


def ratio_cells(xs):
    """Median, per-round list (in round order) and min–max of {round: ratio}."""
    v = [xs[k] for k in sorted(xs)]
    return (f"{median(v):.3f}×" if v else "–", ", ".join(f"{x:.3f}" for x in v),
            f"{min(v):.3f}–{max(v):.3f}" if v else "–")


def median_cpu(rs):
    return fmt_us(median([r["cpu_us"] for r in rs if r.get("cpu_us") is not None]))


def write_baseline(rep, h2h, rows, meta):
    """myflask ÷ the same peer on the library at BENCH_BASELINE, at every
    head-to-head point, and both idle RSS."""
    points = [(k, v[0]) for k, v in h2h.items() if BASE in v[0] and REF in v[0]]
    if not points:
        return
    b, w = meta["baseline"], rep.w
    w(f"## Against the baseline build: library at {b['rev']} ({b['sha']})\n")
    w(f"`{REF}` and `{BASE}` run the same app (`bench/peers/myflask` as of this run's checkout), the "
      f"second built on the myflask library at {b['rev']} (\"{b['subject']}\"). Ratio = myflask's req/s "
      f"÷ the baseline's in the same round (measured back to back, their order swapping each round); "
      f"the goal is ≥ {SAME_BUILD_GOAL}× for the median of the rounds. CPU ratio = myflask's "
      f"CPU µs/req ÷ the baseline's, median of the rounds (below 1: myflask spends less).\n")
    w("| point | myflask ÷ baseline (median) | per round | min–max | median req/s myflask | "
      "median req/s baseline | CPU µs/req myflask | CPU µs/req baseline | CPU ratio | met |")
    w("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for (section, conns), by_peer in points:
        xs = round_ratios(by_peer, REF, BASE)
        med, per, spread = ratio_cells(xs)
        what = f"GET c={conns}" if section == "h2h_get" else f"echo 1 MiB c={conns}"
        ok = "yes" if xs and median(list(xs.values())) >= SAME_BUILD_GOAL else "**no**"
        w(f"| {what} | {med} | {per} | {spread} | {fmt_n(median([r['rps'] for r in by_peer[REF]]))} | "
          f"{fmt_n(median([r['rps'] for r in by_peer[BASE]]))} | {median_cpu(by_peer[REF])} | "
          f"{median_cpu(by_peer[BASE])} | {cpu_cell(by_peer, REF, BASE)} | {ok} |")
    w("")
    idle = {r["peer"]: r["rss_kib"] for r in rows if r["section"] == "h2h_idle"}
    met = "yes" if idle.get(REF, 1 << 60) <= idle.get(BASE, 0) else "**no**"
    write_h2h_idle(rep, rows, [BASE], f"myflask's no higher than the baseline's: {met}.")


def write_round_load(rep, rows):
    """The machine's background load during each head-to-head round (and,
    in the CSV only, each head-to-head peer's idle RSS)."""
    for r in rows:
        if r["section"] == "h2h_idle":
            rep.csv.append(dict(section="h2h_idle", peer=r["peer"], rss_kib=r["rss_kib"]))
    bg = [r for r in rows if r["section"] == "round_load"]
    if not bg:
        return
    rep.w("Background (cores busy with other processes) by round, in round order: "
          + ", ".join(f"{r['background']:.2f}" for r in bg) + "; loadavg before each: "
          + "; ".join(r["load_before"] for r in bg) + ".\n")
    for r in bg:
        rep.csv.append(dict(section="round_load", round=r["round"], load_before=r["load_before"],
                            load_after=r["load_after"], cpu_busy=round(r["cpu_busy"], 1),
                            background_cores=round(r["background"], 2)))


def write_h2h_idle(rep, rows, peers, what):
    """Idle RSS of `peers` in the head-to-head set, against myflask's."""
    idle = {r["peer"]: r["rss_kib"] for r in rows if r["section"] == "h2h_idle"}
    if REF not in idle or not any(p in idle for p in peers):
        return
    cells = [f"{p} {idle[p]} KiB ({idle[p] - idle[REF]:+d})" for p in peers if p in idle]
    rep.w(f"Idle RSS (after the checks, before the warm-up): myflask {idle[REF]} KiB; " + ", ".join(cells)
          + f"; {what}\n")


def write_endpoints(rep, h2h, rows):
    """The management endpoints on ÷ off, the same build, GET rounds."""
    cells = [(c, peer, h2h[("h2h_get", c)][0]) for c in H2H_CONNS for peer in ENDPOINT_PEERS
             if ("h2h_get", c) in h2h and peer in h2h[("h2h_get", c)][0] and REF in h2h[("h2h_get", c)][0]]
    if not cells:
        return
    w = rep.w
    w("## Management endpoints on against off (the same build)\n")
    w(f"`{ENDPOINT_PEERS[0]}` is `{REF}` with `{' '.join(METRICS_ON)}`; `{ENDPOINT_PEERS[1]}` adds "
      f"`{' '.join(ENDPOINTS_ON[2:])}` (the status page keeps the in-flight registry). Ratio = its "
      f"req/s ÷ myflask's (endpoints off) in the same round; the goal is ≥ {SAME_BUILD_GOAL}× for the "
      f"median of the rounds. CPU ratio = CPU µs/req on ÷ off, median of the rounds.\n")
    w("| GET | endpoints on | on ÷ off (median) | per round | min–max | CPU µs/req on | CPU µs/req off | "
      "CPU ratio | met |")
    w("|---|---|---:|---|---:|---:|---:|---:|---|")
    for c, peer, by_peer in cells:
        xs = round_ratios(by_peer, peer, REF)
        med, per, spread = ratio_cells(xs)
        ok = "yes" if xs and median(list(xs.values())) >= SAME_BUILD_GOAL else "**no**"
        what = "metrics" if peer == ENDPOINT_PEERS[0] else "status + metrics + ping"
        w(f"| c={c} | {what} | {med} | {per} | {spread} | {median_cpu(by_peer[peer])} | "
          f"{median_cpu(by_peer[REF])} | {cpu_cell(by_peer, peer, REF)} | {ok} |")
    w("")
    write_h2h_idle(rep, rows, ENDPOINT_PEERS, "the difference is what the endpoints' state costs at rest.")


def write_fresh(rep, h2h):
    """The fresh-connection pairs (FRESH_PAIRS): myflask ÷ hyper configured
    the same way, with the spread of the rounds' ratios, and each one's
    server CPU per request; without keepalive a request is a connection, so
    that figure is also the CPU per connection. What a connection costs
    beyond the request it carries is (a) minus (c) at the same c: the same
    request with and without a connection of its own."""
    cells = [(c, a, b, what, h2h_pair(h2h, c, a, b)) for c in H2H_CONNS for a, b, what in FRESH_PAIRS]
    cells = [cell for cell in cells if cell[4]]
    if not cells:
        return
    w = rep.w
    w("## Fresh connections: myflask against hyper configured the same way\n")
    w("| configuration | c | myflask ÷ hyper (median of rounds) | rounds' ratios min–max | rounds | "
      "CPU µs/req myflask | CPU µs/req hyper | per connection |")
    w("|---|---:|---:|---:|---:|---:|---:|---|")
    cpu = {}
    for c, a, b, what, (x, n) in cells:
        by_peer = h2h[("h2h_get", c)][0]
        rb = {r["round"]: r for r in by_peer.get(b, [])}
        xs = [r["rps"] / rb[r["round"]]["rps"] for r in by_peer.get(a, [])
              if r["round"] in rb and rb[r["round"]]["rps"]]
        for p in (a, b):
            cpu[(p, c)] = median([r["cpu_us"] for r in by_peer[p] if r.get("cpu_us") is not None])
        per_conn = "= per request" if not next(s for s in PEERS if s.name == a).keep else "(a) − (c), below"
        w(f"| {what} | {c} | {fmt_r(x)} | {fmt_r(min(xs))}–{fmt_r(max(xs))} | {n} | "
          f"{fmt_us(cpu[(a, c)])} | {fmt_us(cpu[(b, c)])} | {per_conn} |")
    w("")
    (fa, ha, _), (fc, hc, _) = FRESH_PAIRS[0], FRESH_PAIRS[2]
    extra = []
    for c in H2H_CONNS:
        v = [cpu.get(k) for k in ((fa, c), (fc, c), (ha, c), (hc, c))]
        if None not in v:
            extra.append(f"c={c}: myflask {fmt_us(v[0] - v[1])}, hyper {fmt_us(v[2] - v[3])}")
    if extra:
        w("Server CPU per connection beyond its request, (a) − (c) in µs: " + "; ".join(extra) + ".\n")


def h2h_x(h2h, section, conns, peer):
    """myflask ÷ peer: median of the rounds' ratios, with how many rounds."""
    v = h2h.get((section, conns))
    if not v or not v[1].get(peer):
        return None
    return median(v[1][peer]), len(v[1][peer])


def h2h_pair(h2h, conns, a, b):
    """a ÷ b in GET req/s at c=conns: median of the rounds' ratios, with how
    many rounds (h2h_x is the same with a = myflask)."""
    v = h2h.get(("h2h_get", conns))
    if not v:
        return None
    rb = {r["round"]: r for r in v[0].get(b, [])}
    xs = [r["rps"] / rb[r["round"]]["rps"] for r in v[0].get(a, [])
          if r["round"] in rb and rb[r["round"]]["rps"]]
    return (median(xs), len(xs)) if xs else None


def h2h_p99(h2h, conns, peer):
    """The median of a peer's p99s over the GET rounds at c=conns."""
    v = h2h.get(("h2h_get", conns))
    if not v or peer not in v[0]:
        return None
    return median([r["p99_ms"] for r in v[0][peer]])


def write_targets(rep, h2h, rows, direct_rows, cold):
    """The targets of issue 4, each measured and judged; True if all are met."""
    w = rep.w
    w("## Targets (issue 4)\n")
    w("| target | measured | met |")
    w("|---|---|---|")
    results = speed_targets(rep, h2h) + footprint_targets(rep, rows, direct_rows, cold)
    for name, measured, ok in results:
        met = "n/a" if ok is None else "yes" if ok else "**no**"
        w(f"| {name} | {measured} | {met} |")
    w("")
    return all(ok for _, _, ok in results if ok is not None)


def ratio_target(h2h, section, c, peer, mf, other, goal, what):
    """A ratio target: head to head if it ran, else the single pass; [] when
    neither ran."""
    hx = h2h_x(h2h, section, c, peer)
    if hx:
        x, n = hx
        single = f"; single pass {mf['rps'] / other['rps']:.2f}×" if mf and other else ""
        return [(what, f"{x:.2f}× (median of {n} rounds{single})", x >= goal)]
    if mf and other:
        x = mf["rps"] / other["rps"]
        return [(what, f"{x:.2f}× (single pass)", x >= goal)]
    return []


def speed_targets(rep, h2h):
    """(name, measured, met) of the throughput and latency targets."""
    get, res = rep.get, []
    for c in (16, 64):
        mf, hy, tf, ce = get("get", REF, c), get("get", "hyper", c), get("get", "tokio-fastcgi", c), get("get", CEIL, c)
        res += ratio_target(h2h, "h2h_get", c, "hyper", mf, hy, 1.0, f"GET c={c}: myflask ≥ 1.0× hyper proxy_pass")
        res += ratio_target(h2h, "h2h_get", c, "tokio-fastcgi", mf, tf, 1.5, f"GET c={c}: myflask ≥ 1.5× tokio-fastcgi")
        res += ratio_target(h2h, "h2h_get", c, CEIL, mf, ce, 0.40, f"GET c={c}: myflask ≥ 0.40× ceiling")
    mf, hy = get("get", REF, 64), get("get", "hyper", 64)
    a, b = h2h_p99(h2h, 64, REF), h2h_p99(h2h, 64, "hyper")
    if a is not None and b is not None:
        res.append(("p99 at c=64 ≤ hyper's", f"{a:.2f} ms vs {b:.2f} ms (medians of the rounds)", a <= b))
    elif mf and hy:
        res.append(("p99 at c=64 ≤ hyper's", f"{mf['p99_ms']:.2f} ms vs {hy['p99_ms']:.2f} ms (single pass)",
                    mf["p99_ms"] <= hy["p99_ms"]))
    mf, hy = get("echo", REF, ECHO_CONNS, MIB), get("echo", "hyper", ECHO_CONNS, MIB)
    res += ratio_target(h2h, "h2h_echo", ECHO_CONNS, "hyper", mf, hy, 1.0, "1 MiB echo: myflask ≥ 1.0× hyper")
    return res


def footprint_targets(rep, rows, direct_rows, cold):
    """(name, measured, met) of the memory, cold-start and error targets."""
    get, res = rep.get, []
    mf, tf = get("echo", REF, ECHO_CONNS, MIB), get("echo", "tokio-fastcgi", ECHO_CONNS, MIB)
    if mf and tf:
        x = mf["rss_kib"] / tf["rss_kib"]
        res.append(("RSS under 1 MiB echo ≤ 0.5× tokio-fastcgi's",
                    f"{mib(mf['rss_kib'])} vs {mib(tf['rss_kib'])} MiB = {x:.2f}×", x <= 0.5))
    i = get("idle", REF)
    if i:
        res.append(("idle RSS ≤ 4 MiB", f"{mib(i['rss_kib'])} MiB", i["rss_kib"] <= 4096))
    a = next((c for c in cold if c["peer"] == "myflask-activated"), None)
    if a:
        res.append(("socket-activated cold start ≤ 10 ms",
                    f"{a['median_ms']:.1f} ms (median of {len(a['samples_ms'])})",
                    a["failures"] == 0 and 0 <= a["median_ms"] <= 10))
    tot = sum(r.get("non2xx", 0) + r.get("sock_err", 0) for r in rows)
    dtot = sum(r["non2xx"] + r["bad_len"] + r["io_errors"] for r in direct_rows)
    mfe = sum(r.get("non2xx", 0) + r.get("sock_err", 0) for r in rows if r["peer"].startswith("myflask"))
    res.append(("no errors in any run", f"{tot} through nginx (myflask rows: {mfe}), {dtot} direct", tot + dtot == 0))
    return res


def write_floor_context(rep, h2h):
    """The FastCGI floor beside the targets, as context that counts in no
    "met": floor ÷ hyper is the gap to hyper left with no server work at all
    (what nginx's FastCGI path costs against proxy_pass); myflask ÷ floor is
    what myflask's own work costs. Nothing for runs without the floor."""
    floor_cells = []
    for c in H2H_CONNS:
        cells = [floor_cell(rep, h2h, c, a, b) for a, b in ((FLOOR_PEER, "hyper"), (REF, FLOOR_PEER))]
        if any(x != "–" for x in cells):
            floor_cells.append((c, cells))
    if not floor_cells:
        return
    w = rep.w
    w("Context, not a target: the FastCGI floor (`bench/peers/floor`) answers every request with "
      "myflask's `GET /` reply, canned, parsing nothing but record headers, behind the same nginx "
      "config as myflask. floor ÷ hyper is the gap to hyper that remains with no server work at "
      "all (nginx's `fastcgi_pass`, with the params of myflask's snippet, against `proxy_pass`); "
      "myflask ÷ floor is what myflask's own work costs (below 1 if it costs throughput).\n")
    w("| GET | floor ÷ hyper proxy_pass | myflask ÷ floor |")
    w("|---|---:|---:|")
    for c, (fh, mff) in floor_cells:
        w(f"| c={c} | {fh} | {mff} |")
    w("")


def floor_cell(rep, h2h, c, a, b):
    """a ÷ b in GET req/s at c: head to head if it ran, else the single pass."""
    hx = h2h_pair(h2h, c, a, b)
    ga, gb = rep.get("get", a, c), rep.get("get", b, c)
    if hx:
        return f"{hx[0]:.2f}× (median of {hx[1]} rounds)"
    if ga and gb and gb["rps"]:
        return f"{ga['rps'] / gb['rps']:.2f}× (single pass)"
    return "–"


def write_errors(rep, errors):
    """The nginx error-log lines the run left."""
    if not errors:
        return
    rep.w("## nginx error logs\n")
    for e in errors:
        rep.w(f"- {e}")
    rep.w("")


USAGE = "usage: bench.py [--dry-run | --report results/raw/<date> | --help]"

if __name__ == "__main__":
    args = sys.argv[1:]
    if args in (["--help"], ["-h"]):
        print(__doc__.strip() + "\n\n" + USAGE)
        sys.exit(0)
    if args == ["--dry-run"]:
        sys.exit(dry_run())
    if len(args) == 2 and args[0] == "--report":
        sys.exit(rereport(args[1]))
    if args:
        sys.exit(f"bench.py: unknown arguments {' '.join(args)}\n{USAGE}")
    sys.exit(main())

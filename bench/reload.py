#!/usr/bin/python3
"""The reload point of the benchmark: what a client sees during a restart
and during a reload of myflask with one slow request in flight.

myflask runs behind nginx (upstream keepalive, as the package's snippets
set it up) on a unix socket that this script holds the way systemd holds
myflask.socket: it binds the socket once, starts myflask on it
(LISTEN_FDS=1), listens on a notify socket (NOTIFY_SOCKET, the sender's
pid from SCM_CREDENTIALS, MAINPID= followed from the main process only, as
NotifyAccess=main) and adopts the reload's successors (a child subreaper,
as PID 1 adopts them under systemd). Steady GET load runs through nginx
the whole time and every request's start and latency is kept. Around two
events, each with a GET /sleep?ms=SLOW in flight that still has SLOW - 1 s
to run:
  restart  SIGTERM to the main process, wait for it to exit, start a new
           one, wait for its READY=1 (systemctl restart)
  reload   `myflask reload --pid MAIN` (the unit's ExecReload=)
Prints requests/s, p50/p99/max latency of the requests started in the 5 s
from 0.5 s before each event, writes them to bench/results/reload.md, the
raw records to bench/results/raw/, and draws every request's latency over
time, restart beside reload, into bench/results/reload.png (matplotlib).

    bench/reload.sh            (installs python3-matplotlib, builds, runs this)
    /usr/bin/python3 bench/reload.py [--binary PATH] [--clients N] [--slow-ms MS]
    /usr/bin/python3 bench/reload.py --replot bench/results/raw/reload-<date>.json
"""
import argparse
import ctypes
import datetime
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
PR_SET_CHILD_SUBREAPER = 36
LISTEN_FD = 3
# The steady window: (start, length) in seconds since the load started.
STEADY = (1.0, 5.0)
# Requests at least this slow are drawn large: the ones that waited.
WAITED_MS = 100


class Manager:
    """The service manager's side: the listening socket, the notify socket,
    the main process and the processes it adopts."""

    def __init__(self, workdir, binary):
        self.dir, self.binary = workdir, binary
        self.sock_path = os.path.join(workdir, "fcgi.sock")
        self.main = None
        self.msgs = []  # (monotonic time, pid, text)
        self.cond = threading.Condition()
        self.exited = {}  # pid -> wait status
        self.started = []
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        self._listen()
        self._notify()
        self.log = open(os.path.join(workdir, "myflask.log"), "ab")

    def _listen(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.sock_path)
        s.listen(1024)
        # fd 3 in every child, as systemd passes the first socket.
        fd = s.detach()
        if fd != LISTEN_FD:
            os.dup2(fd, LISTEN_FD)
            os.close(fd)
        os.set_inheritable(LISTEN_FD, True)

    def _notify(self):
        self.notify_path = os.path.join(self.dir, "notify.sock")
        n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        n.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        n.bind(self.notify_path)
        threading.Thread(target=self._read_notify, args=(n,), daemon=True).start()
        threading.Thread(target=self._reap, daemon=True).start()

    def _read_notify(self, n):
        creds = struct.calcsize("3i")
        while True:
            data, anc, _, _ = n.recvmsg(4096, socket.CMSG_SPACE(creds))
            pid = next((struct.unpack("3i", d[:creds])[0] for lvl, typ, d in anc
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), 0)
            text = data.decode(errors="replace")
            with self.cond:
                self.msgs.append((time.monotonic(), pid, text))
                # NotifyAccess=main: only the main process names its successor.
                for line in text.splitlines():
                    if line.startswith("MAINPID=") and pid == self.main:
                        self.main = int(line[8:])
                        self.started.append(self.main)
                self.cond.notify_all()

    def _reap(self):
        # The main processes we started or were named (MAINPID=), adopted
        # or not; only these, so that subprocess keeps its children's status.
        while True:
            with self.cond:
                known = set(self.started) | {self.main}
            for pid in known - set(self.exited) - {None}:
                try:
                    done, status = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if done:
                    with self.cond:
                        self.exited[pid] = status
                        self.cond.notify_all()
            time.sleep(0.01)

    def start(self, limit=20):
        """Starts a main process on the socket; returns when it is READY=1."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LISTEN_FDS": "1",
               "LISTEN_FDNAMES": "fastcgi", "NOTIFY_SOCKET": self.notify_path,
               "MYFLASK_LOG_LEVEL": "warn"}
        # The shell sets LISTEN_PID to its own pid, which exec keeps.
        fa = [(os.POSIX_SPAWN_DUP2, self.log.fileno(), 1),
              (os.POSIX_SPAWN_DUP2, self.log.fileno(), 2)]
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", 'export LISTEN_PID=$$; exec "$0" serve', self.binary],
                             env, file_actions=fa)
        with self.cond:
            self.main = pid
            self.started.append(pid)
            since = len(self.msgs)
            ok = self.cond.wait_for(lambda: self._said(since, pid, "READY=1") or pid in self.exited,
                                    timeout=limit)
        if not ok or pid in self.exited:
            with open(self.log.name, "rb") as f:
                tail = f.read()[-2000:].decode(errors="replace")
            raise RuntimeError("myflask did not become ready:\n" + tail)
        return pid

    def _said(self, since, pid, line):
        return any(p == pid and line in t.splitlines() for _, p, t in self.msgs[since:])

    def stop(self, limit=60):
        """SIGTERM to the main process; returns when it has exited."""
        pid = self.main
        os.kill(pid, signal.SIGTERM)
        with self.cond:
            if not self.cond.wait_for(lambda: pid in self.exited, timeout=limit):
                raise RuntimeError("main process %d did not exit" % pid)

    def terminate_all(self):
        """SIGTERM to every server process still running (after a failure)."""
        with self.cond:
            left = set(self.started) - set(self.exited)
        for pid in left:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def reload(self, limit=60):
        """The unit's ExecReload=; returns the new main pid."""
        old = self.main
        r = subprocess.run([self.binary, "reload", "--pid", str(old)], capture_output=True,
                           timeout=limit)
        if r.returncode != 0:
            raise RuntimeError("reload failed: %s" % r.stderr.decode(errors="replace"))
        with self.cond:
            self.cond.wait_for(lambda: self.main != old, timeout=5)
        return self.main


NGINX_CONF = """daemon off; worker_processes 1; pid {d}/nginx.pid; user root;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;
    scgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp;
    upstream myflask {{ server unix:{sock}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            include /etc/nginx/fastcgi_params;
            fastcgi_param REQUEST_URI $request_uri;
            fastcgi_keep_conn on;
            fastcgi_pass myflask;
            fastcgi_read_timeout 120s;
        }}
    }}
}}
"""


def start_nginx(workdir, sock, port):
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(d=workdir, sock=sock, port=port))
    p = subprocess.Popen(["nginx", "-p", workdir, "-c", conf, "-e", os.path.join(workdir, "error.log")],
                         stdin=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nginx did not start")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Load:
    """Client threads, each a keep-alive connection to nginx sending
    GET /healthz in a loop; every request is kept as (start, latency, ok),
    start in seconds since t0 (monotonic)."""

    def __init__(self, port, clients):
        self.port, self.clients = port, clients
        self.records, self.lock = [], threading.Lock()
        self.stopping = threading.Event()
        self.t0 = time.monotonic()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=120)

    def _client(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        mine = []
        while not self.stopping.is_set():
            t = time.monotonic()
            try:
                conn.request("GET", "/healthz")
                r = conn.getresponse()
                ok = r.status == 200 and r.read().strip() == b"ok"
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            mine.append((t - self.t0, time.monotonic() - t, ok))
        with self.lock:
            self.records.extend(mine)


def slow_request(port, ms, out):
    """GET /sleep?ms=MS on its own connection; out gets start, end, answer."""
    def run():
        t = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=ms / 1000 + 60)
        try:
            conn.request("GET", "/sleep?ms=%d" % ms)
            r = conn.getresponse()
            body = r.read().decode(errors="replace")
            try:
                body = json.dumps(json.loads(body), separators=(",", ":"))
            except ValueError:
                pass
            answer = "%d %s" % (r.status, body.strip())
        except (OSError, http.client.HTTPException) as e:
            answer = "error: %s" % e
        out.update(start=t, end=time.monotonic(), answer=answer)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def event(name, load, port, slow_ms, action):
    """One event, with a slow request sent 1 s before it; returns its times
    (seconds since the load's t0) and the slow request's outcome."""
    slow = {}
    th = slow_request(port, slow_ms, slow)
    time.sleep(1.0)
    t = time.monotonic()
    detail = action()
    done = time.monotonic()
    th.join(timeout=slow_ms / 1000 + 60)
    return {"event": name, "at": t - load.t0, "took": done - t, "detail": detail,
            "slow_start": slow.get("start", t) - load.t0, "slow_end": slow.get("end", t) - load.t0,
            "slow_answer": slow.get("answer", "no answer")}


def pct(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, int(q * len(sorted_vals)))]


def window_stats(records, start, seconds=5.0, gap_span=None):
    """The requests started in [start, start + seconds); the longest time
    without a completion over gap_span seconds from start (default: seconds)."""
    lat = sorted(r[1] for r in records if start <= r[0] < start + seconds)
    failed = sum(1 for r in records if start <= r[0] < start + seconds and not r[2])
    # The longest time in the window in which no request completed.
    end = start + (gap_span or seconds)
    ends = sorted([start, end] + [r[0] + r[1] for r in records if start < r[0] + r[1] < end])
    gap = max(b - a for a, b in zip(ends, ends[1:]))
    return {"requests": len(lat), "rps": len(lat) / seconds, "failed": failed, "gap_ms": gap * 1e3,
            "p50_ms": pct(lat, 0.50) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "max_ms": (lat[-1] if lat else float("nan")) * 1e3}


def plot(records, events, path, before=3.0, after=12.0):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(events), figsize=(12, 4.6), sharey=True)
    for ax, ev in zip(axes, events):
        pts = [(r[0] - ev["at"], r[1] * 1e3, r[2]) for r in records
               if ev["at"] - before <= r[0] <= ev["at"] + after]
        quick = [p for p in pts if p[2] and p[1] < WAITED_MS]
        waited = [p for p in pts if p[2] and p[1] >= WAITED_MS]
        ax.scatter([p[0] for p in quick], [p[1] for p in quick], s=3, alpha=0.35,
                   color="tab:blue", linewidths=0, label="GET /healthz (one dot per request)")
        ax.scatter([p[0] for p in waited], [p[1] for p in waited], s=28, color="tab:purple",
                   label="... one that waited >= %d ms" % WAITED_MS)
        top = max(pts, key=lambda p: p[1], default=None)
        if top:
            tx = top[0] + 1.5 if top[0] < after / 2 else top[0] - 6
            ax.annotate("longest shown: %.2f s" % (top[1] / 1e3), (top[0], top[1]), xytext=(tx, top[1] * 0.25),
                        arrowprops={"arrowstyle": "->"}, fontsize=9)
        bad = [p for p in pts if not p[2]]
        if bad:
            ax.scatter([p[0] for p in bad], [p[1] for p in bad], s=12, color="tab:red", label="failed")
        ax.axvspan(ev["slow_start"] - ev["at"], ev["slow_end"] - ev["at"], color="tab:orange", alpha=0.12,
                   label="the slow request (/sleep) in flight")
        ax.axvline(0, color="black", lw=1)
        w = ev["window"]
        ax.set_title("%s: max %.0f ms, p99 %.1f ms, %.0f req/s\n(started in the 5 s from -0.5 s), no answer for %.0f ms"
                     % (ev["label"], w["max_ms"], w["p99_ms"], w["rps"], w["gap_ms"]), fontsize=10)
        ax.set_xlabel("request start, seconds from the %s" % ev["event"])
        ax.set_xlim(-before, after)
        ax.set_yscale("log")
        ax.set_ylim(0.05, 3e4)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms, log scale)")
    axes[0].legend(loc="center", fontsize=8)
    fig.suptitle("myflask behind nginx, steady GET load, one 10 s request in flight: restart vs reload")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(events, baseline, args, started):
    """The Markdown table (also printed)."""
    lines = ["# Restart vs reload with a slow request in flight",
             "",
             "Run %s UTC by bench/reload.py: %d keep-alive clients sending GET /healthz through nginx "
             "(upstream keepalive 16) to myflask on a held unix socket; a GET /sleep?ms=%d starts 1 s "
             "before each event. Figures: the requests started in the 5 s from 0.5 s before the event; "
             "\"no answer for\" is the longest time, from 0.5 s before the event to 1 s after the slow "
             "request ended, in which no request completed."
             % (started, args.clients, args.slow_ms),
             "",
             "| window | requests/s | p50 ms | p99 ms | max ms | no answer for ms | failed | event took s | slow request |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for label, w, took, slow in [("steady (no event, no slow request)", baseline, None, None)] + [
            (e["label"], e["window"], e["took"], e["slow_answer"]) for e in events]:
        lines.append("| %s | %.0f | %.2f | %.2f | %.1f | %.1f | %d | %s | %s |" % (
            label, w["rps"], w["p50_ms"], w["p99_ms"], w["max_ms"], w["gap_ms"], w["failed"],
            "-" if took is None else "%.2f" % took, slow or "-"))
    return "\n".join(lines) + "\n"


def run(args, workdir):
    m = Manager(workdir, args.binary)
    port = free_port()
    nginx = start_nginx(workdir, m.sock_path, port)
    try:
        first = m.start()
        load = Load(port, args.clients)
        load.start()
        # 1 s of warm-up, then the 5 s of the steady window.
        time.sleep(STEADY[0] + STEADY[1] + 0.5)
        events = []

        def restart():
            old = m.main
            m.stop()
            return "MainPID %d -> %d" % (old, m.start())

        def reload():
            old = m.main
            return "MainPID %d -> %d" % (old, m.reload())
        for name, label, action in [("restart", "restart (stop, then start)", restart),
                                    ("reload", "reload (new process takes over)", reload)]:
            ev = event(name, load, port, args.slow_ms, action)
            ev["label"] = label
            events.append(ev)
            print("%s: %s, took %.2f s, slow request: %s" % (name, ev["detail"], ev["took"],
                                                              ev["slow_answer"]), file=sys.stderr)
            time.sleep(args.settle)
        load.stop()
        m.stop()
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)
        m.terminate_all()
    records = sorted(load.records)
    for ev in events:
        # The gap: up to 1 s after the slow request ended (a restart's lasts that long).
        ev["window"] = window_stats(records, ev["at"] - 0.5, gap_span=ev["slow_end"] - ev["at"] + 1.5)
    baseline = window_stats(records, STEADY[0], STEADY[1])
    return first, records, events, baseline


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.path.join(REPO, "target/release/myflask"))
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--slow-ms", type=int, default=10000)
    ap.add_argument("--settle", type=float, default=4.0, help="seconds of load after each event")
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--replot", metavar="RAW_JSON", help="only draw reload.png again from a run's raw file")
    args = ap.parse_args()
    if args.replot:
        with open(args.replot) as f:
            raw = json.load(f)
        plot(raw["records"], raw["events"], os.path.join(args.out, "reload.png"), after=args.slow_ms / 1000 + 2)
        return 0
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    with tempfile.TemporaryDirectory(prefix="myflask-reload-") as workdir:
        _, records, events, baseline = run(args, workdir)
    md = report(events, baseline, args, started)
    print(md)
    os.makedirs(os.path.join(args.out, "raw"), exist_ok=True)
    stamp = started.replace(" ", "-").replace(":", "")
    with open(os.path.join(args.out, "raw", "reload-%s.json" % stamp), "w") as f:
        json.dump({"events": events, "baseline": baseline, "records": records}, f)
    with open(os.path.join(args.out, "reload.md"), "w") as f:
        f.write(md + "\n![latency over time](reload.png)\n")
    plot(records, events, os.path.join(args.out, "reload.png"), after=args.slow_ms / 1000 + 2)
    bad = sum(1 for r in records if not r[2])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

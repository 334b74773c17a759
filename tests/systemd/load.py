#!/usr/bin/python3
"""Bounded HTTP load through nginx for the systemd test bed (stdlib only).

Runs --concurrency workers for --duration seconds against --host:--port. Every
request uses a fresh client connection and is one of: GET /healthz (body "ok"),
GET /request?i=N (JSON), POST /echo with a 64 KiB body (must come back byte for
byte; nginx does not retry a POST on another upstream connection, so a request
dropped by a restarting server shows up as a failure). Any status other than 200,
a wrong body, or a connection error counts as a failure.
With --app PREFIX the requests go to the example app (examples/hello-app)
mounted at PREFIX instead: GET PREFIX/healthz ("ok"), GET PREFIX/hello/wN
("Hello, wN!"), POST PREFIX/words with a 64 KiB text body (its word and byte
count must come back).
Writes a JSON summary to --out and prints one summary line. The summary keeps
every request as [start (wall clock, s), latency (s), ok (1/0)] in "records"
and the longest latency in "max_latency_s", so that a reload or a restart
driven from outside can be measured against its own time window:

    load.py window OUT.json... --start T0 --end T1

prints, as JSON, the requests that started in [T0, T1] (wall clock, e.g.
`date +%s.%N` before and after `systemctl reload`) or were in flight at T0:
their count, failures, longest latency, and the longest time in [T0, T1]
in which no request of any of the files completed.
"""
import argparse
import http.client
import json
import os
import sys
import threading
import time


def window(argv):
    """The `window` command: the requests of OUT files around [start, end]."""
    ap = argparse.ArgumentParser(prog="load.py window")
    ap.add_argument("files", nargs="+")
    ap.add_argument("--start", type=float, required=True)
    ap.add_argument("--end", type=float, required=True)
    a = ap.parse_args(argv)
    recs = []
    for f in a.files:
        with open(f) as fh:
            recs.extend(json.load(fh)["records"])
    hit = [r for r in recs
           if a.start <= r[0] <= a.end or (r[0] < a.start < r[0] + r[1])]
    # Completions inside the window, with its ends, bound the quiet times.
    ends = sorted([a.start, a.end] + [r[0] + r[1] for r in recs
                                      if a.start < r[0] + r[1] < a.end])
    gap = max(b - e for e, b in zip(ends, ends[1:])) if len(ends) > 1 else 0.0
    worst = max(hit, key=lambda r: r[1]) if hit else None
    print(json.dumps({
        "requests": len(hit),
        "failed": sum(1 for r in hit if not r[2]),
        "max_latency_s": round(worst[1], 3) if worst else 0.0,
        "max_latency_started_at": round(worst[0] - a.start, 3) if worst else None,
        "longest_gap_s": round(gap, 3),
        "window_s": round(a.end - a.start, 3),
    }))


def main():
    if sys.argv[1:2] == ["window"]:
        return window(sys.argv[2:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--app", metavar="PREFIX", help="load the example app mounted at PREFIX")
    a = ap.parse_args()

    echo_body = os.urandom(64 * 1024)
    lock = threading.Lock()
    stats = {"total": 0, "ok": 0, "by_path": {}, "failures": [], "records": []}
    t0 = time.monotonic()
    deadline = t0 + a.duration

    words = b"lorem ipsum " * (64 * 1024 // 12)

    def request_for(i):
        """(method, path, body, expected body or None) of request i."""
        kind = i % 3
        if a.app is not None:
            if kind == 0:
                return "GET", a.app + "/healthz", None, b"ok\n"
            if kind == 1:
                return "GET", "%s/hello/w%d" % (a.app, i), None, b"Hello, w%d!\n" % i
            return "POST", a.app + "/words", words, b"%d words, %d bytes\n" % (len(words.split()), len(words))
        if kind == 0:
            return "GET", "/healthz", None, None
        if kind == 1:
            return "GET", "/request?i=%d" % i, None, None
        return "POST", "/echo", echo_body, echo_body

    def one(i):
        kind = i % 3
        method, path, body, want = request_for(i)
        conn = http.client.HTTPConnection(a.host, a.port, timeout=a.timeout)
        try:
            hdrs = {"Connection": "close"}
            if body is not None:
                hdrs["Content-Type"] = "application/octet-stream"
            conn.request(method, path, body=body, headers=hdrs)
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                return path, "status %d" % r.status
            if a.app is None and kind == 0 and data.strip() != b"ok":
                return path, "body %r" % data[:40]
            if want is not None and data != want:
                return path, "body mismatch (%d bytes back: %r)" % (len(data), data[:40])
            return path, None
        except Exception as e:  # noqa: BLE001 - every error is a failed request
            return path, "%s: %s" % (type(e).__name__, e)
        finally:
            conn.close()

    def worker(w):
        i = w
        while time.monotonic() < deadline:
            started, m0 = time.time(), time.monotonic()
            path, err = one(i)
            latency = time.monotonic() - m0
            key = path.split("?")[0]
            with lock:
                stats["records"].append([round(started, 4), round(latency, 4), int(err is None)])
                stats["total"] += 1
                stats["by_path"][key] = stats["by_path"].get(key, 0) + 1
                if err is None:
                    stats["ok"] += 1
                else:
                    stats["failures"].append(
                        {"t": round(time.monotonic() - t0, 3), "path": path, "error": err})
            i += a.concurrency

    ts = [threading.Thread(target=worker, args=(w,)) for w in range(a.concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - t0
    stats["elapsed_s"] = round(elapsed, 2)
    stats["failed"] = len(stats["failures"])
    stats["rate_per_s"] = round(stats["total"] / elapsed, 1) if elapsed else 0
    stats["concurrency"] = a.concurrency
    stats["max_latency_s"] = max((r[1] for r in stats["records"]), default=0.0)
    with open(a.out, "w") as f:
        json.dump(stats, f, indent=1)
    print("load: %d requests in %.1f s (%.1f req/s, concurrency %d), %d failed, longest %.3f s"
          % (stats["total"], elapsed, stats["rate_per_s"], a.concurrency, stats["failed"],
             stats["max_latency_s"]))


if __name__ == "__main__":
    main()

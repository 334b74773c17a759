#!/bin/bash
# End-to-end test of the myflask .deb under a real systemd (PID 1), journald,
# dbus, nginx and dpkg: `systemd-nspawn --boot` of a debootstrapped Debian 12
# root (see ../shared/docs/systemd-testbed.md for how and why).
#
#   tests/systemd/run.sh
#
# Needs root with CAP_SYS_ADMIN and a writable /sys/fs/cgroup (not an
# unprivileged container), and the Debian archive (host tools + debootstrap;
# ~53 MB once, then cached). Installs its host tools itself.
#
# Environment:
#   SDTEST_WORK     work dir (default: <repo>/target/sdtest). Holds cache/ (the
#                   pristine rootfs, ~260 MB), run/ (this run's copy) and logs/.
#   SDTEST_DEB      use this .deb instead of building one with packaging/debian/build.sh
#   SDTEST_NEW_DEB  the newer myflask .deb check 7 upgrades to (default: the
#                   binary in target/release packaged again with
#                   `build.sh --no-build --revision <rev>+sdtest1`)
#   SDTEST_APP_DEB  use this .deb of examples/hello-app instead of building it
#                   with `cargo myflask deb` (its release build: ~3.5 min on 2 cores)
#   SDTEST_MIRROR   Debian mirror (default: from the host's apt sources)
#   SDTEST_REBUILD=1  rebuild the cached rootfs
#   SDTEST_KEEP=1   leave the bed running at the end (prints how to enter it)
#   SDTEST_LOAD_SECONDS  duration of the load in check 5 (default 20)
#   SDTEST_TIMEOUT  hard limit for the whole run in seconds (default 1200)
#   SDTEST_CHECKS   run only these checks (space-separated names, e.g. "1-install 2-nginx"; debugging)
#
# Output: one `PASS name` / `FAIL name` line per check (details indented above
# it), then `N passed, N failed`. Exit status 0 only if every check passed.
set -uo pipefail
exec </dev/null

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
WORK=${SDTEST_WORK:-$root/target/sdtest}
CACHE_VERSION=1
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,libpam-systemd,libnss-systemd,init-system-helpers,python3,curl,nginx-light,libfcgi-bin,procps,iproute2
MACHINE=sdtest-bed
LOAD_SECONDS=${SDTEST_LOAD_SECONDS:-20}
WATCHDOG_SEC=10 RESTART_SEC=1   # must match systemd/app.service's defaults
# The example app packaged beside myflask (tests/systemd/apps.sh).
APP_NAME=hello-app APP_PREFIX=/hello
CGROUP_ROOTS="/sys/fs/cgroup/systemd /sys/fs/cgroup/unified"
BED_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

RUN=$WORK/run
LOGS=$WORK/logs
SHARE=$RUN/share
ROOTFS=$RUN/rootfs
NSPID= LEADER=
T_START=$(date +%s.%N)

say() { echo "$*"; }
note() { echo "    $*"; }
die() { echo "run.sh: fatal: $*" >&2; exit 2; }
elapsed() { python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$(date +%s.%N)"; }

[ "$(id -u)" = 0 ] || die "must run as root"

# ---------------------------------------------------------------- the bed
stop_bed() {
    local pid=$1
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 0
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd-nspawn ] || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do [ -d "/proc/$pid" ] || break; sleep 0.2; done
    if [ -d "/proc/$pid" ]; then kill -KILL "$pid" 2>/dev/null; sleep 0.5; fi
}

remove_cgroups() {
    local h
    for h in $CGROUP_ROOTS; do
        [ -d "$h/$MACHINE" ] && find "$h/$MACHINE" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    # nspawn's propagation dir (the host's /run is on disk, see testbed doc pitfall 7)
    rmdir "/run/systemd/nspawn/propagate/$MACHINE" 2>/dev/null
    true
}

cleanup() {
    local rc=$?
    [ -n "${WATCHDOG_PID:-}" ] && kill "$WATCHDOG_PID" 2>/dev/null
    if [ -n "$NSPID" ]; then
        if [ "${SDTEST_KEEP:-0}" = 1 ] && [ -d "/proc/$NSPID" ]; then
            echo "SDTEST_KEEP=1: bed left running; enter it with: nsenter -t $LEADER -a /bin/bash" >&2
            echo "$NSPID" >"$WORK/nspawn.pid"
            return
        fi
        journal_dump
        stop_bed "$NSPID"
        remove_cgroups
        rm -f "$WORK/nspawn.pid"
        [ -d "/proc/$NSPID" ] || rm -rf "$ROOTFS"    # ~270 MB; the logs are in $LOGS
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Hard limit for the whole run.
( sleep "${SDTEST_TIMEOUT:-1200}" & sp=$!; trap 'kill $sp 2>/dev/null; exit 0' TERM; wait $sp
  echo "run.sh: timeout after ${SDTEST_TIMEOUT:-1200}s" >&2; kill -TERM $$ ) &
WATCHDOG_PID=$!

# Run a command inside the bed; its exit status comes back. Default limit 120 s.
bed() { timeout "${BED_TIMEOUT:-120}" nsenter -t "$LEADER" -a env -i PATH=$BED_PATH HOME=/root LANG=C.UTF-8 \
        SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@"; }
bedsh() { bed /bin/sh -c "$1"; }
prop() { bed systemctl show -P "$2" "$1" 2>/dev/null; }   # prop UNIT PROPERTY

journal_dump() {
    [ -n "$LEADER" ] && [ -d "/proc/$LEADER" ] || return 0
    # Without the per-request lines (there are ~100 000 of them), to keep the logs small.
    local req=' myflask\[[0-9]+\]: (GET|POST|HEAD|PUT|DELETE|PATCH|OPTIONS) '
    BED_TIMEOUT=30 bed journalctl -b --no-pager -o short-precise 2>&1 | grep -Ev "$req" >"$LOGS/journal-boot.txt"
    BED_TIMEOUT=30 bed journalctl -b -u myflask.service -u myflask.socket -u myflask-http.socket -o short-precise \
        --no-pager 2>&1 | grep -Ev "$req" >"$LOGS/journal-myflask.txt"
    BED_TIMEOUT=30 bed journalctl -b -u myflask.service -o verbose -n 20 --no-pager >"$LOGS/journal-myflask-last20-verbose.txt" 2>&1
    BED_TIMEOUT=30 bed journalctl -b -u nginx.service --no-pager >"$LOGS/journal-nginx.txt" 2>&1
    BED_TIMEOUT=30 bed journalctl -b -u "$APP_NAME.service" -u "$APP_NAME.socket" -o short-precise --no-pager 2>&1 |
        grep -Ev " $APP_NAME\[[0-9]+\]: (GET|POST) " >"$LOGS/journal-$APP_NAME.txt"
    [ -f "$ROOTFS/var/log/nginx/error.log" ] && cp "$ROOTFS/var/log/nginx/error.log" "$LOGS/nginx-error.log"
    true
}

# ---------------------------------------------------------------- checks
PASSED=0 FAILED=0 FAILED_NAMES=() CHECK_BAD=0
ok() { local d=$1; shift; if "$@"; then note "ok      $d"; else note "NOT OK  $d"; CHECK_BAD=$((CHECK_BAD + 1)); fi; }
check() {
    local name=$1 fn=$2 t0
    if [ -n "${SDTEST_CHECKS:-}" ] && [[ " $SDTEST_CHECKS " != *" $name "* ]]; then return; fi
    t0=$(date +%s.%N)
    CHECK_BAD=0
    say "--- $name"
    if [ -z "$LEADER" ] && [ "$fn" != check_verify ]; then
        note "NOT OK  no bed"; CHECK_BAD=1
    else
        # In a subshell, so that a check that dies half-way (a shell error) is a FAIL.
        rm -f "$RUN/check.done"
        ( "$fn"; touch "$RUN/check.done"; exit $((CHECK_BAD > 0 ? 1 : 0)) )
        CHECK_BAD=$?
        [ -f "$RUN/check.done" ] || { note "NOT OK  the check did not run to its end"; CHECK_BAD=1; }
    fi
    note "($(elapsed "$t0") s)"
    if [ "$CHECK_BAD" = 0 ]; then say "PASS $name"; PASSED=$((PASSED + 1))
    else say "FAIL $name"; FAILED=$((FAILED + 1)); FAILED_NAMES+=("$name"); fi
}
eq() { [ "$1" = "$2" ] || { note "        got '$1', want '$2'"; return 1; }; }
contains() { case "$1" in *"$2"*) return 0 ;; esac; note "        '$2' not found in: $(head -c 300 <<<"$1")"; return 1; }
le() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$1" "$2" 2>/dev/null ||
       { note "        $1 > $2"; return 1; }; }
not() { ! "$@"; }
wait_for() { local secs=$1; shift; local end=$((SECONDS + secs)); while ! "$@"; do
             [ $SECONDS -ge $end ] && return 1; sleep 0.2; done; }
http_code() { bed curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$@" 2>&1; }
score_of() { sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$1" | tail -n1; }
listening() { bed ss -xlnH 2>/dev/null | grep -c " $1 " ; }

# Host side: systemd-analyze verify / offline security on the packaged units.
check_verify() {
    local vroot=$RUN/verify-root u out deb units rc
    rm -rf "$vroot"; mkdir -p "$vroot/usr/lib/systemd"
    cp -a "$CACHED/usr/lib/systemd/system" "$vroot/usr/lib/systemd/"
    for deb in "$DEB" "$APP_DEB"; do
        dpkg-deb -x "$deb" "$vroot"
        units=$(dpkg-deb -c "$deb" | grep -o 'usr/lib/systemd/system/[^ ]*\.\(socket\|service\)$' | xargs -n1 basename)
        for u in $units; do
            out=$(MANPATH=$vroot/usr/share/man timeout 60 systemd-analyze verify --root="$vroot" "/usr/lib/systemd/system/$u" 2>&1)
            ok "systemd-analyze verify $u${out:+ ($out)}" [ $? = 0 ]
            ok "packaged $u has no template marker left" not grep -q '{{' "$vroot/usr/lib/systemd/system/$u"
        done
        # lintian: no errors, no warnings (overrides, each with its reason,
        # come from packaging/debian/lintian-overrides).
        out=$(timeout 600 lintian --fail-on error,warning "$deb" 2>>"$LOGS/lintian.stderr"); rc=$?
        printf '%s\n' "$out" >>"$LOGS/lintian.txt"
        ok "lintian $(basename "$deb"): 0 errors, 0 warnings${out:+ ($(head -c 400 <<<"$out"))}" [ $rc = 0 ]
    done
    ok "myflask ships myflask.socket, myflask.service, myflask-http.socket" \
        eq "$(cd "$vroot/usr/lib/systemd/system" && ls myflask.socket myflask.service myflask-http.socket 2>&1 | wc -l)" 3
    # Negative control: verify must be able to fail.
    sed 's|^ExecStart=.*|ExecStart=/usr/sbin/no-such-binary serve|' "$vroot/usr/lib/systemd/system/myflask.service" \
        >"$vroot/usr/lib/systemd/system/broken-myflask.service"
    ! MANPATH=$vroot/usr/share/man timeout 60 systemd-analyze verify --root="$vroot" \
        /usr/lib/systemd/system/broken-myflask.service >/dev/null 2>&1
    ok "negative control: verify fails for a missing ExecStart binary" [ $? = 0 ]
    rm -f "$vroot/usr/lib/systemd/system/broken-myflask.service"
    note "offline exposure (host): myflask.service ${OFFLINE_SCORE:-?}, $APP_NAME.service ${APP_OFFLINE_SCORE:-?}"
    ok "offline exposure of myflask.service <= 1.0" le "${OFFLINE_SCORE:-99}" 1.0
    ok "offline exposure of $APP_NAME.service <= 1.0" le "${APP_OFFLINE_SCORE:-99}" 1.0
}

check_bed() {
    local st failed
    ok "PID 1 is systemd" eq "$(bed readlink /proc/1/exe)" /usr/lib/systemd/systemd
    note "$(bed systemctl --version | head -n1)"
    st=$(BED_TIMEOUT=150 bed systemctl is-system-running --wait 2>&1)
    ok "system running" eq "$st" running
    failed=$(bed systemctl list-units --failed --plain --no-legend)
    ok "no failed units${failed:+ ($failed)}" [ -z "$failed" ]
    ok "journald active" eq "$(bed systemctl is-active systemd-journald.service)" active
    ok "nginx active" eq "$(bed systemctl is-active nginx.service)" active
}

check_install() {
    local st
    bed dpkg -i /mnt/share/myflask.deb >"$LOGS/dpkg-i.log" 2>&1
    ok "dpkg -i exits 0" [ $? = 0 ]
    ok "myflask.socket enabled" eq "$(bed systemctl is-enabled myflask.socket)" enabled
    ok "myflask.socket active" eq "$(bed systemctl is-active myflask.socket)" active
    ok "/run/myflask/fcgi.sock listening" eq "$(listening /run/myflask/fcgi.sock)" 1
    st=$(bed stat -c '%U:%G %a %F' /run/myflask/fcgi.sock)
    ok "socket is root:www-data 660" eq "$st" "root:www-data 660 socket"
    ok "/run/myflask is root 755" eq "$(bed stat -c '%U %a' /run/myflask)" "root 755"
    ok "myflask.service inactive before the first connection" eq "$(bed systemctl is-active myflask.service)" inactive
    ok "myflask-http.socket shipped disabled" eq "$(bed systemctl is-enabled myflask-http.socket)" disabled
    ok "myflask-http.socket inactive" eq "$(bed systemctl is-active myflask-http.socket)" inactive
    ok "nothing listens on /run/myflask/http.sock" eq "$(listening /run/myflask/http.sock)" 0
    ok "/etc/default/myflask is a conffile" contains "$(bed dpkg-query -W -f='${Conffiles}' myflask)" /etc/default/myflask
    ok "man page installed" bed test -f /usr/share/man/man8/myflask.8.gz
}

check_nginx() {
    local body code exec_ts active_ts env fd3 listen_ino
    bedsh 'cp /usr/share/doc/myflask/examples/nginx-site.conf /etc/nginx/sites-available/myflask &&
           ln -sf ../sites-available/myflask /etc/nginx/sites-enabled/myflask &&
           rm -f /etc/nginx/sites-enabled/default' >>"$LOGS/nginx-setup.log" 2>&1
    ok "nginx -t with the shipped snippets" bed nginx -t -q
    ok "systemctl restart nginx" bed systemctl restart nginx.service
    ok "snippet has fastcgi_keep_conn on" bed grep -q '^fastcgi_keep_conn on;' /etc/nginx/snippets/myflask.conf
    ok "snippet sends REQUEST_URI" bed grep -Eq '^fastcgi_param +REQUEST_URI +\$request_uri;' /etc/nginx/snippets/myflask.conf
    ok "upstream has keepalive" bed grep -Eq '^ *keepalive [0-9]+;' /etc/nginx/snippets/myflask-upstream.conf
    ok "service still inactive" eq "$(bed systemctl is-active myflask.service)" inactive

    code=$(bed curl -sS --max-time 10 -o /tmp/healthz.out -w '%{http_code}' http://127.0.0.1/healthz 2>&1)
    ok "GET /healthz through nginx -> 200" eq "$code" 200
    ok "/healthz body is ok" eq "$(bed cat /tmp/healthz.out | tr -d '\r\n')" ok
    ok "first connection started myflask.service" eq "$(bed systemctl is-active myflask.service)" active
    ok "service Type=notify" eq "$(prop myflask.service Type)" notify
    exec_ts=$(prop myflask.service ExecMainStartTimestampMonotonic)
    active_ts=$(prop myflask.service ActiveEnterTimestampMonotonic)
    note "exec at ${exec_ts}us, active (READY=1) at ${active_ts}us (monotonic)"
    ok "active only after READY=1 (active after exec)" [ "${active_ts:-0}" -gt "${exec_ts:-0}" ]
    ok "journal: 'Started' logged" bedsh "journalctl -b -u myflask.service --no-pager | grep -q 'Started myflask.service'"
    env=$(bed systemctl show -P Environment myflask.service; bedsh "tr '\0' '\n' </proc/\$(systemctl show -P MainPID myflask.service)/environ")
    ok "service got LISTEN_FDNAMES=fastcgi" contains "$env" LISTEN_FDNAMES=fastcgi
    fd3=$(bedsh 'readlink /proc/$(systemctl show -P MainPID myflask.service)/fd/3')
    listen_ino=$(bedsh "ss -xlnH | awk '\$5==\"/run/myflask/fcgi.sock\" {print \$6}'")
    ok "service fd 3 is the listening socket (inode $listen_ino)" eq "$fd3" "socket:[$listen_ino]"

    body=$(bed curl -sS --max-time 10 'http://127.0.0.1/request?x=1&y=two' 2>&1)
    printf '%s\n' "$body" >"$LOGS/request.json"
    ok "GET /request shows REQUEST_URI" contains "$body" '/request?x=1&y=two'
    ok "GET /request shows SERVER_PROTOCOL" contains "$body" SERVER_PROTOCOL
    ok "GET /request shows REMOTE_ADDR" contains "$body" REMOTE_ADDR
    ok "GET /request shows HTTP_HOST" contains "$body" HTTP_HOST
    # The shipped snippet lists the params myflask maps, not fastcgi_params.
    ok "GET /request: no CGI-script params (SCRIPT_NAME)" not contains "$body" SCRIPT_NAME

    code=$(bed curl -sS --max-time 20 -o /tmp/echo.out -w '%{http_code}' -H 'Content-Type: application/octet-stream' \
        --data-binary @/mnt/share/1m.bin http://127.0.0.1/echo 2>&1)
    ok "POST /echo 1 MiB -> 200" eq "$code" 200
    ok "1 MiB echo comes back intact" bed cmp -s /mnt/share/1m.bin /tmp/echo.out
    code=$(http_code http://127.0.0.1/no-such-page)
    ok "unknown path -> 404" eq "$code" 404
    ok "myflask request unix:/run/myflask/fcgi.sock /healthz -> ok" \
        eq "$(bed myflask request unix:/run/myflask/fcgi.sock /healthz 2>&1 | tr -d '\r\n')" ok
}

check_status_journal() {
    local status
    # Live: the server refreshes STATUS= every few seconds, so after the requests
    # of check 2 it must show a non-zero request count.
    wait_for 15 bedsh "systemctl status --full myflask.service --no-pager | grep -Eq 'Status: \".*[1-9][0-9]* requests.*in flight.*connections'"
    status=$(bed systemctl status --full myflask.service --no-pager 2>&1 | grep 'Status:')
    note "systemctl status: ${status# *}"
    ok "systemctl status shows the live STATUS= line (requests counted)" \
        grep -Eq '[1-9][0-9]* requests.*in flight.*connections' <<<"$status"
    bed curl -sS --max-time 10 -o /dev/null 'http://127.0.0.1/healthz?journal-probe=1'
    wait_for 10 bedsh "journalctl -u myflask -o json --no-pager | grep -q 'journal-probe=1'"
    bed journalctl -u myflask -o json --no-pager >"$LOGS/journal-myflask.json" 2>&1
    python3 - "$LOGS/journal-myflask.json" >"$LOGS/journal-check.txt" 2>&1 <<'EOF'
import json, sys
want = ["METHOD", "URI", "STATUS", "DURATION_US", "BYTES_OUT", "REQUEST_ID", "PEER", "TRANSPORT"]
found = None
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if "journal-probe=1" in str(e.get("URI", "")):
        found = e
if not found:
    print("no journal entry with URI=/healthz?journal-probe=1"); sys.exit(1)
missing = [k for k in want if k not in found]
print("entry:", {k: found.get(k) for k in want + ["SYSLOG_IDENTIFIER", "_TRANSPORT", "PRIORITY", "MESSAGE"]})
bad = []
if missing: bad.append("missing fields %s" % missing)
if found.get("METHOD") != "GET": bad.append("METHOD")
if str(found.get("STATUS")) != "200": bad.append("STATUS")
if found.get("SYSLOG_IDENTIFIER") != "myflask": bad.append("SYSLOG_IDENTIFIER")
if found.get("_TRANSPORT") != "journal": bad.append("_TRANSPORT (not native journal)")
if any(k.startswith("F_") for k in found): bad.append("F_-prefixed fields")
if bad: print("bad:", bad); sys.exit(1)
EOF
    local rc=$?
    note "$(tail -n2 "$LOGS/journal-check.txt" | head -c 600)"
    ok "journalctl -u myflask -o json: per-request entry with METHOD URI STATUS DURATION_US BYTES_OUT REQUEST_ID PEER TRANSPORT" [ $rc = 0 ]
}

# Issue 14 through the packaged, sandboxed service behind nginx: a traceparent
# reaches the access entry's TRACE_ID/SPAN_ID in journald, a slow request is
# in the journal while it still runs, /metrics is OpenMetrics with # EOF and
# the unix socket's listen queue is absent, not 0 (no netlink in the sandbox).
check_ops() {
    local tp=00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 t0 pid
    bed curl -sS --max-time 10 -o /dev/null -H "traceparent: $tp" 'http://127.0.0.1/request?trace-probe=1'
    wait_for 10 bedsh "journalctl -u myflask -o json --no-pager | grep -q 'trace-probe=1'"
    ok "journal: the traced request's access entry has TRACE_ID and SPAN_ID" \
        bedsh "journalctl -u myflask -o json --no-pager | grep 'trace-probe=1' |
               grep '\"TRACE_ID\":\"4bf92f3577b34da6a3ce929d0e0e4736\"' | grep -q '\"SPAN_ID\":\"00f067aa0ba902b7\"'"
    bedsh 'echo MYFLASK_SLOW_REQUEST_THRESHOLD=300 >>/etc/default/myflask && systemctl restart myflask.service'
    t0=$(date +%s.%N)
    bedsh "head -c 262144 /dev/zero | curl -sS --max-time 30 -o /dev/null -X POST --data-binary @- \
           -H 'Content-Type: application/octet-stream' 'http://127.0.0.1/upload?pace_ms=400&slow-probe=1'" &
    pid=$!
    ok "journal: the slow request's warning while it runs" \
        wait_for 10 bedsh "journalctl -u myflask --no-pager -p warning | grep -q 'slow request: POST /upload?pace_ms=400&slow-probe=1'"
    ok "... before the request ended" kill -0 "$pid"
    note "slow-log entry seen after $(elapsed "$t0") s"
    wait "$pid"
    bed curl -sS --max-time 10 -H 'Accept: application/openmetrics-text' http://127.0.0.1/metrics >"$LOGS/metrics.om" 2>&1
    ok "/metrics through nginx: OpenMetrics ending in # EOF" eq "$(tail -n1 "$LOGS/metrics.om")" "# EOF"
    ok "/metrics counts FastCGI requests" grep -Eq '^myflask_requests_total\{transport="fastcgi",code="2xx"\} [1-9]' "$LOGS/metrics.om"
    ok "sandboxed: no unix listen-queue series (netlink is not allowed)" not grep -q '^myflask_listen_queue_length{listener="unix:' "$LOGS/metrics.om"
    note "why: $(bedsh "journalctl -u myflask --no-pager -o cat | grep -m1 'reports no listen queue'")"
    bedsh "sed -i '/^MYFLASK_SLOW_REQUEST_THRESHOLD=/d' /etc/default/myflask && systemctl restart myflask.service"
}

check_watchdog() {
    local n0 pid0 t0 n1 pid1 took code
    n0=$(prop myflask.service NRestarts); pid0=$(prop myflask.service MainPID)
    ok "WatchdogUSec is ${WATCHDOG_SEC}s" eq "$(prop myflask.service WatchdogUSec)" "${WATCHDOG_SEC}s"
    t0=$(date +%s.%N)
    ok "systemctl kill -s SIGSTOP myflask" bed systemctl kill -s SIGSTOP myflask.service
    wait_for $((WATCHDOG_SEC + RESTART_SEC + 15)) bedsh "[ \"\$(systemctl show -P NRestarts myflask.service)\" -gt $n0 ] && [ \"\$(systemctl is-active myflask.service)\" = active ]"
    took=$(elapsed "$t0")
    n1=$(prop myflask.service NRestarts); pid1=$(prop myflask.service MainPID)
    note "NRestarts $n0 -> $n1, MainPID $pid0 -> $pid1, after $took s (limit WatchdogSec+RestartSec+5 = $((WATCHDOG_SEC + RESTART_SEC + 5)) s)"
    ok "NRestarts went up" [ "${n1:-0}" -gt "${n0:-0}" ]
    ok "new MainPID" [ "$pid1" != "$pid0" ] 
    ok "restarted within WatchdogSec + RestartSec + 5 s" le "$took" $((WATCHDOG_SEC + RESTART_SEC + 5))
    ok "journal: watchdog timeout" bedsh "journalctl -b -u myflask.service --no-pager | grep -q 'Watchdog timeout'"
    code=$(http_code http://127.0.0.1/healthz)
    ok "requests succeed again (GET /healthz -> 200)" eq "$code" 200
}

upstream_errors() { local n; n=$(bedsh "grep -c upstream /var/log/nginx/error.log || true" 2>/dev/null); echo "${n:-0}"; }
# Start the load generator in the bed in the background; sets LOAD_PID.
# Further arguments go to load.py (a later --concurrency overrides the 4).
start_load() { # secs out [load.py args]
    NGINX_ERRS0=$(upstream_errors)
    timeout $(($1 + 60)) nsenter -t "$LEADER" -a env -i PATH=$BED_PATH python3 /mnt/share/load.py \
        --duration "$1" --concurrency 4 --out "$2" "${@:3}" >"$LOGS/$(basename "$2" .json).txt" 2>&1 &
    LOAD_PID=$!
}
load_result() { # out-in-bed -> sets LOAD_TOTAL LOAD_FAILED LOAD_RATE
    local f=$LOGS/$(basename "$1")
    bed cat "$1" >"$f" 2>/dev/null
    LOAD_TOTAL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"])' "$f" 2>/dev/null || echo 0)
    LOAD_FAILED=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed"])' "$f" 2>/dev/null || echo -1)
    LOAD_RATE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rate_per_s"])' "$f" 2>/dev/null || echo 0)
    note "nginx error.log: $(( $(upstream_errors) - NGINX_ERRS0 )) new upstream errors (nginx retries failed GETs on a new connection, so not all reach the client)"
    if [ "$LOAD_FAILED" != 0 ]; then
        python3 -c 'import json,sys; [print("        failure:", x) for x in json.load(open(sys.argv[1]))["failures"][:10]]' "$f" 2>/dev/null
    fi
}

check_restart_under_load() {
    local i rc pids=() bad_restarts=0 pid sleep_s
    http_code http://127.0.0.1/healthz >/dev/null
    pids+=("$(prop myflask.service MainPID)")
    start_load "$LOAD_SECONDS" /tmp/load-restart.json
    sleep_s=$(python3 -c "print(max(0.2, ($LOAD_SECONDS - 2) / 10 - 0.3))")
    sleep 1
    for i in $(seq 1 10); do
        bed systemctl restart myflask.service >>"$LOGS/restarts.log" 2>&1; rc=$?
        pid=$(prop myflask.service MainPID)
        echo "restart $i rc=$rc MainPID=$pid t=$(elapsed "$T_START")" >>"$LOGS/restarts.log"
        [ $rc = 0 ] || bad_restarts=$((bad_restarts + 1))
        pids+=("$pid")
        sleep "$sleep_s"
    done
    wait "$LOAD_PID"; rc=$?
    ok "load generator finished" [ $rc = 0 ]
    load_result /tmp/load-restart.json
    note "$(cat "$LOGS/load-restart.txt" 2>/dev/null) during 10 restarts"
    ok "10 x systemctl restart myflask exit 0" eq "$bad_restarts" 0
    ok "11 distinct MainPIDs (${pids[*]})" eq "$(printf '%s\n' "${pids[@]}" | sort -u | grep -vc '^0$')" 11
    ok "requests were served (>= 100)" [ "$LOAD_TOTAL" -ge 100 ]
    ok "0 failed requests" eq "$LOAD_FAILED" 0
    ok "socket still active" eq "$(bed systemctl is-active myflask.socket)" active
}

check_crash() {
    local pid0 pid1 code
    pid0=$(prop myflask.service MainPID)
    ok "systemctl kill -s SIGKILL myflask" bed systemctl kill -s SIGKILL myflask.service
    sleep 0.2
    note "right after SIGKILL: service $(bed systemctl is-active myflask.service), socket $(bed systemctl is-active myflask.socket)"
    code=$(http_code http://127.0.0.1/healthz)
    ok "next request -> 200" eq "$code" 200
    pid1=$(prop myflask.service MainPID)
    note "MainPID $pid0 -> $pid1"
    ok "service running again under a new PID" [ "$pid1" != 0 -a "$pid1" != "$pid0" ]
    ok "service active" eq "$(bed systemctl is-active myflask.service)" active
    ok "socket still active" eq "$(bed systemctl is-active myflask.socket)" active
}

# dpkg -i of a newer version under load, with slow requests in flight
# (tests/systemd/reload.sh has start_slow, check_slow, load_window).
check_upgrade_under_load() {
    local sock_ts0 sock_ts1 pid0 pid1 rc n0 reloads0 old t0 t1
    # make sure the service runs, so that the upgrade has something to reload
    http_code http://127.0.0.1/healthz >/dev/null
    sock_ts0=$(prop myflask.socket ActiveEnterTimestampMonotonic); pid0=$(prop myflask.service MainPID)
    n0=$(prop myflask.service NRestarts)
    old=$(bed dpkg-query -W -f='${Version}' myflask)
    ok "/status before: package_version $old" contains "$(bed curl -sS --max-time 10 http://127.0.0.1/status)" "\"package_version\": \"$old\""
    reloads0=$(bedsh "journalctl -b -u myflask.service --no-pager | grep -c 'Reloaded myflask.service'")
    start_load 10 /tmp/load-upgrade.json --timeout 30
    sleep 2
    start_slow upgrade
    sleep 1
    t0=$(date +%s.%N)
    bed dpkg -i /mnt/share/myflask-new.deb >"$LOGS/dpkg-upgrade.log" 2>&1; rc=$?
    t1=$(date +%s.%N)
    ok "dpkg -i $old -> $NEW_VERSION exits 0 (took $(python3 -c "print('%.2f' % ($t1 - $t0))") s)" [ $rc = 0 ]
    wait "$LOAD_PID"
    load_result /tmp/load-upgrade.json
    note "$(cat "$LOGS/load-upgrade.txt" 2>/dev/null) during the upgrade"
    check_slow upgrade
    load_window "$t0" "$t1" "$LOGS/load-upgrade.json"
    note "upgrade: $WIN_N requests around dpkg -i, longest wait ${WIN_MAX} s"
    ok "no stall: longest wait ${WIN_MAX} s < ${RELOAD_MAX_WAIT_S} s" le "$WIN_MAX" "$RELOAD_MAX_WAIT_S"
    sock_ts1=$(prop myflask.socket ActiveEnterTimestampMonotonic); pid1=$(prop myflask.service MainPID)
    note "MainPID $pid0 -> $pid1; socket active since ${sock_ts0}us -> ${sock_ts1}us"
    ok "0 failed requests" eq "$LOAD_FAILED" 0
    ok "requests were served (>= 50)" [ "$LOAD_TOTAL" -ge 50 ]
    ok "installed version is $NEW_VERSION" eq "$(bed dpkg-query -W -f='${Version}' myflask)" "$NEW_VERSION"
    ok "/status: package_version $NEW_VERSION" \
        contains "$(bed curl -sS --max-time 10 http://127.0.0.1/status)" "\"package_version\": \"$NEW_VERSION\""
    ok "service was replaced (new MainPID)" [ "$pid1" != "$pid0" -a "$pid1" != 0 ]
    # Units and /etc/default/myflask unchanged: the reload path, not a restart.
    ok "reload path: NRestarts unchanged ($n0)" eq "$(prop myflask.service NRestarts)" "$n0"
    ok "reload path: journal has one more 'Reloaded myflask.service'" \
        eq "$(bedsh "journalctl -b -u myflask.service --no-pager | grep -c 'Reloaded myflask.service'")" $((reloads0 + 1))
    ok "reload path: postinst did not fall back to a restart" not grep -q 'restarting instead' "$LOGS/dpkg-upgrade.log"
    ok "new MainPID runs the installed /usr/sbin/myflask" eq "$(bed readlink "/proc/$pid1/exe")" /usr/sbin/myflask
    ok "socket was NOT restarted" eq "$sock_ts1" "$sock_ts0"
    ok "socket still enabled" eq "$(bed systemctl is-enabled myflask.socket)" enabled
    # An upgrade must not start an idle (socket-activated, not running) service.
    bed systemctl stop myflask.service
    bed dpkg -i /mnt/share/myflask-new.deb >>"$LOGS/dpkg-upgrade.log" 2>&1
    ok "same version again with the service stopped: dpkg -i exits 0" [ $? = 0 ]
    ok "... service stays inactive" eq "$(bed systemctl is-active myflask.service)" inactive
    ok "... socket listening" eq "$(listening /run/myflask/fcgi.sock)" 1
}

# A reload whose new binary cannot start: the reload fails visibly and the old
# process keeps serving. The stand-in binary answers `reload` with the real
# one (ExecReload= must still work) and fails as `serve`, as a broken build would.
check_reload_fails() {
    local pid0 rc status
    http_code http://127.0.0.1/healthz >/dev/null
    pid0=$(prop myflask.service MainPID)
    bedsh 'cp -p /usr/sbin/myflask /usr/sbin/myflask.sdtest-good &&
           printf "%s\n" "#!/bin/sh" "[ \"\$1\" = reload ] && exec /usr/sbin/myflask.sdtest-good \"\$@\"" \
               "echo \"broken build\" >&2; exit 1" >/usr/sbin/myflask.sdtest-bad &&
           chmod 755 /usr/sbin/myflask.sdtest-bad && mv /usr/sbin/myflask.sdtest-bad /usr/sbin/myflask'
    bed systemctl reload myflask.service >"$LOGS/reload-fails.log" 2>&1; rc=$?
    status=$(bed systemctl status --full --no-pager myflask.service 2>&1)
    printf '%s\n' "$status" >>"$LOGS/reload-fails.log"
    note "systemctl reload rc=$rc; $(grep 'Status:' <<<"$status" | sed 's/^ *//')"
    ok "systemctl reload exits non-zero" [ "$rc" != 0 ]
    ok "systemctl status says the reload failed" contains "$status" "reload failed"
    ok "journal: 'reload failed' with the reason" bedsh "journalctl -b -u myflask.service --no-pager | grep -q 'reload failed'"
    ok "old process still the main process ($pid0)" eq "$(prop myflask.service MainPID)" "$pid0"
    ok "service active" eq "$(bed systemctl is-active myflask.service)" active
    ok "old process keeps serving (GET /healthz -> 200)" eq "$(http_code http://127.0.0.1/healthz)" 200
    bed mv /usr/sbin/myflask.sdtest-good /usr/sbin/myflask
    ok "a reload with the good binary back succeeds" bed systemctl reload myflask.service
}

check_http_socket() {
    local code names
    # The documented way (systemd refuses to start a socket whose service is running):
    # enabling links it into myflask.service.wants/, so one restart transaction stops
    # the service, starts the socket, starts the service.
    http_code http://127.0.0.1/healthz >/dev/null   # the service runs
    ok "systemctl enable myflask-http.socket" bed systemctl enable --quiet myflask-http.socket
    ok "... links it into myflask.service.wants/" bed test -L /etc/systemd/system/myflask.service.wants/myflask-http.socket
    ok "systemctl restart myflask.service" bed systemctl restart myflask.service
    ok "myflask-http.socket active" eq "$(bed systemctl is-active myflask-http.socket)" active
    ok "http socket is root:www-data 660" eq "$(bed stat -c '%U:%G %a' /run/myflask/http.sock)" "root:www-data 660"
    names=$(bedsh "tr '\0' '\n' </proc/\$(systemctl show -P MainPID myflask.service)/environ | grep ^LISTEN_FDNAMES=")
    note "$names"
    ok "service got both fds (fastcgi + http)" bedsh "echo '$names' | grep -q fastcgi && echo '$names' | grep -q http"
    code=$(http_code --unix-socket /run/myflask/http.sock http://localhost/healthz)
    ok "HTTP/1.1 GET /healthz on /run/myflask/http.sock -> 200" eq "$code" 200
    code=$(http_code http://127.0.0.1/healthz)
    ok "FastCGI through nginx still 200" eq "$code" 200
    # left enabled on purpose: check 8 proves purge removes an admin-enabled link too
}

# A second instance as README-ops describes it: a copied socket/service pair.
check_two_instances() {
    local out pid_a pid_b
    bedsh 'sed "s|/run/myflask/|/run/myflask-b/|" /usr/lib/systemd/system/myflask.socket >/etc/systemd/system/myflask-b.socket &&
           sed -e "s|myflask\.socket|myflask-b.socket|g" -e "s|/etc/default/myflask|/etc/default/myflask-b|" \
               /usr/lib/systemd/system/myflask.service >/etc/systemd/system/myflask-b.service &&
           printf "MYFLASK_LOG_LEVEL=debug\n" >/etc/default/myflask-b &&
           systemctl daemon-reload && systemctl enable --now --quiet myflask-b.socket' >"$LOGS/instance-b.log" 2>&1
    ok "second pair myflask-b.socket/.service created and enabled" [ $? = 0 ]
    ok "/run/myflask-b/fcgi.sock is root:www-data 660" eq "$(bed stat -c '%U:%G %a' /run/myflask-b/fcgi.sock)" "root:www-data 660"
    out=$(bed myflask request unix:/run/myflask-b/fcgi.sock /healthz 2>&1 | tr -d '\r\n')
    ok "myflask request unix:/run/myflask-b/fcgi.sock /healthz -> ok" eq "$out" ok
    http_code http://127.0.0.1/healthz >/dev/null
    pid_a=$(prop myflask.service MainPID); pid_b=$(prop myflask-b.service MainPID)
    ok "two separate processes ($pid_a, $pid_b)" [ "$pid_a" != 0 -a "$pid_b" != 0 -a "$pid_a" != "$pid_b" ]
    ok "instance b runs as its own dynamic user myflask-b" eq "$(bed stat -c %U "/proc/$pid_b")" myflask-b
    ok "instance b read /etc/default/myflask-b" bedsh "tr '\0' '\n' </proc/$pid_b/environ | grep -qx MYFLASK_LOG_LEVEL=debug"
    ok "instance b's requests are in journalctl -u myflask-b" \
        bedsh "journalctl -u myflask-b.service -o json --no-pager | grep -q '\"URI\":\"/healthz\"'"
    bedsh 'systemctl disable --now --quiet myflask-b.socket myflask-b.service;
           rm -f /etc/systemd/system/myflask-b.socket /etc/systemd/system/myflask-b.service /etc/default/myflask-b
           rm -rf /run/myflask-b; systemctl daemon-reload' >>"$LOGS/instance-b.log" 2>&1
}

# Several hosts behind one nginx: a TCP ListenStream= drop-in on the socket and
# an nginx upstream pointing at it (here 127.0.0.1: the bed has no other network).
check_tcp_listen() {
    local code out names
    bedsh 'mkdir -p /etc/systemd/system/myflask.socket.d &&
           printf "[Socket]\nListenStream=127.0.0.1:9000\n" >/etc/systemd/system/myflask.socket.d/tcp.conf &&
           systemctl daemon-reload && systemctl restart myflask.socket' >"$LOGS/tcp.log" 2>&1
    ok "drop-in ListenStream=127.0.0.1:9000 + restart myflask.socket" [ $? = 0 ]
    ok "listening on 127.0.0.1:9000" bedsh "ss -tlnH | grep -q '127.0.0.1:9000 '"
    out=$(bed myflask request 127.0.0.1:9000 /healthz 2>&1 | tr -d '\r\n')
    ok "myflask request 127.0.0.1:9000 /healthz -> ok (service has PrivateNetwork=yes)" eq "$out" ok
    bedsh 'printf "%s\n" "upstream tcp_backends { server 127.0.0.1:9000; keepalive 4; }" \
               "server { listen 127.0.0.1:8080; location / { include fastcgi_params; fastcgi_keep_conn on; fastcgi_pass tcp_backends; } }" \
               >/etc/nginx/sites-available/tcp-test &&
           ln -sf ../sites-available/tcp-test /etc/nginx/sites-enabled/tcp-test && nginx -t -q && systemctl restart nginx' >>"$LOGS/tcp.log" 2>&1
    ok "nginx with a TCP upstream" [ $? = 0 ]
    code=$(http_code http://127.0.0.1:8080/healthz)
    ok "GET /healthz through nginx over TCP -> 200" eq "$code" 200
    names=$(bedsh "tr '\0' '\n' </proc/\$(systemctl show -P MainPID myflask.service)/environ | grep ^LISTEN_FDNAMES=")
    note "$names"
    bedsh 'rm -rf /etc/systemd/system/myflask.socket.d /etc/nginx/sites-enabled/tcp-test /etc/nginx/sites-available/tcp-test &&
           systemctl daemon-reload && systemctl restart myflask.socket && systemctl restart nginx' >>"$LOGS/tcp.log" 2>&1
    ok "drop-in removed, socket restarted" [ $? = 0 ]
    code=$(http_code http://127.0.0.1/healthz)
    ok "unix socket through nginx still 200" eq "$code" 200
}

# ip-allow (issue 15): tests/systemd/check-ipallow.sh
. "$here/check-ipallow.sh"

check_hardening() {
    local pid status uid name netns1 netns online inbed_off links
    http_code http://127.0.0.1/healthz >/dev/null
    pid=$(prop myflask.service MainPID)
    ok "DynamicUser=yes" eq "$(prop myflask.service DynamicUser)" yes
    name=$(prop myflask.service User)
    note "systemctl show -p User: User=$name"
    status=$(bed cat "/proc/$pid/status")
    printf '%s\n' "$status" >"$LOGS/proc-status.txt"
    uid=$(awk '/^Uid:/ {print $2}' <<<"$status")
    note "$(grep -E '^(Uid|Gid|CapEff|CapBnd|NoNewPrivs|Seccomp):' <<<"$status" | tr '\t' ' ' | paste -sd ';' -)"
    ok "runs as a dynamic UID (61184-65519): $uid" [ "${uid:-0}" -ge 61184 -a "${uid:-0}" -le 65519 ]
    ok "all of real/effective/saved/fs UIDs equal" [ "$(awk '/^Uid:/ {print ($2==$3 && $3==$4 && $4==$5)}' <<<"$status")" = 1 ]
    ok "UID resolves to the unit's user ($(bed getent passwd "$uid" | cut -d: -f1))" eq "$(bed getent passwd "$uid" | cut -d: -f1)" "${name:-myflask}"
    ok "no capabilities (CapEff 0)" eq "$(awk '/^CapEff:/ {print $2}' <<<"$status")" 0000000000000000
    ok "empty bounding set (CapBnd 0)" eq "$(awk '/^CapBnd:/ {print $2}' <<<"$status")" 0000000000000000
    ok "NoNewPrivs 1" eq "$(awk '/^NoNewPrivs:/ {print $2}' <<<"$status")" 1
    ok "seccomp filter (Seccomp 2)" eq "$(awk '/^Seccomp:/ {print $2}' <<<"$status")" 2
    netns1=$(bed readlink /proc/1/ns/net); netns=$(bed readlink "/proc/$pid/ns/net")
    ok "own network namespace ($netns vs PID 1 $netns1)" [ -n "$netns" -a "$netns" != "$netns1" ]
    links=$(bed nsenter -t "$pid" -n ip -o link show | awk -F': ' '{print $2}' | paste -sd' ' -)
    ok "no network: only loopback in its namespace ($links)" eq "$links" lo
    ok "PrivateNetwork=yes" eq "$(prop myflask.service PrivateNetwork)" yes
    bed systemd-analyze security --no-pager myflask.service >"$LOGS/security-online-bed.txt" 2>&1
    online=$(score_of "$LOGS/security-online-bed.txt")
    bed systemd-analyze security --offline=true --no-pager /usr/lib/systemd/system/myflask.service \
        >"$LOGS/security-offline-bed.txt" 2>&1
    inbed_off=$(score_of "$LOGS/security-offline-bed.txt")
    note "systemd-analyze security: in-bed (live unit) ${online:-?}, in-bed offline ${inbed_off:-?}, host offline ${OFFLINE_SCORE:-?}"
    ok "in-bed exposure <= 1.0" le "${online:-99}" 1.0
    ok "in-bed score agrees with the offline score (|diff| <= 0.3)" python3 -c \
        "import sys; sys.exit(0 if abs(float(sys.argv[1]) - float(sys.argv[2])) <= 0.3 else 1)" "${online:-99}" "${OFFLINE_SCORE:-0}"
    ok "systemd-analyze verify in the bed" bed systemd-analyze verify --man=no /usr/lib/systemd/system/myflask.service \
        /usr/lib/systemd/system/myflask.socket /usr/lib/systemd/system/myflask-http.socket
}

check_remove_purge() {
    local left
    # the test's own nginx site (not a file of the package)
    bedsh 'rm -f /etc/nginx/sites-enabled/myflask /etc/nginx/sites-available/myflask'
    bed dpkg -r myflask >"$LOGS/dpkg-r.log" 2>&1
    ok "dpkg -r exits 0" [ $? = 0 ]
    ok "myflask.socket inactive" eq "$(bed systemctl is-active myflask.socket)" inactive
    ok "myflask-http.socket inactive" eq "$(bed systemctl is-active myflask-http.socket)" inactive
    ok "myflask.service inactive" eq "$(bed systemctl is-active myflask.service)" inactive
    ok "nothing listens under /run/myflask" eq "$(bed ss -xlnH | grep -c /run/myflask/)" 0
    ok "no myflask process" [ -z "$(bed pgrep -x myflask)" ]
    ok "conffiles kept after remove" bed test -f /etc/default/myflask
    bed dpkg --purge myflask >"$LOGS/dpkg-purge.log" 2>&1
    ok "dpkg --purge exits 0" [ $? = 0 ]
    ok "package gone (dpkg -s fails)" not bed dpkg -s myflask
    left=$(bedsh 'find /etc /usr /var/lib/systemd /run/myflask /run/systemd/system -name "*myflask*" 2>/dev/null; ls -d /run/myflask 2>/dev/null')
    ok "no files, links, masks or state of ours left${left:+: $(echo $left)}" [ -z "$left" ]
    ok "systemd knows no myflask unit files" eq "$(bed systemctl list-unit-files --no-legend 'myflask*' | wc -l)" 0
}

# Reload against restart with slow requests in flight.
# shellcheck source=tests/systemd/reload.sh
. "$here/reload.sh"

# Checks of the second package (an app built by cargo myflask deb).
# shellcheck source=tests/systemd/apps.sh
. "$here/apps.sh"

# ---------------------------------------------------------------- setup
mkdir -p "$WORK" "$LOGS"
rm -f "$LOGS"/*
exec > >(tee "$LOGS/run.log") 2>&1

# A bed left running by SDTEST_KEEP=1.
if [ -f "$WORK/nspawn.pid" ]; then stop_bed "$(cat "$WORK/nspawn.pid")"; rm -f "$WORK/nspawn.pid"; fi
remove_cgroups

t=$(date +%s.%N)
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v dpkg-parsechangelog >/dev/null || need+=(dpkg-dev)
command -v lintian >/dev/null || need+=(lintian)
if [ ${#need[@]} -gt 0 ]; then
    # The image's docker-clean apt hook deletes downloaded .debs after every dpkg
    # run, which breaks installs apt splits into several runs: retry (testbed doc pitfall 1).
    for try in 1 2 3; do
        DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y --no-install-recommends "${need[@]}" \
            >>"$LOGS/apt-host.log" 2>&1 && break
        [ $try = 3 ] && die "apt-get install ${need[*]} failed, see $LOGS/apt-host.log"
        timeout 300 apt-get update >>"$LOGS/apt-host.log" 2>&1
    done
fi
say "host tools ready ($(elapsed "$t") s${need[*]:+, installed ${need[*]}})"

# The rootfs cache.
mirror=${SDTEST_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(python3 - <<'EOF'
import glob, re
for f in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(f).read()):
        fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
        if "bookworm" in fields.get("Suites", "").split() and fields.get("URIs"):
            print(fields["URIs"].split()[0]); raise SystemExit
try:
    for line in open("/etc/apt/sources.list"):
        p = line.split()
        if len(p) >= 3 and p[0] == "deb" and p[2] == "bookworm":
            print(p[1]); raise SystemExit
except FileNotFoundError:
    pass
print("http://deb.debian.org/debian")
EOF
)
fi
key=$(printf '%s|%s|%s|%s' "$CACHE_VERSION" "$SUITE" "$PACKAGES" "$mirror" | sha256sum | cut -c1-12)
CACHED=$WORK/cache/rootfs-$key
if [ "${SDTEST_REBUILD:-0}" = 1 ]; then rm -rf "$CACHED"; fi
if [ ! -d "$CACHED" ]; then
    t=$(date +%s.%N)
    rm -rf "$WORK/cache"/rootfs-* "$WORK/cache"/tmp-*
    mkdir -p "$WORK/cache"
    tmp=$WORK/cache/tmp-$key
    say "debootstrap $SUITE from $mirror (log: $LOGS/debootstrap.log)"
    timeout 1200 debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$mirror" \
        >"$LOGS/debootstrap.log" 2>&1 || die "debootstrap failed, see $LOGS/debootstrap.log"
    printf '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n127.0.1.1 %s\n' "$MACHINE" >"$tmp/etc/hosts"
    echo "$MACHINE" >"$tmp/etc/hostname"
    systemctl --root="$tmp" mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
        e2scrub_all.timer fstrim.timer >/dev/null 2>&1
    rm -f "$tmp/etc/machine-id"; : >"$tmp/etc/machine-id"
    rm -rf "$tmp/var/cache/apt/archives/"*.deb
    mv "$tmp" "$CACHED"
    say "rootfs cached in $CACHED ($(elapsed "$t") s, $(du -sh "$CACHED" | cut -f1))"
else
    say "rootfs cache hit: $CACHED"
fi

# The package.
t=$(date +%s.%N)
if [ -n "${SDTEST_DEB:-}" ]; then
    DEB=$SDTEST_DEB
else
    DEB=$("$root/packaging/debian/build.sh" --locked 2>"$LOGS/build.log" | tail -n1) ||
        { tail -n 20 "$LOGS/build.log"; die "packaging/debian/build.sh failed, see $LOGS/build.log"; }
fi
[ -f "$DEB" ] || die "no .deb at '$DEB'"
say "package: $DEB ($(elapsed "$t") s)"
# The upgrade: a newer revision of the same build (check 7).
t=$(date +%s.%N)
NEW_VERSION=$(dpkg-deb -f "$DEB" Version)+sdtest1
if [ -n "${SDTEST_NEW_DEB:-}" ]; then
    NEW_DEB=$SDTEST_NEW_DEB NEW_VERSION=$(dpkg-deb -f "$SDTEST_NEW_DEB" Version)
else
    NEW_DEB=$("$root/packaging/debian/build.sh" --no-build --revision "${NEW_VERSION##*-}" 2>"$LOGS/build-new.log" | tail -n1) ||
        { tail -n 20 "$LOGS/build-new.log"; die "packaging/debian/build.sh --no-build --revision failed, see $LOGS/build-new.log"; }
fi
[ -f "$NEW_DEB" ] || die "no .deb at '$NEW_DEB'"
say "package: $NEW_DEB ($(elapsed "$t") s)"
t=$(date +%s.%N)
if [ -n "${SDTEST_APP_DEB:-}" ]; then
    APP_DEB=$SDTEST_APP_DEB
else
    APP_DEB=$(cd "$root/examples/hello-app" && "${CARGO_TARGET_DIR:-$root/target}/debug/cargo-myflask" myflask deb --locked \
        2>"$LOGS/build-app.log" | tail -n1) ||
        { tail -n 20 "$LOGS/build-app.log"; die "cargo myflask deb (examples/hello-app) failed, see $LOGS/build-app.log"; }
fi
[ -f "$APP_DEB" ] || die "no .deb at '$APP_DEB'"
say "package: $APP_DEB ($(elapsed "$t") s)"

# This run's root and share.
t=$(date +%s.%N)
rm -rf "$RUN"; mkdir -p "$SHARE"
cp -a "$CACHED" "$ROOTFS"
python3 -c 'import uuid; print(uuid.uuid4().hex)' >"$ROOTFS/etc/machine-id"
cp "$DEB" "$SHARE/myflask.deb"
cp "$NEW_DEB" "$SHARE/myflask-new.deb"
cp "$APP_DEB" "$SHARE/app.deb"
# The upgrade: the same package with a higher version.
APP_NEW_VERSION=$(dpkg-deb -f "$APP_DEB" Version)+sdtest1
rm -rf "$RUN/app-new" && dpkg-deb -R "$APP_DEB" "$RUN/app-new" &&
    sed -i "s/^Version: .*/Version: $APP_NEW_VERSION/" "$RUN/app-new/DEBIAN/control" &&
    dpkg-deb --build --root-owner-group "$RUN/app-new" "$SHARE/app-new.deb" >/dev/null || die "cannot repack $APP_DEB"
cp "$here/load.py" "$SHARE/load.py"
head -c 1048576 /dev/urandom >"$SHARE/1m.bin"
chmod -R a+rX "$SHARE"
say "run root ready ($(elapsed "$t") s)"

mkdir -p "$RUN/units" && dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$RUN/units" ./usr/lib/systemd/system/myflask.service &&
    dpkg-deb --fsys-tarfile "$APP_DEB" | tar -x -C "$RUN/units" "./usr/lib/systemd/system/$APP_NAME.service"
timeout 60 systemd-analyze security --offline=true --no-pager "$RUN/units/usr/lib/systemd/system/myflask.service" \
    >"$LOGS/security-offline-host.txt" 2>&1
OFFLINE_SCORE=$(score_of "$LOGS/security-offline-host.txt")
timeout 60 systemd-analyze security --offline=true --no-pager "$RUN/units/usr/lib/systemd/system/$APP_NAME.service" \
    >"$LOGS/security-offline-host-app.txt" 2>&1
APP_OFFLINE_SCORE=$(score_of "$LOGS/security-offline-host-app.txt")

say "--- host checks"
check 0-verify check_verify

# Boot. `--system-call-filter=bpf`: nspawn's seccomp filter denies bpf() by
# default, and without it systemd in the bed cannot attach the cgroup firewall
# that IPAddressAllow=/IPAddressDeny= need (check ip-allow).
t=$(date +%s.%N)
(
    for h in $CGROUP_ROOTS; do
        [ -d "$h" ] || continue
        mkdir -p "$h/$MACHINE" && echo "$BASHPID" >"$h/$MACHINE/cgroup.procs"
    done
    SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 exec systemd-nspawn --quiet -D "$ROOTFS" --boot \
        --machine="$MACHINE" --register=no --keep-unit --private-network \
        --system-call-filter=bpf \
        --bind-ro="$SHARE:/mnt/share" --console=pipe </dev/null >"$LOGS/nspawn.log" 2>&1
) &
NSPID=$!
for _ in $(seq 1 300); do
    for c in $(cat "/proc/$NSPID/task/$NSPID/children" 2>/dev/null); do
        [ "$(cat "/proc/$c/comm" 2>/dev/null)" = systemd ] && LEADER=$c
    done
    [ -n "$LEADER" ] && break
    [ -d "/proc/$NSPID" ] || break
    sleep 0.1
done
if [ -n "$LEADER" ]; then
    BED_TIMEOUT=120 bed systemctl is-system-running --wait >/dev/null 2>&1
    say "bed booted: nspawn $NSPID, PID 1 = host PID $LEADER ($(elapsed "$t") s)"
else
    say "bed did not boot, see $LOGS/nspawn.log:"; tail -n 20 "$LOGS/nspawn.log"
fi

check 0-bed check_bed
check 1-install check_install
check 2-nginx check_nginx
check 3-status-journal check_status_journal
check ops check_ops
check 4-watchdog check_watchdog
check 5-restart-under-load check_restart_under_load
check 6-crash check_crash
check 7-upgrade-under-load check_upgrade_under_load
check reload-fails check_reload_fails
check reload-vs-restart check_reload_vs_restart
check app-install check_app_install
check app-nginx check_app_nginx
check app-upgrade-under-load check_app_upgrade_under_load
check app-remove-purge check_app_remove_purge
check two-instances check_two_instances
check tcp-listen check_tcp_listen
check ip-allow check_ip_allow
check http-socket check_http_socket
check reload-http-socket check_reload_http_socket
check 9-hardening check_hardening
check 8-remove-purge check_remove_purge

say "logs: $LOGS (total $(elapsed "$T_START") s)"
say "$PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]

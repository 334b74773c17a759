# Reload against restart with slow requests in flight (issue 13), through
# nginx, in the bed. Sourced by run.sh, which defines bed, ok, eq, prop,
# start_load, load_result, ...
#
# A slow request is a GET /sleep?ms=$SLOW_MS and a paced POST /upload of
# the same length, both through nginx. The load is load.py on two nginx
# servers at once: port 80 (upstream keepalive, the shipped snippets) and
# port $FRESH_PORT (a new upstream connection per request). "Wait" is the
# longest latency of a load request started while systemctl ran (or up to
# a second after it returned), from load.py's per-request records.

SLOW_MS=10000
# 96 KiB through nginx's request buffering reach the app as 3 FastCGI
# records of 32 KiB; /upload sleeps pace_ms after each one.
SLOW_UPLOAD_BYTES=98304 SLOW_UPLOAD_PACE_MS=3333
FRESH_PORT=8082
# A reload must not make anyone wait for the slow requests: far below the
# ~9 s they still have to run when it starts.
RELOAD_MAX_WAIT_S=2
# A restart does wait for them (that is the point of the comparison); only
# a wait beyond the slow request's whole length plus the drain's slack fails.
RESTART_ABSURD_WAIT_S=$((SLOW_MS / 1000 + 10))

# The site's second server: no upstream block, so no keepalive.
fresh_upstream_site() {
    bedsh "printf '%s\n' 'server { listen 127.0.0.1:$FRESH_PORT;' \
        '    location / { include fastcgi_params; fastcgi_pass unix:/run/myflask/fcgi.sock; } }' \
        >/etc/nginx/sites-enabled/fresh-upstream && nginx -t -q && systemctl reload nginx" && sleep 0.5
}

# Starts the two slow requests through nginx in the background (TAG names
# their files); sets SLOW_PIDS.
start_slow() { # tag
    bed curl -sS --max-time $((SLOW_MS / 1000 + 30)) -o "/tmp/slow-sleep-$1.out" -w '%{http_code} %{time_total}' \
        "http://127.0.0.1/sleep?ms=$SLOW_MS" >"$LOGS/slow-sleep-$1.txt" 2>&1 &
    SLOW_PIDS=$!
    bedsh "head -c $SLOW_UPLOAD_BYTES /dev/zero | curl -sS --max-time $((SLOW_MS / 1000 + 30)) -o /tmp/slow-upload-$1.out \
        -w '%{http_code} %{time_total}' -H 'Content-Type: application/octet-stream' --data-binary @- \
        'http://127.0.0.1/upload?pace_ms=$SLOW_UPLOAD_PACE_MS'" >"$LOGS/slow-upload-$1.txt" 2>&1 &
    SLOW_PIDS="$SLOW_PIDS $!"
}

# Waits for the slow requests of TAG and checks their answers.
check_slow() { # tag
    local fnv
    # shellcheck disable=SC2086
    wait $SLOW_PIDS
    fnv=$(python3 -c 'import sys
h = 0xcbf29ce484222325
for _ in range(int(sys.argv[1])): h = (h * 0x100000001b3) % 2**64
print("%016x" % h)' "$SLOW_UPLOAD_BYTES")
    note "$1: sleep -> $(cat "$LOGS/slow-sleep-$1.txt"), upload -> $(cat "$LOGS/slow-upload-$1.txt") (status, seconds)"
    ok "$1: GET /sleep?ms=$SLOW_MS -> 200 {\"slept_ms\": $SLOW_MS}" \
        eq "$(head -c3 "$LOGS/slow-sleep-$1.txt") $(bed cat "/tmp/slow-sleep-$1.out" | tr -d ' \n')" "200 {\"slept_ms\":$SLOW_MS}"
    ok "$1: paced POST /upload -> 200, $SLOW_UPLOAD_BYTES bytes, fnv1a64 $fnv" \
        eq "$(head -c3 "$LOGS/slow-upload-$1.txt") $(bed cat "/tmp/slow-upload-$1.out" | tr -d ' \n')" \
        "200 {\"bytes\":$SLOW_UPLOAD_BYTES,\"fnv1a64\":\"$fnv\"}"
}

# The load's requests around [T0, T1 + 1 s]: sets WIN_MAX WIN_GAP WIN_N WIN_FAILED.
load_window() { # t0 t1 load-files...
    local out
    out=$(python3 "$here/load.py" window "${@:3}" --start "$1" --end "$(python3 -c "print($2 + 1)")")
    WIN_MAX=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["max_latency_s"])' "$out" 2>/dev/null || echo 99)
    WIN_GAP=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["longest_gap_s"])' "$out" 2>/dev/null || echo 99)
    WIN_N=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["requests"])' "$out" 2>/dev/null || echo 0)
    WIN_FAILED=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["failed"])' "$out" 2>/dev/null || echo -1)
}

# Samples `systemctl is-active` COUNT times, 0.1 s apart, into FILE.
sample_active() { # count file
    bedsh "for i in \$(seq 1 $1); do systemctl is-active myflask.service; sleep 0.1; done" >"$2" 2>&1
}

no_handover_warnings() {
    local w
    w=$(bedsh "journalctl -b -u myflask.service --no-pager -o cat |
               grep -E 'not our child|reception only permitted for main PID|Supervising process'")
    [ -z "$w" ] || { note "        $(head -c 400 <<<"$w")"; return 1; }
}

check_reload_vs_restart() {
    local pid0 pid1 pid2 n0 t_r0 t_r1 t_s0 t_s1 rc samples files
    fresh_upstream_site >"$LOGS/reload-vs-restart.log" 2>&1
    ok "nginx: a second server on port $FRESH_PORT without upstream keepalive" [ $? = 0 ]
    ok "... serves /healthz" eq "$(http_code "http://127.0.0.1:$FRESH_PORT/healthz")" 200
    pid0=$(prop myflask.service MainPID); n0=$(prop myflask.service NRestarts)
    start_load 18 /tmp/load-rvr-keepalive.json --concurrency 2 --timeout 30; local lp1=$LOAD_PID
    start_load 18 /tmp/load-rvr-fresh.json --concurrency 2 --timeout 30 --port "$FRESH_PORT"; local lp2=$LOAD_PID
    sleep 1.5
    start_slow reload; local slow_reload=$SLOW_PIDS
    sleep 1
    sample_active 15 "$LOGS/rvr-active.txt" & local sampler=$!
    sleep 0.2
    t_r0=$(date +%s.%N)
    bed systemctl reload myflask.service >>"$LOGS/reload-vs-restart.log" 2>&1; rc=$?
    t_r1=$(date +%s.%N)
    pid1=$(prop myflask.service MainPID)
    ok "systemctl reload exits 0 (took $(python3 -c "print('%.2f' % ($t_r1 - $t_r0))") s)" [ $rc = 0 ]
    wait "$sampler"
    sleep 0.5
    start_slow restart; local slow_restart=$SLOW_PIDS
    sleep 1
    t_s0=$(date +%s.%N)
    bed systemctl restart myflask.service >>"$LOGS/reload-vs-restart.log" 2>&1; rc=$?
    t_s1=$(date +%s.%N)
    pid2=$(prop myflask.service MainPID)
    ok "systemctl restart exits 0 (took $(python3 -c "print('%.2f' % ($t_s1 - $t_s0))") s)" [ $rc = 0 ]
    wait "$lp1" "$lp2"
    SLOW_PIDS=$slow_reload check_slow reload
    SLOW_PIDS=$slow_restart check_slow restart
    load_result /tmp/load-rvr-keepalive.json; local f1=$LOAD_FAILED
    load_result /tmp/load-rvr-fresh.json; local f2=$LOAD_FAILED
    note "upstream keepalive: $(cat "$LOGS/load-rvr-keepalive.txt"); fresh upstream: $(cat "$LOGS/load-rvr-fresh.txt")"
    ok "0 failed requests over upstream keepalive (port 80)" eq "$f1" 0
    ok "0 failed requests over fresh upstream connections (port $FRESH_PORT)" eq "$f2" 0
    files="$LOGS/load-rvr-keepalive.json $LOGS/load-rvr-fresh.json"
    # shellcheck disable=SC2086
    load_window "$t_r0" "$t_r1" $files
    note "reload:  $WIN_N requests around it, longest wait ${WIN_MAX} s, longest time without a completion ${WIN_GAP} s"
    ok "reload: load requests were served around it (>= 10)" [ "$WIN_N" -ge 10 ]
    ok "reload: longest wait ${WIN_MAX} s < ${RELOAD_MAX_WAIT_S} s (the slow requests had ~9 s to go)" \
        le "$WIN_MAX" "$RELOAD_MAX_WAIT_S"
    # shellcheck disable=SC2086
    load_window "$t_s0" "$t_s1" $files
    note "restart: $WIN_N requests around it, longest wait ${WIN_MAX} s, longest time without a completion ${WIN_GAP} s"
    ok "restart: longest wait ${WIN_MAX} s not absurd (<= ${RESTART_ABSURD_WAIT_S} s)" le "$WIN_MAX" "$RESTART_ABSURD_WAIT_S"
    note "MainPID $pid0 -(reload)-> $pid1 -(restart)-> $pid2"
    ok "reload: MainPID changed" [ "$pid1" != "$pid0" -a "$pid1" != 0 ]
    ok "restart: MainPID changed" [ "$pid2" != "$pid1" -a "$pid2" != 0 ]
    ok "NRestarts unchanged ($n0)" eq "$(prop myflask.service NRestarts)" "$n0"
    samples=$(sort "$LOGS/rvr-active.txt" | uniq -c | paste -sd, -)
    note "systemctl is-active during the reload: $samples"
    ok "reload: the service was active at every sample (ActiveState reloading counts)" \
        eq "$(grep -cvE '^(active|reloading)$' "$LOGS/rvr-active.txt")" 0
    ok "... 15 samples taken" eq "$(wc -l <"$LOGS/rvr-active.txt")" 15
    ok "journal: no 'not our child', 'reception only permitted for main PID', 'Supervising process'" no_handover_warnings
    bedsh 'rm -f /etc/nginx/sites-enabled/fresh-upstream && systemctl reload nginx'
}

# The same over myflask-http.socket behind proxy_pass (run after http-socket,
# which enables it): nginx keeps idle HTTP connections to the server, and a
# server that closes one as nginx sends a request on it costs that request
# (nginx resends a GET on another connection, not a POST).
HTTP_PORT=8083
http_proxy_site() {
    bedsh "printf '%s\n' 'upstream myflask_http { server unix:/run/myflask/http.sock; keepalive 16; }' \
        'server { listen 127.0.0.1:$HTTP_PORT; client_max_body_size 16m;' \
        '    location / { proxy_pass http://myflask_http; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }' \
        >/etc/nginx/sites-enabled/http-proxy && nginx -t -q && systemctl reload nginx" && sleep 0.5
}

check_reload_http_socket() {
    local pid0 pid1 pid2 pid3 t_r0 t_r1 rc slow1 slow2 errs
    http_proxy_site >"$LOGS/reload-http-socket.log" 2>&1
    ok "nginx: proxy_pass to /run/myflask/http.sock with upstream keepalive on port $HTTP_PORT" [ $? = 0 ]
    ok "... served by the HTTP transport" \
        contains "$(bed curl -sS --max-time 10 "http://127.0.0.1:$HTTP_PORT/request")" '"transport": "HTTP"'
    pid0=$(prop myflask.service MainPID)
    start_load 13 /tmp/load-reload-http.json --port "$HTTP_PORT" --timeout 30
    sleep 1.5
    bed curl -sS --max-time 40 -w ' %{http_code}' "http://127.0.0.1:$HTTP_PORT/sleep?ms=$SLOW_MS" \
        >"$LOGS/slow-http-reload.txt" 2>&1 & slow1=$!
    sleep 1
    t_r0=$(date +%s.%N)
    bed systemctl reload myflask.service >>"$LOGS/reload-http-socket.log" 2>&1; rc=$?
    t_r1=$(date +%s.%N)
    pid1=$(prop myflask.service MainPID)
    ok "systemctl reload with a 10 s request in flight exits 0" [ $rc = 0 ]
    sleep 1
    # A shorter slow request, so that the restart drains for a while.
    bed curl -sS --max-time 40 -w ' %{http_code}' "http://127.0.0.1:$HTTP_PORT/sleep?ms=2000" \
        >"$LOGS/slow-http-restart.txt" 2>&1 & slow2=$!
    sleep 0.5
    ok "systemctl restart with a 2 s request in flight exits 0" bed systemctl restart myflask.service
    pid2=$(prop myflask.service MainPID)
    sleep 1
    # (systemctl stop warns that the sockets can still start the service)
    ok "systemctl stop, then start" bedsh 'systemctl stop myflask.service 2>/dev/null && systemctl start myflask.service'
    pid3=$(prop myflask.service MainPID)
    wait "$LOAD_PID" "$slow1" "$slow2"
    load_result /tmp/load-reload-http.json
    errs=$(( $(upstream_errors) - NGINX_ERRS0 ))
    note "$(cat "$LOGS/load-reload-http.txt") through a reload, a restart and a stop/start"
    note "MainPID $pid0 -(reload)-> $pid1 -(restart)-> $pid2 -(stop, start)-> $pid3"
    # The restart also waits for the reload's predecessor and its 10 s request
    # (README, "Reload"): its wait is long, and it is not measured here.
    ok "0 failed requests (POST /echo included)" eq "$LOAD_FAILED" 0
    ok "requests were served (>= 200)" [ "$LOAD_TOTAL" -ge 200 ]
    ok "each step started a new process" [ "$(printf '%s\n' "$pid0" "$pid1" "$pid2" "$pid3" | sort -u | grep -vc '^0$')" = 4 ]
    ok "nginx logged no upstream error ($errs)" eq "$errs" 0
    ok "the 10 s request ended 200 {\"slept_ms\": $SLOW_MS}" \
        eq "$(tr -d ' \n' <"$LOGS/slow-http-reload.txt")" "{\"slept_ms\":$SLOW_MS}200"
    ok "the 2 s request ended 200" eq "$(tr -d ' \n' <"$LOGS/slow-http-restart.txt")" '{"slept_ms":2000}200'
    load_window "$t_r0" "$t_r1" "$LOGS/load-reload-http.json"
    note "reload: $WIN_N requests around it, longest wait ${WIN_MAX} s"
    ok "reload: longest wait ${WIN_MAX} s < ${RELOAD_MAX_WAIT_S} s" le "$WIN_MAX" "$RELOAD_MAX_WAIT_S"
    bedsh 'rm -f /etc/nginx/sites-enabled/http-proxy && systemctl reload nginx'
}

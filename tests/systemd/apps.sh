# Checks of an app packaged by `cargo myflask deb` (examples/hello-app,
# mounted at /hello) installed beside the myflask package, one nginx
# fronting both. Sourced by run.sh, which defines bed, ok, eq, prop, ... and
# APP_NAME, APP_PREFIX; the packages are /mnt/share/app.deb and app-new.deb
# (the same package with a higher version: the upgrade).

# The both-apps site: the myflask package's example site with the app's
# upstream include and location blocks (from its own example site) added.
app_site() {
    bedsh "ex=/usr/share/doc/$APP_NAME/examples/nginx-site.conf
        { sed -n '/^include snippets\/.*-upstream.conf;/p' \$ex
          sed '\$d' /usr/share/doc/myflask/examples/nginx-site.conf
          sed -n '/^    # The app is mounted/,\$p' \$ex; } >/etc/nginx/sites-available/both &&
        rm -f /etc/nginx/sites-enabled/myflask && ln -sf ../sites-available/both /etc/nginx/sites-enabled/both"
}

check_app_install() {
    local pid0
    http_code http://127.0.0.1/healthz >/dev/null   # myflask.service runs: its PID must survive
    pid0=$(prop myflask.service MainPID)
    bed dpkg -i /mnt/share/app.deb >"$LOGS/dpkg-i-app.log" 2>&1
    ok "dpkg -i $APP_NAME exits 0" [ $? = 0 ]
    ok "$APP_NAME.socket enabled" eq "$(bed systemctl is-enabled "$APP_NAME.socket")" enabled
    ok "$APP_NAME.socket active" eq "$(bed systemctl is-active "$APP_NAME.socket")" active
    ok "/run/$APP_NAME/fcgi.sock listening" eq "$(listening "/run/$APP_NAME/fcgi.sock")" 1
    ok "socket is root:www-data 660" eq "$(bed stat -c '%U:%G %a %F' "/run/$APP_NAME/fcgi.sock")" "root:www-data 660 socket"
    ok "$APP_NAME.service idle until first use" eq "$(bed systemctl is-active "$APP_NAME.service")" inactive
    ok "no $APP_NAME-http.socket (not asked for)" eq "$(bed systemctl list-unit-files --no-legend "$APP_NAME-http.socket" | wc -l)" 0
    ok "conffile /etc/default/$APP_NAME sets MYFLASK_MOUNT_PREFIX=$APP_PREFIX" bed grep -qx "MYFLASK_MOUNT_PREFIX=$APP_PREFIX" "/etc/default/$APP_NAME"
    ok "conffiles: default + 2 nginx snippets" eq "$(bed dpkg-query -W -f='${Conffiles}\n' "$APP_NAME" | grep -c '^ /etc/')" 3
    ok "man page $APP_NAME(8)" bed test -f "/usr/share/man/man8/$APP_NAME.8.gz"
    ok "myflask.socket still active" eq "$(bed systemctl is-active myflask.socket)" active
    ok "myflask.service untouched (MainPID $pid0)" [ "$pid0" != 0 -a "$(prop myflask.service MainPID)" = "$pid0" ]
}

# GET through nginx: prints "CODE BODY" (body on one line).
get() { bed curl -sS --max-time 10 -w ' %{http_code}' "$@" 2>&1 | tr -d '\r' | tr '\n' '|'; }

check_app_nginx() {
    local out pid fd3 ino
    app_site >"$LOGS/nginx-app-setup.log" 2>&1
    ok "site with both apps written" [ $? = 0 ]
    ok "nginx -t with both packages' snippets" bed nginx -t -q
    ok "systemctl reload nginx" bed systemctl reload nginx.service
    sleep 0.5
    ok "GET /healthz -> myflask 'ok'" eq "$(get http://127.0.0.1/healthz)" "ok| 200"
    out=$(get http://127.0.0.1/request?who=myflask)
    ok "GET /request -> myflask's JSON" contains "$out" '"uri": "/request?who=myflask"'
    ok "GET $APP_PREFIX/ -> hello-app's /" eq "$(get "http://127.0.0.1$APP_PREFIX/")" "Hello from hello-app| 200"
    ok "GET $APP_PREFIX/hello/bob -> hello-app's /hello/{name}" eq "$(get "http://127.0.0.1$APP_PREFIX/hello/bob")" "Hello, bob!| 200"
    ok "GET $APP_PREFIX/where: routed on /where, nginx sent $APP_PREFIX/where" \
        eq "$(get "http://127.0.0.1$APP_PREFIX/where")" "routed on /where, REQUEST_URI $APP_PREFIX/where| 200"
    ok "POST $APP_PREFIX/words reads the body" eq "$(get --data-binary 'one two three' "http://127.0.0.1$APP_PREFIX/words")" "3 words, 13 bytes| 200"
    ok "GET $APP_PREFIX -> 301 to $APP_PREFIX/" eq "$(bed curl -sS --max-time 10 -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1$APP_PREFIX")" "301 http://127.0.0.1$APP_PREFIX/"
    ok "$APP_NAME.service started by the first request" eq "$(bed systemctl is-active "$APP_NAME.service")" active
    pid=$(prop "$APP_NAME.service" MainPID)
    ok "runs as its own dynamic user $APP_NAME" eq "$(bed stat -c %U "/proc/$pid")" "$APP_NAME"
    fd3=$(bed readlink "/proc/$pid/fd/3")
    ino=$(bedsh "ss -xlnH | awk '\$5==\"/run/$APP_NAME/fcgi.sock\" {print \$6}'")
    ok "its fd 3 is /run/$APP_NAME/fcgi.sock (inode $ino)" eq "$fd3" "socket:[$ino]"
    check_app_journal
}

check_app_journal() {
    local ids_app ids_mf status
    bed curl -sS --max-time 10 -o /dev/null "http://127.0.0.1$APP_PREFIX/healthz?journal-probe=app"
    wait_for 10 bedsh "journalctl -u $APP_NAME.service -o json --no-pager | grep -q 'journal-probe=app'"
    ids_app=$(bedsh "journalctl -u $APP_NAME.service -o json --no-pager | python3 -c 'import json,sys; print(\" \".join(sorted({json.loads(l).get(\"SYSLOG_IDENTIFIER\",\"-\") for l in sys.stdin if l.strip()})))'")
    ids_mf=$(bedsh "journalctl -u myflask.service -o json --no-pager | python3 -c 'import json,sys; print(\" \".join(sorted({json.loads(l).get(\"SYSLOG_IDENTIFIER\",\"-\") for l in sys.stdin if l.strip()})))'")
    note "SYSLOG_IDENTIFIERs: -u $APP_NAME.service: $ids_app; -u myflask.service: $ids_mf"
    ok "journalctl -u $APP_NAME: every entry is SYSLOG_IDENTIFIER=$APP_NAME" eq "$ids_app" "$APP_NAME systemd"
    ok "journalctl -u myflask: no $APP_NAME entry" not contains "$ids_mf" "$APP_NAME"
    ok "journalctl -t $APP_NAME has the request" bedsh "journalctl -t $APP_NAME -o json --no-pager | grep -q 'journal-probe=app'"
    status=$(bed systemctl status --full "$APP_NAME.service" --no-pager 2>&1 | grep 'Status:')
    note "systemctl status $APP_NAME: ${status# *}"
    ok "systemctl status line names $APP_NAME (MYFLASK_APP_NAME from the unit)" contains "$status" "app $APP_NAME"
}

check_app_upgrade_under_load() {
    local sock0 sock1 pid0 pid1 mf0 rc
    http_code "http://127.0.0.1$APP_PREFIX/healthz" >/dev/null
    sock0=$(prop "$APP_NAME.socket" ActiveEnterTimestampMonotonic); pid0=$(prop "$APP_NAME.service" MainPID)
    mf0=$(prop myflask.service MainPID)
    local prefix=$APP_PREFIX port=80
    if [ "$(get "http://127.0.0.1$APP_PREFIX/healthz")" != "ok| 200" ]; then
        # The server does not strip the mount prefix (a myflask without
        # --mount-prefix): load the app through a site without the prefix, so
        # that this check still measures the upgrade. check_app_nginx fails.
        note "GET $APP_PREFIX/healthz is not 'ok': loading the app unprefixed on port 8081"
        bedsh "printf '%s\n' 'server { listen 127.0.0.1:8081; location / { include snippets/$APP_NAME.conf; } }' \
            >/etc/nginx/sites-enabled/app-unprefixed && systemctl reload nginx" && sleep 0.5
        prefix= port=8081
    fi
    NGINX_ERRS0=$(upstream_errors)
    timeout 70 nsenter -t "$LEADER" -a env -i PATH=$BED_PATH python3 /mnt/share/load.py --app "$prefix" --port $port \
        --duration 10 --concurrency 4 --out /tmp/load-app-upgrade.json >"$LOGS/load-app-upgrade.txt" 2>&1 &
    LOAD_PID=$!
    sleep 3
    bed dpkg -i /mnt/share/app-new.deb >"$LOGS/dpkg-upgrade-app.log" 2>&1; rc=$?
    ok "dpkg -i newer $APP_NAME ($APP_NEW_VERSION) exits 0" [ $rc = 0 ]
    wait "$LOAD_PID"
    load_result /tmp/load-app-upgrade.json
    note "$(cat "$LOGS/load-app-upgrade.txt" 2>/dev/null) during the upgrade"
    sock1=$(prop "$APP_NAME.socket" ActiveEnterTimestampMonotonic); pid1=$(prop "$APP_NAME.service" MainPID)
    note "$APP_NAME MainPID $pid0 -> $pid1; socket active since ${sock0}us -> ${sock1}us; myflask MainPID $mf0 -> $(prop myflask.service MainPID)"
    ok "installed version is $APP_NEW_VERSION" eq "$(bed dpkg-query -W -f='${Version}' "$APP_NAME")" "$APP_NEW_VERSION"
    ok "0 failed requests" eq "$LOAD_FAILED" 0
    ok "requests were served (>= 50)" [ "$LOAD_TOTAL" -ge 50 ]
    ok "$APP_NAME.service restarted (new MainPID)" [ "$pid1" != "$pid0" -a "$pid1" != 0 ]
    ok "$APP_NAME.socket NOT restarted" eq "$sock1" "$sock0"
    ok "myflask.service NOT restarted (MainPID $mf0)" eq "$(prop myflask.service MainPID)" "$mf0"
}

check_app_remove_purge() {
    local left mf0
    mf0=$(prop myflask.service MainPID)
    # the test's own site goes back to myflask alone (not a file of either package)
    bedsh 'rm -f /etc/nginx/sites-enabled/both /etc/nginx/sites-available/both /etc/nginx/sites-enabled/app-unprefixed &&
           ln -sf ../sites-available/myflask /etc/nginx/sites-enabled/myflask && systemctl reload nginx'
    bed dpkg -r "$APP_NAME" >"$LOGS/dpkg-r-app.log" 2>&1
    ok "dpkg -r $APP_NAME exits 0" [ $? = 0 ]
    ok "$APP_NAME.socket and .service inactive" eq "$(bed systemctl is-active "$APP_NAME.socket" "$APP_NAME.service" | sort -u)" inactive
    ok "no $APP_NAME process" [ -z "$(bed pgrep -x "$APP_NAME")" ]
    ok "conffile kept after remove" bed test -f "/etc/default/$APP_NAME"
    ok "myflask still serving (GET /healthz -> 200)" eq "$(http_code http://127.0.0.1/healthz)" 200
    bed dpkg --purge "$APP_NAME" >"$LOGS/dpkg-purge-app.log" 2>&1
    ok "dpkg --purge $APP_NAME exits 0" [ $? = 0 ]
    left=$(bedsh "find /etc /usr /var/lib/systemd /var/lib/private /run/systemd/system -name '*$APP_NAME*' 2>/dev/null; ls -d /run/$APP_NAME 2>/dev/null")
    ok "nothing of $APP_NAME left${left:+: $(echo $left)}" [ -z "$left" ]
    ok "systemd knows no $APP_NAME unit" eq "$(bed systemctl list-unit-files --no-legend "$APP_NAME*" | wc -l)" 0
    ok "myflask still serving after the purge" eq "$(http_code http://127.0.0.1/healthz)" 200
    ok "myflask.service untouched (MainPID $mf0)" eq "$(prop myflask.service MainPID)" "$mf0"
    ok "myflask.socket still active" eq "$(bed systemctl is-active myflask.socket)" active
}

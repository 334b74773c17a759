//! `/metrics` of the real binary, checked by the real tools: Debian's
//! Prometheus scrapes it and a PromQL query over its HTTP API returns the
//! requests this test sent; `promtool check metrics` reads the 0.0.4 text;
//! `prometheus_client`'s OpenMetrics parser (strict: it refuses a body
//! without `# EOF`) reads the OpenMetrics text.

mod common;

use common::{Proc, Server, clean_cmd, fcgi_get, free_tcp_port, pipe_through, require_tool};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// `GET path` over HTTP/1.1 on loopback; returns (head, body).
fn http_get(port: u16, path: &str, accept: Option<&str>) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{accept}Connection: close\r\n\r\n");
    s.write_all(req.as_bytes()).expect("write");
    let mut all = String::new();
    s.read_to_string(&mut all).expect("read");
    let (head, body) = all.split_once("\r\n\r\n").expect("a head");
    (head.to_string(), body.to_string())
}

fn serve_with_http() -> (Server, u16) {
    let port = free_tcp_port();
    let s = Server::start(&["--http", &format!("127.0.0.1:{port}")]);
    (s, port)
}

/// Runs Debian's python3 with prometheus_client's OpenMetrics parser on
/// `text`; returns (exit code, what it printed).
fn openmetrics_parse(text: &str) -> (i32, String) {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
        for f in p(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       print(s.name, sorted(s.labels.items()), s.value)\n";
    let mut python = Command::new(require_tool("python3"));
    pipe_through(python.arg("-c").arg(script), text)
}

#[test]
fn openmetrics_passes_the_strict_parser_and_the_text_format_promtool() {
    let started = Instant::now();
    let (s, port) = serve_with_http();
    for _ in 0..3 {
        assert_eq!(fcgi_get(&s.addr(), "/").status, 200);
    }
    assert_eq!(fcgi_get(&s.addr(), "/nowhere").status, 404);

    let om_accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5";
    // The FastCGI requests are counted once their last byte is written,
    // which races with this scrape; scrapes (over HTTP) do not move the
    // FastCGI counts, so scrape until all four show.
    let settled = [
        "myflask_requests_total{transport=\"fastcgi\",code=\"2xx\"} 3\n",
        "myflask_requests_total{transport=\"fastcgi\",code=\"4xx\"} 1\n",
    ];
    let (head, om) = common::eventually(Duration::from_secs(2), "4 requests counted", || {
        let (head, om) = http_get(port, "/metrics", Some(om_accept));
        settled.iter().all(|l| om.contains(l)).then_some((head, om))
    });
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains("application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"));
    let (code, samples) = openmetrics_parse(&om);
    assert_eq!(
        code, 0,
        "the OpenMetrics parser refused it:\n{samples}\n{om}"
    );
    let line = "myflask_requests_total [('code', '2xx'), ('transport', 'fastcgi')] 3\n";
    assert!(samples.contains(line), "{samples}");
    assert!(
        samples.contains("myflask_requests_total [('code', '4xx'), ('transport', 'fastcgi')] 1\n")
    );
    assert!(
        samples.contains("myflask_request_duration_seconds_count [('transport', 'fastcgi')] 4\n")
    );
    assert!(
        samples.contains("myflask_listen_queue_length [('listener', "),
        "{samples}"
    );
    // The parser is strict: the same text without its terminator fails.
    let (code, _) = openmetrics_parse(om.trim_end_matches("# EOF\n"));
    assert_ne!(code, 0, "a body without # EOF must not parse");

    let (head, text) = http_get(port, "/metrics", None);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(!text.contains("# EOF"));
    let mut promtool = Command::new(require_tool("promtool"));
    let (code, said) = pipe_through(promtool.args(["check", "metrics"]), &text);
    assert!(
        code == 0 && said.trim().is_empty(),
        "promtool: {said}\n{text}"
    );
    eprintln!("openmetrics + promtool checks took {:?}", started.elapsed());
}

/// The value of a one-series PromQL result, from the API's JSON.
fn promql(port: u16, query: &str) -> Option<f64> {
    let q: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (head, body) = http_get(port, &format!("/api/v1/query?query={q}"), None);
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

#[test]
fn prometheus_scrapes_and_promql_returns_the_requests_sent() {
    let started = Instant::now();
    let prometheus = require_tool("prometheus");
    let (s, port) = serve_with_http();
    const SENT: usize = 7;
    for _ in 0..SENT {
        assert_eq!(fcgi_get(&s.addr(), "/").status, 200);
    }
    let dir = common::target_tmpdir();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: myflask\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
        ),
    )
    .expect("config");
    let prom_port = free_tcp_port();
    let mut cmd = clean_cmd(prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let mut p = Proc::spawn(&mut cmd, &dir.path().join("prometheus.log"));
    p.wait_log(
        "Server is ready to receive web requests",
        Duration::from_secs(30),
    );

    let query = "sum(myflask_requests_total{job=\"myflask\",transport=\"fastcgi\",code=\"2xx\"})";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        last = promql(prom_port, query);
        if last == Some(SENT as f64) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        last,
        Some(SENT as f64),
        "PromQL {query}; prometheus log:\n{}",
        p.log()
    );
    let up = promql(prom_port, "up{job=\"myflask\"}");
    assert_eq!(up, Some(1.0), "the scrape itself succeeded");
    eprintln!("prometheus scrape + PromQL took {:?}", started.elapsed());
    drop(s);
}

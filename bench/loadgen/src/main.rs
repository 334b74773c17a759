//! Direct FastCGI load generator for the myflask benchmark: no nginx in the
//! path, so the server's own cost shows. Built on the project's codec
//! (`myflask::fastcgi::client` to encode requests and read responses,
//! `myflask::fastcgi::record::decode` for the multiplexed demux).
//!
//! ```text
//! loadgen run --addr unix:/tmp/x.sock [--conns 16] [--mux 1] [--duration 5]
//!             [--warmup 1] [--method GET] [--path /] [--body-size 0]
//!             [--no-keepalive] [--threads 2] [--param NAME=VALUE]...
//! loadgen coldstart --addr unix:/tmp/x.sock [--proto fcgi|http] [--activated]
//!             [--repeat 5] [--path /] [--param NAME=VALUE]... -- CMD ARGS...
//! ```
//! Each prints one JSON object on stdout.
//!
//! `run`: `--conns` connections, each with `--mux` requests in flight (1 =
//! keep-alive request/response; >1 = multiplexed with distinct request ids,
//! reader and writer halves decoupled). `--no-keepalive` opens a connection
//! per request (FCGI_KEEP_CONN clear), as nginx does without
//! `fastcgi_keep_conn`. A response counts as an error if it is not a 200, if
//! its body length is wrong (echo) or if the connection fails.
//!
//! `coldstart`: spawns CMD, then measures the time from spawn to the first
//! complete response (polling connect every 200 us). With `--activated` CMD
//! is expected to hold the socket without serving (systemd-socket-activate):
//! the clock starts at the first connection instead.

use bytes::{Bytes, BytesMut};
use myflask::addr::ListenAddr;
use myflask::fastcgi::client::{self, Request, encode_request, parse_cgi, read_response};
use myflask::fastcgi::record::{self, EndRequest};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[derive(Clone)]
struct Opts {
    addr: ListenAddr,
    conns: usize,
    mux: usize,
    duration: f64,
    warmup: f64,
    method: String,
    path: String,
    body_size: usize,
    keepalive: bool,
    threads: usize,
    proto: String,
    activated: bool,
    repeat: usize,
    params: Vec<(String, String)>,
    cmd: Vec<String>,
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen run --addr ADDR [--conns N] [--mux M] [--duration S] [--warmup S] \
         [--method M] [--path P] [--body-size N] [--no-keepalive] [--threads T] [--param NAME=VALUE]...\n       \
         loadgen coldstart --addr ADDR [--proto fcgi|http] [--activated] [--repeat N] [--path P] -- CMD ARGS..."
    );
    std::process::exit(2)
}

fn parse(args: &[String]) -> Opts {
    let mut o = Opts {
        addr: ListenAddr::Tcp("127.0.0.1:9000".parse().unwrap()),
        conns: 16,
        mux: 1,
        duration: 5.0,
        warmup: 1.0,
        method: "GET".into(),
        path: "/".into(),
        body_size: 0,
        keepalive: true,
        threads: 2,
        proto: "fcgi".into(),
        activated: false,
        repeat: 5,
        params: Vec::new(),
        cmd: Vec::new(),
    };
    let mut i = 0;
    let val = |i: &mut usize| -> String {
        *i += 1;
        args.get(*i).cloned().unwrap_or_else(|| usage())
    };
    while i < args.len() {
        match args[i].as_str() {
            "--addr" => {
                o.addr = val(&mut i).parse().unwrap_or_else(|e| {
                    eprintln!("--addr: {e}");
                    usage()
                })
            }
            "--conns" => o.conns = val(&mut i).parse().unwrap_or_else(|_| usage()),
            "--mux" => o.mux = val(&mut i).parse().unwrap_or_else(|_| usage()),
            "--duration" => o.duration = val(&mut i).parse().unwrap_or_else(|_| usage()),
            "--warmup" => o.warmup = val(&mut i).parse().unwrap_or_else(|_| usage()),
            "--method" => o.method = val(&mut i),
            "--path" => o.path = val(&mut i),
            "--body-size" => o.body_size = val(&mut i).parse().unwrap_or_else(|_| usage()),
            "--no-keepalive" => o.keepalive = false,
            "--threads" => o.threads = val(&mut i).parse().unwrap_or_else(|_| usage()),
            "--proto" => o.proto = val(&mut i),
            "--activated" => o.activated = true,
            "--param" => {
                let v = val(&mut i);
                let (k, v) = v.split_once('=').unwrap_or_else(|| usage());
                o.params.push((k.to_string(), v.to_string()));
            }
            "--repeat" => o.repeat = val(&mut i).parse().unwrap_or_else(|_| usage()),
            "--" => {
                o.cmd = args[i + 1..].to_vec();
                break;
            }
            _ => usage(),
        }
        i += 1;
    }
    o.conns = o.conns.max(1);
    o.mux = o.mux.clamp(1, 65535);
    o.threads = o.threads.max(1);
    o
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(sub) = args.first() else { usage() };
    let o = parse(&args[1..]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()
        .expect("runtime");
    match sub.as_str() {
        "run" => rt.block_on(run(o)),
        "coldstart" => rt.block_on(coldstart(o)),
        _ => usage(),
    }
}

// ---------------------------------------------------------------- load ----

#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    ok: u64,
    non2xx: u64,
    bad_len: u64,
    io_errors: u64,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.lat_us.extend(o.lat_us);
        self.ok += o.ok;
        self.non2xx += o.non2xx;
        self.bad_len += o.bad_len;
        self.io_errors += o.io_errors;
    }
}

struct Window {
    warm_end: Instant,
    end: Instant,
}

impl Window {
    fn counts(&self, t: Instant) -> bool {
        t >= self.warm_end && t <= self.end
    }
}

fn request(o: &Opts) -> Request {
    let body = Bytes::from(vec![b'x'; o.body_size]);
    let mut headers = vec![("Host".to_string(), "localhost".to_string())];
    if !body.is_empty() {
        headers.push((
            "Content-Type".to_string(),
            "application/octet-stream".to_string(),
        ));
    }
    Request {
        method: o.method.clone(),
        uri: o.path.clone(),
        headers,
        body,
        params: o.params.clone(),
    }
}

fn check(t: &mut Tally, status: u16, body_len: usize, expect: Option<usize>) {
    if !(200..300).contains(&status) {
        t.non2xx += 1;
    } else if expect.is_some_and(|e| e != body_len) {
        t.bad_len += 1;
    } else {
        t.ok += 1;
    }
}

async fn run(o: Opts) -> ExitCode {
    let o = Arc::new(o);
    let start = Instant::now();
    let win = Arc::new(Window {
        warm_end: start + Duration::from_secs_f64(o.warmup),
        end: start + Duration::from_secs_f64(o.warmup + o.duration),
    });
    let expect = (o.body_size > 0).then_some(o.body_size);
    let mut tasks = Vec::new();
    for _ in 0..o.conns {
        let (o, win) = (o.clone(), win.clone());
        tasks.push(tokio::spawn(async move {
            let hard = win.end + Duration::from_secs(10);
            let fut = async {
                if o.mux > 1 {
                    conn_mux(&o, &win, expect).await
                } else {
                    conn_seq(&o, &win, expect).await
                }
            };
            match tokio::time::timeout_at(hard.into(), fut).await {
                Ok(t) => t,
                Err(_) => Tally {
                    io_errors: 1,
                    ..Tally::default()
                },
            }
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            all.merge(t);
        }
    }
    let mut lat = std::mem::take(&mut all.lat_us);
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        lat[i] as f64 / 1000.0
    };
    let n = lat.len() as f64;
    println!(
        "{{\"requests\":{},\"rps\":{:.1},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"ok\":{},\"non2xx\":{},\"bad_len\":{},\"io_errors\":{},\"conns\":{},\"mux\":{},\"keepalive\":{},\"duration\":{}}}",
        lat.len(),
        n / o.duration,
        pct(0.50),
        pct(0.99),
        all.ok,
        all.non2xx,
        all.bad_len,
        all.io_errors,
        o.conns,
        o.mux,
        o.keepalive,
        o.duration
    );
    ExitCode::SUCCESS
}

type Halves = (
    tokio::io::ReadHalf<Box<dyn client::Stream>>,
    tokio::io::WriteHalf<Box<dyn client::Stream>>,
);

/// One request at a time on a connection (kept alive, or one per request).
async fn conn_seq(o: &Opts, win: &Window, expect: Option<usize>) -> Tally {
    let mut t = Tally::default();
    let mut wire = BytesMut::new();
    encode_request(&mut wire, 1, o.keepalive, &request(o));
    let wire = wire.freeze();
    let mut conn: Option<Halves> = None;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    while Instant::now() < win.end {
        // Without keep-alive the connect is part of each request's latency.
        let t0 = Instant::now();
        if conn.is_none() {
            match client::connect(&o.addr).await {
                Ok(s) => conn = Some(tokio::io::split(s)),
                Err(_) => {
                    if win.counts(Instant::now()) {
                        t.io_errors += 1;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            }
        }
        let (rd, wr) = conn.as_mut().unwrap();
        // Write and read at once: a server that echoes while it reads (Go)
        // would otherwise deadlock against a client that writes 1 MiB first.
        let res =
            tokio::try_join!(wr.write_all(&wire), read_response(rd, 1, &mut rbuf)).map(|((), r)| r);
        let t1 = Instant::now();
        match res {
            Ok(resp) => {
                if win.counts(t1) {
                    t.lat_us
                        .push((t1 - t0).as_micros().min(u32::MAX as u128) as u32);
                    let status = if resp.protocol_status == record::REQUEST_COMPLETE {
                        resp.status
                    } else {
                        0
                    };
                    check(&mut t, status, resp.body.len(), expect);
                }
                if !o.keepalive {
                    conn = None;
                    rbuf.clear();
                }
            }
            Err(_) => {
                if win.counts(t1) {
                    t.io_errors += 1;
                }
                conn = None;
                rbuf.clear();
            }
        }
    }
    t
}

/// `o.mux` requests in flight on one connection, ids 1..=mux. The writer
/// half sends a new request on an id as soon as the reader half has seen
/// that id's END_REQUEST.
async fn conn_mux(o: &Opts, win: &Window, expect: Option<usize>) -> Tally {
    let mut t = Tally::default();
    let stream = match client::connect(&o.addr).await {
        Ok(s) => s,
        Err(_) => {
            t.io_errors += 1;
            return t;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let req = request(o);
    let templates: Vec<Bytes> = (0..=o.mux as u16)
        .map(|id| {
            let mut b = BytesMut::new();
            if id > 0 {
                encode_request(&mut b, id, true, &req);
            }
            b.freeze()
        })
        .collect();
    let base = Instant::now();
    let starts: Arc<Vec<AtomicU64>> = Arc::new((0..=o.mux).map(|_| AtomicU64::new(0)).collect());
    let (tx, mut rx) = mpsc::unbounded_channel::<u16>();
    for id in 1..=o.mux as u16 {
        let _ = tx.send(id);
    }
    let writer = {
        let starts = starts.clone();
        async move {
            let mut out = BytesMut::new();
            while let Some(id) = rx.recv().await {
                let mut next = Some(id);
                while let Some(id) = next {
                    starts[id as usize].store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    out.extend_from_slice(&templates[id as usize]);
                    next = rx.try_recv().ok();
                }
                if wr.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
    };
    let reader = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut stdout: Vec<Vec<u8>> = vec![Vec::new(); o.mux + 1];
        let mut in_flight = o.mux;
        loop {
            loop {
                let rec = match record::decode(&mut buf) {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(_) => {
                        t.io_errors += 1;
                        return;
                    }
                };
                let id = rec.request_id as usize;
                if id == 0 || id > o.mux {
                    t.io_errors += 1;
                    return;
                }
                match rec.kind {
                    record::STDOUT => stdout[id].extend_from_slice(&rec.content),
                    record::STDERR => {}
                    record::END_REQUEST => {
                        let now = Instant::now();
                        let st = starts[id].load(Ordering::Relaxed);
                        let lat = now - base - Duration::from_nanos(st);
                        if win.counts(now) {
                            t.lat_us.push(lat.as_micros().min(u32::MAX as u128) as u32);
                            let complete = EndRequest::parse(&rec.content)
                                .is_some_and(|e| e.protocol_status == record::REQUEST_COMPLETE);
                            match parse_cgi(&stdout[id]) {
                                Ok((status, _, body)) if complete => {
                                    check(&mut t, status, body.len(), expect)
                                }
                                _ => t.non2xx += 1,
                            }
                        }
                        stdout[id].clear();
                        if now < win.end {
                            let _ = tx.send(id as u16);
                        } else {
                            in_flight -= 1;
                            if in_flight == 0 {
                                return;
                            }
                        }
                    }
                    _ => {
                        t.io_errors += 1;
                        return;
                    }
                }
            }
            buf.reserve(64 * 1024);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    if Instant::now() < win.end {
                        t.io_errors += 1;
                    }
                    return;
                }
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        _ = reader => {}
        _ = writer => {}
    }
    t
}

// ----------------------------------------------------------- coldstart ----

async fn probe_once(o: &Opts) -> std::io::Result<u16> {
    let mut s = client::connect(&o.addr).await?;
    if o.proto == "http" {
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            o.path
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let status = buf
            .get(9..12)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        Ok(status)
    } else {
        let mut out = BytesMut::new();
        encode_request(&mut out, 1, false, &request(o));
        s.write_all(&out).await?;
        let mut buf = BytesMut::new();
        Ok(read_response(&mut s, 1, &mut buf).await?.status)
    }
}

fn socket_path(o: &Opts) -> Option<&std::path::Path> {
    match &o.addr {
        ListenAddr::Unix(p) => Some(p),
        ListenAddr::Tcp(_) => None,
    }
}

async fn coldstart(o: Opts) -> ExitCode {
    if o.cmd.is_empty() {
        usage();
    }
    let mut samples = Vec::new();
    let mut failures = 0;
    for _ in 0..o.repeat.max(1) {
        if let Some(p) = socket_path(&o) {
            let _ = std::fs::remove_file(p);
        }
        let spawned = Instant::now();
        let mut child = match Command::new(&o.cmd[0])
            .args(&o.cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("spawn {:?}: {e}", o.cmd);
                return ExitCode::FAILURE;
            }
        };
        let deadline = spawned + Duration::from_secs(20);
        let mut t0 = spawned;
        if o.activated {
            // Wait for the activator to bind, give it time to reach its
            // poll, then the first connection starts the clock.
            if let Some(p) = socket_path(&o) {
                while !p.exists() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            t0 = Instant::now();
        }
        let mut got = None;
        while Instant::now() < deadline {
            match probe_once(&o).await {
                Ok(200) => {
                    got = Some(t0.elapsed());
                    break;
                }
                _ => tokio::time::sleep(Duration::from_micros(200)).await,
            }
        }
        match got {
            Some(d) => samples.push(d.as_secs_f64() * 1000.0),
            None => failures += 1,
        }
        // SIGTERM, then SIGKILL after 5 s.
        let pid = child.id() as i32;
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc_kill(pid, 15) };
        let stop = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if Instant::now() > stop {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sorted = samples.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if sorted.is_empty() {
        -1.0
    } else {
        sorted[sorted.len() / 2]
    };
    let list: Vec<String> = samples.iter().map(|s| format!("{s:.3}")).collect();
    println!(
        "{{\"median_ms\":{median:.3},\"min_ms\":{:.3},\"samples_ms\":[{}],\"failures\":{failures}}}",
        sorted.first().copied().unwrap_or(-1.0),
        list.join(",")
    );
    ExitCode::SUCCESS
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

//! The command line: `myflask serve`, `myflask request`, and the hidden
//! `myflask manpage` that renders myflask(8) for the Debian package.
//!
//! Every `serve` option can also come from a `MYFLASK_*` environment
//! variable, which is how `/etc/default/myflask` configures the service.

use crate::addr::ListenAddr;
use crate::fastcgi::client;
use crate::server::{Server, ServerConfig};
use crate::systemd::journal::{self, LogTarget};
use crate::systemd::listen::{self, BindOptions};
use crate::systemd::notify;
use bytes::Bytes;
use clap::{Args, CommandFactory, Parser, Subcommand};
use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "myflask",
    version,
    about = "FastCGI application server for Rust http services, socket-activated by systemd",
    long_about = "myflask serves an HTTP application over FastCGI on sockets systemd hands \
                  over (LISTEN_FDS), so nginx reaches it with `fastcgi_pass \
                  unix:/run/myflask/fcgi.sock;`. It reports readiness, status and liveness \
                  to systemd (Type=notify, WatchdogSec=), logs to the journal, and drains \
                  in-flight requests on SIGTERM."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the built-in application over FastCGI (and HTTP if asked).
    Serve(ServeArgs),
    /// Send one FastCGI request to a socket and print the response body.
    Request(RequestArgs),
    /// Print the manual page (roff) to stdout.
    #[command(hide = true)]
    Manpage,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let s = s.trim_start_matches("0o");
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal mode such as 0660"))
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{s:?} is not a number of seconds"))
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// FastCGI socket to bind when systemd passes none: unix:PATH or
    /// HOST:PORT (repeatable; default 127.0.0.1:9000 if nothing is inherited
    /// or given). Sockets inherited through LISTEN_FDS are always served.
    #[arg(
        long = "listen",
        value_name = "ADDR",
        env = "MYFLASK_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<ListenAddr>,

    /// Also serve plain HTTP/1.1 on ADDR (repeatable). An inherited fd whose
    /// FileDescriptorName= is `http` does the same.
    #[arg(
        long = "http",
        value_name = "ADDR",
        env = "MYFLASK_HTTP",
        value_delimiter = ','
    )]
    pub http: Vec<ListenAddr>,

    /// Mode of unix sockets myflask binds itself (like php-fpm's listen.mode).
    #[arg(long, value_name = "OCTAL", default_value = "0660", value_parser = parse_mode, env = "MYFLASK_SOCKET_MODE")]
    pub socket_mode: u32,

    /// Group of unix sockets myflask binds itself, e.g. www-data (like
    /// php-fpm's listen.group).
    #[arg(long, value_name = "GROUP", env = "MYFLASK_SOCKET_GROUP")]
    pub socket_group: Option<String>,

    /// Connections served at once; at the cap accepting pauses and the
    /// kernel backlog holds new ones.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4096,
        env = "MYFLASK_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,

    /// Requests handled at once, server-wide; more get 503 with Retry-After.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1024,
        env = "MYFLASK_MAX_REQUESTS"
    )]
    pub max_requests: usize,

    /// Concurrent (multiplexed) requests on one FastCGI connection.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 128,
        env = "MYFLASK_MAX_REQUESTS_PER_CONNECTION"
    )]
    pub max_requests_per_connection: usize,

    /// Size cap of one request's FastCGI params (431 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024, env = "MYFLASK_MAX_PARAMS_BYTES")]
    pub max_params_bytes: usize,

    /// Size cap of one request body (413 beyond).
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024 * 1024, env = "MYFLASK_MAX_BODY_BYTES")]
    pub max_body_bytes: u64,

    /// Seconds a peer may stall in the middle of a record or a request
    /// before its connection is closed (slowloris guard).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs, env = "MYFLASK_STALL_TIMEOUT")]
    pub stall_timeout: Duration,

    /// Seconds an idle keep-alive connection stays open. Keep it above
    /// nginx's upstream keepalive_timeout (60 s).
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_secs, env = "MYFLASK_IDLE_TIMEOUT")]
    pub idle_timeout: Duration,

    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs, env = "MYFLASK_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Duration,

    /// Exit after this many seconds without any connection (socket
    /// activation starts myflask again on demand). Off by default.
    #[arg(long, value_name = "SECS", value_parser = parse_secs, env = "MYFLASK_IDLE_EXIT")]
    pub idle_exit: Option<Duration>,

    /// Seconds between STATUS= refreshes sent to systemd (hidden: for tests).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs, env = "MYFLASK_STATUS_INTERVAL", hide = true)]
    pub status_interval: Duration,

    /// Where logs go: auto (journald when stderr is the journal), journald,
    /// or stderr.
    #[arg(long, value_enum, default_value_t = LogTarget::Auto, env = "MYFLASK_LOG_TARGET")]
    pub log_target: LogTarget,

    /// Log filter, e.g. info, debug, myflask=debug (overrides RUST_LOG).
    #[arg(long, value_name = "FILTER", env = "MYFLASK_LOG_LEVEL")]
    pub log_level: Option<String>,

    #[command(flatten)]
    pub manage: crate::manage::ManageArgs,

    #[command(flatten)]
    pub deadlines: crate::deadline::DeadlineArgs,
}

#[derive(Args, Debug)]
pub struct RequestArgs {
    /// HTTP method.
    #[arg(short = 'X', long = "request", default_value = "GET")]
    pub method: String,
    /// Request body: text, @FILE, or @- for standard input (implies POST
    /// unless -X is given).
    #[arg(short = 'd', long = "data", value_name = "DATA")]
    pub data: Option<String>,
    /// Extra header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Print the status line and headers before the body.
    #[arg(short = 'i', long = "include")]
    pub include: bool,
    /// Seconds to wait for the whole exchange.
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub timeout: Duration,
    /// FastCGI address: unix:PATH or HOST:PORT.
    pub addr: ListenAddr,
    /// Path and query, e.g. /healthz.
    pub path: String,
}

/// Entry point of the binary: the built-in application.
pub fn main() -> ExitCode {
    run(crate::app::builtin, crate::manage::Endpoints::builtin())
}

/// The whole `myflask` command line (serve flags, systemd sockets, notify,
/// journald, `request`, the man page) around your own application:
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     myflask::cli::main_with(|_stats| {
///         myflask::App::from_hyper(hyper::service::service_fn(|_req| async {
///             Ok::<_, std::convert::Infallible>(http::Response::new("Hello, World!\n".to_string()))
///         }))
///     })
/// }
/// ```
///
/// `make_app` gets the server's live figures (for a status page).
///
/// `--status-path`, `--metrics-path` and `--ping-path` are off unless given.
pub fn main_with(make_app: impl FnOnce(std::sync::Arc<crate::Stats>) -> crate::App) -> ExitCode {
    run(make_app, crate::manage::Endpoints::default())
}

fn run(
    make_app: impl FnOnce(std::sync::Arc<crate::Stats>) -> crate::App,
    endpoints: crate::manage::Endpoints,
) -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args, make_app, endpoints),
        Command::Request(args) => request(args),
        Command::Manpage => match manpage() {
            Ok(page) => {
                let _ = std::io::stdout().write_all(&page);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("myflask: cannot render the manual page: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// myflask(8): one page with every subcommand's synopsis and options (the
/// serve options carry their MYFLASK_* variables), so the package needs no
/// myflask-serve(8) and friends.
fn manpage() -> std::io::Result<Vec<u8>> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name().to_uppercase();
        out.extend_from_slice(format!(".SH \"MYFLASK {name}\"\n").as_bytes());
        let sub = sub.clone().bin_name(format!("myflask {}", sub.get_name()));
        let sman = clap_mangen::Man::new(sub).section("8");
        let mut part = Vec::new();
        sman.render_synopsis_section(&mut part)?;
        sman.render_description_section(&mut part)?;
        sman.render_options_section(&mut part)?;
        // The subcommand's own headings become subsections.
        let part = String::from_utf8_lossy(&part).replace(".SH ", ".SS ");
        out.extend_from_slice(part.as_bytes());
    }
    out.extend_from_slice(
        b".SH FILES\n.TP\n/etc/default/myflask\nMYFLASK_* settings read by myflask.service.\n\
          .TP\n/run/myflask/fcgi.sock\nThe FastCGI socket, owned by myflask.socket (root:www-data, 0660).\n\
          .SH \"SEE ALSO\"\nsystemd.socket(5), systemd.service(5), nginx(8), journalctl(1)\n",
    );
    man.render_version_section(&mut out)?;
    Ok(out)
}

/// Lifts the soft open-files limit to the hard one: every connection is an
/// fd, and systemd's default soft limit (1024) would cap us long before
/// --max-connections does.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        if r.rlim_cur < r.rlim_max {
            let want = libc::rlimit {
                rlim_cur: r.rlim_max,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return r.rlim_max;
            }
        }
        r.rlim_cur
    }
}

fn fail_start(e: anyhow::Error) -> ExitCode {
    let msg = format!("{e:#}");
    tracing::error!("cannot start: {msg}");
    notify::status(&format!("failed to start: {msg}"));
    ExitCode::FAILURE
}

fn serve(
    args: ServeArgs,
    make_app: impl FnOnce(std::sync::Arc<crate::Stats>) -> crate::App,
    endpoints: crate::manage::Endpoints,
) -> ExitCode {
    // Single-threaded until the runtime is built: logging, then the
    // inherited sockets (which unsets LISTEN_* and must see no threads).
    journal::init(args.log_target, args.log_level.as_deref());
    let nofile = raise_nofile();
    let opts = BindOptions {
        mode: Some(args.socket_mode),
        group: args.socket_group.clone(),
    };
    let listeners = match listen::listeners(&args.listen, &args.http, &opts) {
        Ok(l) => l,
        Err(e) => return fail_start(e),
    };
    let mut max_connections = args.max_connections.max(1);
    let fd_budget = nofile.saturating_sub(64) as usize;
    if max_connections > fd_budget {
        tracing::warn!(
            "--max-connections {max_connections} exceeds what the open-files limit ({nofile}) allows; using {fd_budget}"
        );
        max_connections = fd_budget.max(1);
    }
    let config = ServerConfig {
        max_connections,
        max_requests: args.max_requests.max(1),
        max_requests_per_conn: args.max_requests_per_connection.max(1),
        max_params_bytes: args.max_params_bytes,
        max_body_bytes: args.max_body_bytes,
        stall_timeout: args.stall_timeout,
        idle_timeout: args.idle_timeout,
        shutdown_timeout: args.shutdown_timeout,
        idle_exit: args.idle_exit,
        // tokio's interval panics on a zero period.
        status_interval: args.status_interval.max(Duration::from_millis(10)),
        handle_signals: true,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_start(anyhow::Error::new(e).context("building the runtime")),
    };
    let queues = crate::listen_queue::ListenQueues::new(&listeners);
    let server = Server::new(config, listeners);
    let settings = crate::manage::Settings {
        endpoints: crate::manage::Endpoints::resolve(&args.manage, endpoints),
        deadlines: crate::deadline::Deadlines::from_args(&args.deadlines),
        slow_threshold: args.deadlines.slow_request_threshold,
    };
    let app = crate::manage::wrap(make_app(server.stats()), server.stats(), settings, queues);
    match rt.block_on(server.serve(app)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail_start(e),
    }
}

fn request(args: RequestArgs) -> ExitCode {
    match request_inner(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("myflask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn request_inner(args: &RequestArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let body = match args.data.as_deref() {
        None => Bytes::new(),
        Some("@-") => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .context("reading the body from standard input")?;
            Bytes::from(v)
        }
        Some(d) if d.starts_with('@') => Bytes::from(
            std::fs::read(&d[1..]).with_context(|| format!("reading the body from {}", &d[1..]))?,
        ),
        Some(d) => Bytes::from(d.to_string()),
    };
    let method = if args.data.is_some() && args.method == "GET" {
        "POST".to_string()
    } else {
        args.method.to_ascii_uppercase()
    };
    let mut headers = Vec::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} is not \"Name: value\""))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        headers.push(("Content-Type".into(), "application/octet-stream".into()));
    }
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let req = client::Request {
        method,
        uri: path,
        headers,
        body,
        params: Vec::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let addr = args.addr.clone();
    let resp = rt
        .block_on(async {
            tokio::time::timeout(args.timeout, client::request_once(&addr, &req)).await
        })
        .map_err(|_| anyhow::anyhow!("no complete answer from {addr} within {:?}", args.timeout))?
        .with_context(|| format!("FastCGI request to {addr} failed"))?;
    let mut out = std::io::stdout().lock();
    if resp.protocol_status != 0 {
        anyhow::bail!(
            "{addr} ended the request with protocol status {} (1 = cannot multiplex, 2 = overloaded, 3 = unknown role)",
            resp.protocol_status
        );
    }
    if args.include {
        writeln!(out, "Status: {}", resp.status)?;
        for (k, v) in &resp.headers {
            writeln!(out, "{k}: {v}")?;
        }
        writeln!(out)?;
    }
    out.write_all(&resp.body)?;
    out.flush()?;
    if !resp.stderr.is_empty() {
        eprintln!("{}", String::from_utf8_lossy(&resp.stderr));
    }
    Ok(if resp.status >= 400 {
        ExitCode::from(22)
    } else {
        ExitCode::SUCCESS
    })
}

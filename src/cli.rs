//! The command line: `myflask serve`, `myflask request`, and the hidden
//! `myflask manpage` that renders myflask(8) for the Debian package.
//!
//! Every `serve` option can also come from a `MYFLASK_*` environment
//! variable, which is how `/etc/default/myflask` configures the service.
//!
//! The command is named after the app (`crate::appname`): `--help`, the
//! usage lines and the man page of a binary `hello` built on [`main_with`]
//! say `hello`, and the man page's paths are `hello`'s.

use crate::addr::ListenAddr;
use crate::appname;
use crate::fastcgi::client;
use crate::mount::{self, MountPrefix};
use crate::server::{Server, ServerConfig};
use crate::systemd::journal::{self, LogTarget};
use crate::systemd::listen::BindOptions;
use crate::systemd::notify;
use bytes::Bytes;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
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
                  to systemd (Type=notify, WatchdogSec=), logs to the journal, drains \
                  in-flight requests on SIGTERM, and reloads without a stall (a new \
                  process takes over the sockets) on SIGHUP or `myflask reload`."
)]
pub struct Cli {
    /// Name of the app in the journal (SYSLOG_IDENTIFIER), the systemd
    /// status line, /status, --help and the man page [default: the
    /// executable's file name]
    #[arg(long, global = true, value_name = "NAME", value_parser = appname::validate, env = "MYFLASK_APP_NAME")]
    pub app_name: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the built-in application over FastCGI (and HTTP if asked).
    Serve(Box<ServeArgs>),
    /// Send one FastCGI request to a socket and print the response body.
    Request(RequestArgs),
    /// Reload a running server without a stall, and wait for the outcome
    /// (the unit's ExecReload=). The server (PID) starts a new process of
    /// the binary now on disk, with the same arguments and environment, on
    /// the same sockets; once it serves it becomes the main process and the
    /// old one drains its requests and exits. Exit status 0 when the new
    /// process serves; 1 when it could not start (the old one keeps
    /// serving; the reason is in the journal and in `systemctl status`).
    /// Settings (the MYFLASK_* variables of /etc/default/NAME) are not re-read: change them with
    /// `systemctl restart`. Plain SIGHUP reloads too, without an answer.
    Reload(ReloadArgs),
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

    /// TCP clients served, on every TCP listener (inherited or bound):
    /// addresses and CIDR ranges, comma-separated, e.g.
    /// 10.0.0.1,10.0.1.0/24,fd00::/8. Other peers are closed at accept and
    /// logged. `any` serves every peer. Needed to --listen on an address
    /// other than loopback; unix sockets are not affected.
    #[arg(long, value_name = "LIST", env = "MYFLASK_ALLOWED_CLIENTS")]
    pub allowed_clients: Option<crate::allow::AllowList>,

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

    /// Seconds a new process started by a reload (SIGHUP, `myflask
    /// reload`) gets to become ready before the reload counts as failed.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs, env = "MYFLASK_RELOAD_TIMEOUT")]
    pub reload_timeout: Duration,

    /// Seconds between STATUS= refreshes sent to systemd (hidden: for tests).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs, env = "MYFLASK_STATUS_INTERVAL", hide = true)]
    pub status_interval: Duration,

    /// Serve the app under this path prefix, e.g. /hello (WSGI's
    /// SCRIPT_NAME): /hello/x reaches the app as /x, /hello as /, and
    /// paths outside the prefix get a 404 from the server. The app finds
    /// the prefix in RequestInfo::mount_prefix. Empty or / means none.
    #[arg(long, value_name = "/PREFIX", value_parser = MountPrefix::parse, env = "MYFLASK_MOUNT_PREFIX")]
    pub mount_prefix: Option<MountPrefix>,

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

#[derive(Args, Debug)]
pub struct ReloadArgs {
    /// The server to reload (in the unit: $MAINPID).
    #[arg(long, value_name = "PID")]
    pub pid: i32,
    /// Seconds to wait for the outcome.
    #[arg(long, value_name = "SECS", default_value = "80", value_parser = parse_secs)]
    pub timeout: Duration,
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
    // The name is needed before parsing, to name the command in --help and
    // in usage errors; clap then checks the same flag and reports a bad one.
    if let Some(name) = name_from_args(std::env::args_os())
        .or_else(|| std::env::var("MYFLASK_APP_NAME").ok())
        .and_then(|n| appname::validate(&n).ok())
    {
        appname::set(name);
    }
    let cmd = command(appname::get());
    let cli = match Cli::from_arg_matches(&cmd.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Serve(args) => serve(*args, make_app, endpoints),
        Command::Request(args) => request(args),
        Command::Reload(args) => crate::reload::client::run(args.pid, args.timeout),
        Command::Manpage => match manpage(appname::get()) {
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

/// `--app-name NAME` or `--app-name=NAME` before any `--`.
fn name_from_args(args: impl Iterator<Item = std::ffi::OsString>) -> Option<String> {
    let mut args = args.skip(1);
    while let Some(a) = args.next() {
        let Some(a) = a.to_str() else { continue };
        if a == "--" {
            return None;
        }
        if a == "--app-name" {
            return args.next()?.into_string().ok();
        }
        if let Some(v) = a.strip_prefix("--app-name=") {
            return Some(v.to_string());
        }
    }
    None
}

/// The command line, named `name`. `myflask` itself keeps the texts of
/// its `#[command]` attributes; another app says what serves it, and its
/// version says whose version it is.
fn command(name: &'static str) -> clap::Command {
    let cmd = Cli::command().name(name).bin_name(name).long_about(format!(
        "{name} serves an HTTP application over FastCGI on sockets systemd hands over \
         (LISTEN_FDS), so nginx reaches it with `fastcgi_pass unix:/run/{name}/fcgi.sock;`. \
         It reports readiness, status and liveness to systemd (Type=notify, WatchdogSec=), \
         logs to the journal (SYSLOG_IDENTIFIER={name}), and drains in-flight requests on \
         SIGTERM."
    ));
    if name == "myflask" {
        return cmd;
    }
    cmd.about("An HTTP application served over FastCGI by myflask, socket-activated by systemd")
        .version(concat!("(myflask ", env!("CARGO_PKG_VERSION"), ")"))
        .mut_subcommand("serve", |s| {
            s.about("Serve the application over FastCGI (and HTTP if asked).")
        })
}

/// NAME(8): one page with every subcommand's synopsis and options (the
/// serve options carry their MYFLASK_* variables), so the package needs no
/// NAME-serve(8) and friends.
fn manpage(name: &'static str) -> std::io::Result<Vec<u8>> {
    let cmd = command(name);
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .title(name.to_uppercase());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let title = format!("{} {}", name, sub.get_name()).to_uppercase();
        out.extend_from_slice(format!(".SH \"{title}\"\n").as_bytes());
        let sub = sub.clone().bin_name(format!("{name} {}", sub.get_name()));
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
        format!(
            ".SH SIGNALS\n.TP\nSIGTERM, SIGINT\nStop accepting, finish the requests in flight \
             (--shutdown-timeout), close kept-alive connections without racing the web server, exit 0.\n\
             .TP\nSIGHUP\nReload: start the binary now on disk on the same sockets; once it serves it \
             becomes the service's main process and this process drains as on SIGTERM. \
             `{name} reload --pid PID` does the same and waits for the outcome.\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(
        format!(
            ".SH FILES\n.TP\n/etc/default/{name}\nMYFLASK_* settings read by {name}.service.\n\
             .TP\n/run/{name}/fcgi.sock\nThe FastCGI socket, owned by {name}.socket (root:www-data, 0660).\n\
             .SH JOURNAL\nLogs go to the journal with SYSLOG_IDENTIFIER={name}; read them with\n\
             .B journalctl -u {name}\n\
             .SH \"SEE ALSO\"\nsystemd.socket(5), systemd.service(5), nginx(8), journalctl(1)\n"
        )
        .as_bytes(),
    );
    if name == "myflask" {
        man.render_version_section(&mut out)?;
    } else {
        let v = env!("CARGO_PKG_VERSION");
        out.extend_from_slice(format!(".SH VERSION\nBuilt on myflask {v}.\n").as_bytes());
    }
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
    let allow = args.allowed_clients.as_ref();
    let asked: Vec<_> = args.listen.iter().chain(&args.http).collect();
    if let Err(e) = crate::allow::check_bind(&asked, allow) {
        return fail_start(e);
    }
    let listeners = match crate::server::listeners(&args.listen, &args.http, &opts) {
        Ok(l) => l,
        Err(e) => return fail_start(e),
    };
    crate::allow::warn_unguarded(&listeners, allow);
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
        reload_timeout: args.reload_timeout,
        handle_signals: true,
        allowed_clients: args.allowed_clients,
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
    let mut app = make_app(server.stats());
    if let Some(prefix) = args.mount_prefix.as_ref().filter(|p| !p.is_root()) {
        tracing::info!("serving the app under the path prefix {prefix}");
        app = mount::mount(app, prefix);
    }
    // The management endpoints sit outside the mount: their paths are the
    // operator's, matched on the request's full path.
    let settings = crate::manage::Settings {
        endpoints: crate::manage::Endpoints::resolve(&args.manage, endpoints),
        deadlines: crate::deadline::Deadlines::from_args(&args.deadlines),
        slow_threshold: args.deadlines.slow_request_threshold,
    };
    let app = crate::manage::wrap(app, server.stats(), settings, queues);
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
    let exchange = async {
        // A failed connect gets a diagnosis (missing socket, permissions,
        // nothing listening), a failed exchange the plain error.
        let s = client::connect(&addr)
            .await
            .map_err(|e| anyhow::anyhow!(crate::diagnose::connect_error(&addr, &e)))?;
        client::request_on(s, &req)
            .await
            .with_context(|| format!("FastCGI request to {addr} failed"))
    };
    let resp = rt
        .block_on(async { tokio::time::timeout(args.timeout, exchange).await })
        .map_err(|_| {
            anyhow::anyhow!("no complete answer from {addr} within {:?}", args.timeout)
        })??;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(args: &[&str]) -> Option<String> {
        name_from_args(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn app_name_is_found_before_parsing() {
        assert_eq!(
            scan(&["x", "--app-name", "a", "serve"]).as_deref(),
            Some("a")
        );
        assert_eq!(scan(&["x", "serve", "--app-name=b"]).as_deref(), Some("b"));
        assert_eq!(scan(&["x", "serve", "--", "--app-name", "c"]), None);
        assert_eq!(scan(&["x", "--app-name"]), None);
        assert_eq!(scan(&["--app-name", "argv0-is-skipped"]), None);
    }
}

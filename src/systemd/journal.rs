//! Logging: native journald when stderr is the journal, readable lines on
//! stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM=<dev>:<ino>` for a service whose stderr is
//! connected to the journal; comparing it with stderr's own device and inode
//! (systemd.exec(5)) tells "our stderr is the journal" apart from "a child of
//! a service that redirected stderr". Only then are structured fields worth
//! sending, with `SYSLOG_IDENTIFIER=` the app's name (`crate::appname`). A
//! missing journald socket falls back to stderr with one warning.

use std::str::FromStr;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogTarget {
    /// journald if stderr is the journal, else stderr
    #[default]
    Auto,
    /// the native journal protocol
    Journald,
    /// plain lines on stderr
    Stderr,
}

/// True when `JOURNAL_STREAM` names our stderr.
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (u64::from_str(dev), u64::from_str(ino)) else {
        return false;
    };
    // SAFETY: fstat on fd 2 with a zeroed stat buffer of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

/// Parses a filter such as `info` or `info,myflask::access=off`.
///
/// `Targets` (target=level directives) rather than `EnvFilter`: it needs no
/// regex engine, which keeps ~0.3 MB of code out of the binary and out of
/// the idle RSS, and it covers what operators write in RUST_LOG.
fn parse_filter(spec: &str) -> Result<Targets, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err("empty filter".into());
    }
    let t: Targets = spec.parse().map_err(|e| format!("{e}"))?;
    // A bare "myflask=debug" means: that target at debug, the rest as usual.
    if !spec.split(',').any(|d| !d.contains('=')) {
        return Ok(t.with_default(tracing::Level::INFO));
    }
    Ok(t)
}

/// Installs the global subscriber. `level` (from `--log-level`) wins over
/// `RUST_LOG`; the default is `info`.
pub fn init(target: LogTarget, level: Option<&str>) {
    let spec = level
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok());
    let mut bad_spec = None;
    let filter = match spec.as_deref().map(parse_filter) {
        None => Targets::new().with_default(tracing::Level::INFO),
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            bad_spec = Some(format!(
                "log filter {:?} is not valid ({e}); using \"info\"",
                spec.unwrap_or_default()
            ));
            Targets::new().with_default(tracing::Level::INFO)
        }
    };
    init_with(target, filter);
    if let Some(msg) = bad_spec {
        tracing::warn!("{msg}");
    }
}

fn init_with(target: LogTarget, filter: Targets) {
    let want_journal = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_syslog_identifier(crate::appname::get().to_string())
                    .with_field_prefix(None);
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => {
                init_stderr(filter);
                tracing::warn!("journald is not reachable ({e}); logging to stderr instead");
                return;
            }
        }
    }
    init_stderr(filter);
}

fn init_stderr(filter: Targets) {
    let under_systemd = std::env::var_os("INVOCATION_ID").is_some();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    if under_systemd {
        // The journal stamps lines itself.
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.without_time())
            .init();
    } else {
        tracing_subscriber::registry().with(filter).with(fmt).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn filters_operators_write() {
        let t = parse_filter("info,myflask::access=off").unwrap();
        assert!(t.would_enable("myflask::server", &Level::INFO));
        assert!(!t.would_enable("myflask::access", &Level::WARN));
        let t = parse_filter("warn").unwrap();
        assert!(!t.would_enable("myflask", &Level::INFO));
        let t = parse_filter("myflask=debug").unwrap();
        assert!(t.would_enable("myflask::x", &Level::DEBUG));
        assert!(t.would_enable("hyper", &Level::INFO));
        assert!(parse_filter("").is_err());
        assert!(parse_filter("info,=[").is_err());
    }
}

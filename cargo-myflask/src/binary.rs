//! The app's binary: built in release mode by cargo, then asked for what
//! only a binary built on `myflask::cli::main_with` answers: its manual
//! page (`<bin> manpage`) and its settings (`<bin> serve --help`). A binary
//! that does not answer is not packaged.

use crate::Options;
use crate::crate_info::{Crate, cargo};
use crate::settings::Settings;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the binary gets to print its manual page or help: a binary that
/// is not a myflask CLI may start serving instead, and is stopped.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

const NOT_MAIN_WITH: &str = "its main must hand the command line to myflask::cli::main_with, e.g. `fn main() -> std::process::ExitCode { myflask::cli::main_with(|_stats| myflask::App::from_tower(router())) }` (see the myflask README, \"Ship your own app\")";

/// Builds the release binary (unless --no-build) and returns its path.
pub fn build(c: &Crate, s: &Settings, opts: &Options) -> Result<PathBuf, String> {
    let bin = c.target_dir.join("release").join(&s.bin);
    if opts.build {
        let mut cmd = cargo();
        cmd.args([
            "build",
            "--release",
            "--package",
            &c.name,
            "--bin",
            &s.bin,
            "--manifest-path",
        ])
        .arg(c.dir.join("Cargo.toml"));
        if opts.locked {
            cmd.arg("--locked");
        }
        // cargo's progress and errors go to our stderr; stdout stays for the path.
        let status = cmd
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!(
                "cargo build --release of '{}' failed (its errors are above)",
                c.name
            ));
        }
    }
    if !bin.is_file() {
        return Err(format!(
            "{} does not exist: build it with cargo build --release, or drop --no-build",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Runs `bin args` with the app's name, stdin closed; returns stdout if it
/// exits 0 within ANSWER_TIMEOUT.
fn ask(bin: &Path, s: &Settings, args: &[&str]) -> Result<Vec<u8>, String> {
    let mut child = Command::new(bin)
        .args(args)
        .env("MYFLASK_APP_NAME", &s.name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break Some(status),
            None if start.elapsed() > ANSWER_TIMEOUT => break None,
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let cmdline = format!("{} {}", bin.display(), args.join(" "));
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!(
            "`{cmdline}` did not answer within {} s: {NOT_MAIN_WITH}",
            ANSWER_TIMEOUT.as_secs()
        ));
    };
    let out = reader.join().unwrap_or_default();
    match status.success() {
        true => Ok(out),
        false => Err(format!("`{cmdline}` failed ({status}): {NOT_MAIN_WITH}")),
    }
}

/// The section-8 manual page, from the binary itself.
pub fn manual_page(bin: &Path, s: &Settings) -> Result<Vec<u8>, String> {
    let page = ask(bin, s, &["manpage"])?;
    let text = String::from_utf8_lossy(&page);
    let Some(th) = text.lines().find(|l| l.starts_with(".TH ")) else {
        return Err(format!(
            "`{} manpage` printed no manual page: {NOT_MAIN_WITH}",
            bin.display()
        ));
    };
    let title = th.split_whitespace().nth(1).unwrap_or("").trim_matches('"');
    if !title.eq_ignore_ascii_case(&s.name) {
        eprintln!(
            "cargo-myflask: warning: the manual page is titled '{title}', not '{}' (a myflask older than MYFLASK_APP_NAME support); shipped as {}(8)",
            s.name, s.name
        );
    }
    Ok(page)
}

/// Every MYFLASK_* setting the binary knows must be documented in the
/// conffile: the conffile is where operators look.
pub fn check_settings_documented(
    bin: &Path,
    s: &Settings,
    default_file: &str,
) -> Result<(), String> {
    let help = String::from_utf8_lossy(&ask(bin, s, &["serve", "--help"])?).into_owned();
    let mut vars: Vec<&str> = help
        .match_indices("MYFLASK_")
        .map(|(i, _)| {
            let rest = &help[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    vars.sort_unstable();
    vars.dedup();
    let missing: Vec<&str> = vars
        .into_iter()
        .filter(|v| {
            !default_file
                .lines()
                .any(|l| l.trim_start_matches('#').starts_with(&format!("{v}=")))
        })
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "the conffile template (packaging/debian/app.default) does not document {} which `{} serve --help` lists: this cargo-myflask is older than the app's myflask, update it",
            missing.join(", "),
            bin.display()
        )),
    }
}

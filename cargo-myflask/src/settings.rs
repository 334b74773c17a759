//! The package's settings: `[package.metadata.myflask]` checked and
//! completed with defaults from the rest of Cargo.toml. Every rule a name,
//! path or number must follow is here, each broken rule one sentence that
//! names the field.

use crate::crate_info::Crate;
use serde_json::{Map, Value};
use std::path::PathBuf;

const KNOWN: &[&str] = &[
    "name",
    "bin",
    "socket-group",
    "http-socket",
    "network",
    "state-directory",
    "watchdog-sec",
    "shutdown-timeout",
    "mount-prefix",
    "revision",
    "maintainer",
    "section",
    "priority",
    "suggests",
    "extended-description",
    "changelog",
    "copyright",
];
const TABLE: &str = "[package.metadata.myflask]";

/// Everything the templates and the package need, validated.
pub struct Settings {
    /// Package, unit, socket directory, binary, user and journal name.
    pub name: String,
    /// The crate's binary target that becomes /usr/sbin/<name>.
    pub bin: String,
    /// Debian version: upstream (crate version) and revision.
    pub upstream_version: String,
    pub revision: String,
    /// The revision came from `--revision`, not from Cargo.toml.
    pub revision_overridden: bool,
    pub summary: String,
    pub extended_description: Option<String>,
    pub maintainer: String,
    pub section: String,
    pub priority: String,
    pub suggests: String,
    pub homepage: Option<String>,
    pub socket_group: String,
    pub http_socket: bool,
    pub network: bool,
    pub state_directory: bool,
    /// 0: no watchdog.
    pub watchdog_sec: u64,
    pub shutdown_timeout: u64,
    pub mount_prefix: Option<String>,
    pub changelog: Option<PathBuf>,
    /// The `Copyright:` line of debian/copyright, e.g. "2026 Jane Doe".
    pub copyright: Option<String>,
}

impl Settings {
    pub fn version(&self) -> String {
        format!("{}-{}", self.upstream_version, self.revision)
    }

    /// `--revision`: this revision instead of Cargo.toml's.
    pub fn set_revision(&mut self, r: &str) -> Result<(), String> {
        self.revision = revision(r)?;
        self.revision_overridden = true;
        Ok(())
    }

    pub fn from_crate(c: &Crate) -> Result<Settings, String> {
        let empty = Map::new();
        let meta = match &c.myflask_meta {
            Value::Null => &empty,
            Value::Object(m) => m,
            _ => return Err(format!("{TABLE} must be a table")),
        };
        if let Some(k) = meta.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(format!(
                "{TABLE} has an unknown setting '{k}' (known: {})",
                KNOWN.join(", ")
            ));
        }
        if !c.uses_myflask {
            return Err(format!(
                "crate '{}' does not depend on myflask: its binary must hand the command line to myflask::cli::main_with (add myflask to [dependencies]; see the myflask README, \"Ship your own app\")",
                c.name
            ));
        }
        let bin = pick_bin(c, meta)?;
        let name = match text(meta, "name")? {
            Some(n) => n,
            None => bin.clone(),
        };
        check_name(&name)?;
        Ok(Settings {
            upstream_version: debian_version(&c.version)?,
            revision: revision(text(meta, "revision")?.as_deref().unwrap_or("1"))?,
            revision_overridden: false,
            summary: summary(c)?,
            extended_description: text(meta, "extended-description")?,
            maintainer: maintainer(c, meta)?,
            section: text(meta, "section")?.unwrap_or_else(|| "web".into()),
            priority: text(meta, "priority")?.unwrap_or_else(|| "optional".into()),
            suggests: text(meta, "suggests")?.unwrap_or_else(|| "nginx".into()),
            homepage: c.homepage.clone(),
            socket_group: group(meta)?,
            http_socket: flag(meta, "http-socket")?,
            network: flag(meta, "network")?,
            state_directory: flag(meta, "state-directory")?,
            watchdog_sec: seconds(meta, "watchdog-sec", 10, 0)?,
            shutdown_timeout: seconds(meta, "shutdown-timeout", 30, 1)?,
            mount_prefix: mount_prefix(meta)?,
            changelog: text(meta, "changelog")?.map(|p| c.dir.join(p)),
            copyright: text(meta, "copyright")?,
            bin,
            name,
        })
    }
}

fn text(meta: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match meta.get(key) {
        None => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
        Some(v) => Err(format!("{TABLE} {key} must be a non-empty string, not {v}")),
    }
}

fn flag(meta: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match meta.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(format!("{TABLE} {key} must be true or false, not {v}")),
    }
}

fn seconds(meta: &Map<String, Value>, key: &str, default: u64, min: u64) -> Result<u64, String> {
    match meta.get(key) {
        None => Ok(default),
        Some(v) => match v.as_u64() {
            Some(n) if (min..=86_400).contains(&n) => Ok(n),
            _ => Err(format!(
                "{TABLE} {key} must be a whole number of seconds from {min} to 86400, not {v}"
            )),
        },
    }
}

fn pick_bin(c: &Crate, meta: &Map<String, Value>) -> Result<String, String> {
    if let Some(b) = text(meta, "bin")? {
        return match c.bins.contains(&b) {
            true => Ok(b),
            false => Err(format!(
                "{TABLE} bin = \"{b}\" is not a binary of crate '{}' (it has: {})",
                c.name,
                c.bins.join(", ")
            )),
        };
    }
    match c.bins.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "crate '{}' has no binary: add src/main.rs calling myflask::cli::main_with",
            c.name
        )),
        many => Err(format!(
            "crate '{}' has several binaries ({}): choose one with {TABLE} bin",
            c.name,
            many.join(", ")
        )),
    }
}

/// One name serves as Debian package, systemd unit, DynamicUser user,
/// /run directory and nginx upstream: the rule is the intersection of theirs.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() >= 2
        && name.len() <= 31
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    match ok {
        true => Ok(()),
        false => Err(format!(
            "'{name}' cannot name the package: it is the Debian package, systemd unit and user name, so it must be 2 to 31 characters of lower-case letters, digits and '-', starting with a letter (set {TABLE} name)"
        )),
    }
}

fn group(meta: &Map<String, Value>) -> Result<String, String> {
    let g = text(meta, "socket-group")?.unwrap_or_else(|| "www-data".into());
    let ok = g.len() <= 32
        && g.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && g.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    match ok {
        true => Ok(g),
        false => Err(format!(
            "{TABLE} socket-group '{g}' is not a valid group name"
        )),
    }
}

fn mount_prefix(meta: &Map<String, Value>) -> Result<Option<String>, String> {
    let Some(p) = text(meta, "mount-prefix")? else {
        return Ok(None);
    };
    let segments_ok = p.strip_prefix('/').is_some_and(|rest| {
        rest.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
        })
    });
    match segments_ok {
        true => Ok(Some(p)),
        false => Err(format!(
            "{TABLE} mount-prefix '{p}' must look like /name or /a/b: a leading '/', no trailing '/', letters, digits and -._~ only"
        )),
    }
}

fn summary(c: &Crate) -> Result<String, String> {
    let d = c.description.as_deref().ok_or(
        "Cargo.toml has no package.description: it becomes the package's one-line Description, e.g. description = \"Guest book web app\"",
    )?;
    let line = d
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches('.')
        .to_owned();
    Ok(line)
}

/// Debian's version from the crate's: a semver pre-release sorts before
/// the release in Debian only with `~`.
fn debian_version(v: &str) -> Result<String, String> {
    if v.is_empty() || v == "0.0.0" {
        return Err("Cargo.toml has no package.version (or 0.0.0): set the version you release, e.g. version = \"0.1.0\"".into());
    }
    Ok(v.replacen('-', "~", 1))
}

/// A Debian revision: starts with a digit, then alphanumerics and + . ~
/// (Debian Policy 5.6.12; no hyphen, it would end the upstream version).
fn revision(r: &str) -> Result<String, String> {
    let ok = r.starts_with(|c: char| c.is_ascii_digit())
        && r.chars()
            .all(|c| c.is_ascii_alphanumeric() || "+.~".contains(c));
    match ok {
        true => Ok(r.to_owned()),
        false => Err(format!(
            "revision '{r}' is not a Debian revision: a digit, then letters, digits, + . or ~ (e.g. 2 or 1+local1)"
        )),
    }
}

fn maintainer(c: &Crate, meta: &Map<String, Value>) -> Result<String, String> {
    let m = match text(meta, "maintainer")? {
        Some(m) => m,
        None => c.authors.first().cloned().unwrap_or_default(),
    };
    let ok = m.contains('<') && m.ends_with('>') && m.contains('@') && !m.starts_with('<');
    match ok {
        true => Ok(m),
        false => Err(format!(
            "Cargo.toml needs package.authors = [\"Name <you@example.org>\"] or {TABLE} maintainer: it becomes the package's Maintainer field{}",
            if m.is_empty() {
                String::new()
            } else {
                format!(" ('{m}' has no name and e-mail address)")
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["myflask", "hello-app", "a2", "guest-book-2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "Hello",
            "hello_app",
            "h",
            "-x",
            "x-",
            "9lives",
            "a.b",
            "a+b",
            &"x".repeat(32),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes() {
        let m = |p: &str| {
            let mut map = Map::new();
            map.insert("mount-prefix".into(), Value::String(p.into()));
            mount_prefix(&map)
        };
        assert_eq!(m("/hello").unwrap().as_deref(), Some("/hello"));
        assert!(m("/a/b-c").is_ok());
        for bad in [
            "hello", "/hello/", "/", "/a//b", "/../x", "/a b", "/a;b", "/a{b}",
        ] {
            assert!(m(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(debian_version("1.2.3").unwrap(), "1.2.3");
        assert_eq!(debian_version("1.0.0-rc.1").unwrap(), "1.0.0~rc.1");
        assert!(debian_version("0.0.0").is_err());
        assert_eq!(revision("1+sdtest2").unwrap(), "1+sdtest2");
        for bad in ["", "a1", "1-2", "1 2", "1/2"] {
            assert!(revision(bad).is_err(), "{bad}");
        }
    }
}

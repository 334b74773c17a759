//! The package's documentation files: debian/copyright in the DEP-5 format
//! (generated from the crate's licence) and the Debian changelog (the
//! crate's own if it names one, else a one-entry changelog for this version).

use crate::crate_info::Crate;
use crate::settings::Settings;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MIT: &str = include_str!("../licenses/MIT");
const APACHE: &str = include_str!("../licenses/Apache-2.0");

pub struct Docs {
    pub copyright: String,
    pub changelog: String,
    /// Entries in the changelog (lintian's initial-upload tag is about one).
    pub changelog_entries: usize,
}

/// Build time: SOURCE_DATE_EPOCH when set (reproducible builds), else now.
fn build_time() -> SystemTime {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
        .unwrap_or_else(SystemTime::now)
}

/// RFC 2822 as Debian changelogs want it ("Thu, 03 Dec 2026 09:30:15 +0000").
fn rfc2822(t: SystemTime) -> String {
    httpdate::fmt_http_date(t).replace(" GMT", " +0000")
}

fn year(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
        .split(' ')
        .nth(3)
        .unwrap_or("1970")
        .to_owned()
}

impl Docs {
    pub fn generate(s: &Settings, c: &Crate) -> Result<Docs, String> {
        let (changelog, changelog_entries) = changelog(s)?;
        Ok(Docs {
            copyright: copyright(s, c)?,
            changelog,
            changelog_entries,
        })
    }
}

fn changelog(s: &Settings) -> Result<(String, usize), String> {
    let Some(path) = &s.changelog else {
        let text = format!(
            "{n} ({v}) unstable; urgency=medium\n\n  * Release {u}, packaged by cargo myflask deb.\n\n -- {m}  {d}\n",
            n = s.name,
            v = s.version(),
            u = s.upstream_version,
            m = s.maintainer,
            d = rfc2822(build_time())
        );
        return Ok((text, 1));
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("changelog {}: {e}", path.display()))?;
    let heads: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_alphanumeric()))
        .collect();
    let want = format!("{} ({}) ", s.name, s.version());
    match heads.first() {
        Some(h) if h.starts_with(&want) => Ok((text.clone(), heads.len())),
        Some(_) if s.revision_overridden => Ok((rebuild_entry(s) + "\n" + &text, heads.len() + 1)),
        Some(h) => Err(format!(
            "the changelog {} starts with '{h}', not with an entry for {} {}: add one (dch -v {})",
            path.display(),
            s.name,
            s.version(),
            s.version()
        )),
        None => Err(format!("the changelog {} has no entry", path.display())),
    }
}

/// The entry on top of the crate's changelog for a `--revision` it has no
/// entry for.
fn rebuild_entry(s: &Settings) -> String {
    format!(
        "{n} ({v}) unstable; urgency=medium\n\n  * Rebuild of {n} {u} as revision {r} (cargo myflask deb --revision).\n\n -- {m}  {d}\n",
        n = s.name,
        v = s.version(),
        u = s.upstream_version,
        r = s.revision,
        m = s.maintainer,
        d = rfc2822(build_time())
    )
}

/// DEP-5 copyright. The crate's licence expression (SPDX, e.g.
/// "MIT OR Apache-2.0") is spelled the DEP-5 way; each licence needs its
/// text: MIT and Apache-2.0 are built in, others come from license-file.
fn copyright(s: &Settings, c: &Crate) -> Result<String, String> {
    let holder = match &s.copyright {
        Some(h) => h.clone(),
        None => {
            let names: Vec<&str> = c
                .authors
                .iter()
                .map(|a| a.split('<').next().unwrap_or(a).trim())
                .collect();
            format!("{} {}", year(build_time()), names.join(", "))
        }
    };
    let (license, paragraphs) = licenses(c)?;
    let contact = &s.maintainer;
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {crate_name}\n\
         Upstream-Contact: {contact}\n\
         Comment:\n \
         The binary /usr/sbin/{name} statically links Rust crates from crates.io\n \
         (myflask, tokio, hyper and their dependencies); each is distributed under\n \
         its own licence, listed in the Cargo.lock of the {crate_name} source.\n\n\
         Files: *\n\
         Copyright: {holder}\n\
         License: {license}\n\n{paragraphs}",
        crate_name = c.name,
        name = s.name
    ))
}

fn licenses(c: &Crate) -> Result<(String, String), String> {
    if let Some(expr) = &c.license {
        let ids: Vec<&str> = expr.split(" OR ").map(str::trim).collect();
        let mut paragraphs = Vec::new();
        for id in &ids {
            match *id {
                "MIT" => paragraphs.push(format!("License: MIT\n{}", indent(MIT))),
                "Apache-2.0" => paragraphs.push(format!("License: Apache-2.0\n{}", indent(APACHE))),
                other if c.license_file.is_none() => {
                    return Err(format!(
                        "Cargo.toml license '{other}' has no built-in text (MIT and Apache-2.0 do): add license-file = \"LICENSE\" to [package]"
                    ));
                }
                _ => return from_file(c),
            }
        }
        return Ok((ids.join(" or "), paragraphs.join("\n")));
    }
    if c.license_file.is_some() {
        return from_file(c);
    }
    Err("Cargo.toml has no package.license (e.g. license = \"MIT OR Apache-2.0\") or package.license-file: the package's copyright file needs one".into())
}

fn from_file(c: &Crate) -> Result<(String, String), String> {
    let path = c.license_file.as_ref().ok_or("no license-file")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("license-file {}: {e}", path.display()))?;
    let name = format!("{}-license", c.name);
    Ok((name.clone(), format!("License: {name}\n{}", indent(&text))))
}

/// DEP-5 text block: every line indented by one space, blank lines as " .".
fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| match l.trim().is_empty() {
            true => " .\n".to_owned(),
            false => format!(" {}\n", l.trim_end()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_blocks() {
        let t = UNIX_EPOCH + Duration::from_secs(1_796_290_215);
        assert_eq!(rfc2822(t), "Thu, 03 Dec 2026 09:30:15 +0000");
        assert_eq!(year(t), "2026");
        assert_eq!(indent("a\n\nb\n"), " a\n .\n b\n");
    }
}

//! The application's name: what the journal (`SYSLOG_IDENTIFIER=`), the
//! systemd status line, `/status`, `--help` and the man page call it.
//!
//! One name per process, set once by the command line (`--app-name`,
//! `MYFLASK_APP_NAME`) before logging starts. Unset, it is the executable's
//! file name, so a binary `hello` built on `myflask::cli::main_with` is
//! `hello` with no configuration. The executable's name is lowercased and
//! its `_` become `-` (as cargo-deb derives a package name from a crate's),
//! so `my_app` is `my-app`; one still not valid (see [`validate`]) falls
//! back to `myflask`.

use std::sync::OnceLock;

static NAME: OnceLock<String> = OnceLock::new();

/// Longest accepted name: Debian package names and unit names stay well
/// under it, and it keeps `/run/<name>/fcgi.sock` far from the 108-byte
/// limit of a unix socket path.
const MAX_LEN: usize = 64;

/// Checks a name for every place it ends up: a Debian package name, a
/// systemd unit name, a directory under /run, a syslog identifier. So:
/// lowercase ASCII letters, digits, `.`, `+` and `-`, starting with a letter
/// or digit, at most 64 bytes.
pub fn validate(s: &str) -> Result<String, String> {
    let ok_first = s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit());
    let ok_rest = s
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '+' | '-'));
    if s.is_empty() || s.len() > MAX_LEN || !ok_first || !ok_rest {
        return Err(format!(
            "{s:?} is not a valid app name: use 1 to {MAX_LEN} lowercase letters, digits, '.', \
             '+' or '-', starting with a letter or digit (it names a Debian package, a systemd \
             unit and /run/<name>)"
        ));
    }
    Ok(s.to_string())
}

/// The executable's file name as a name, if it makes a valid one.
fn from_executable() -> Option<String> {
    let exe = std::env::current_exe().ok()?;
    let file = exe.file_name()?.to_str()?;
    // /proc/self/exe of a binary replaced on disk (a package upgrade while
    // it runs) reads "NAME (deleted)".
    let file = file.strip_suffix(" (deleted)").unwrap_or(file);
    validate(&file.to_ascii_lowercase().replace('_', "-")).ok()
}

/// Sets the name; the first call wins (it happens once, before logging).
/// Returns false if a name was already in place.
pub fn set(name: String) -> bool {
    NAME.set(name).is_ok()
}

/// The name: the one set, or the executable's, or `myflask`.
pub fn get() -> &'static str {
    NAME.get_or_init(|| from_executable().unwrap_or_else(|| "myflask".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_fit_a_package_a_unit_and_a_path() {
        for good in [
            "myflask",
            "hello",
            "hello-world",
            "app2",
            "0ad",
            "g++",
            "a.b",
        ] {
            assert_eq!(validate(good).as_deref(), Ok(good));
        }
        let long = "a".repeat(MAX_LEN + 1);
        for bad in ["", "Hello", "-x", ".x", "a b", "a/b", "a_b", "héllo", &long] {
            let e = validate(bad).expect_err(bad);
            assert!(e.contains("is not a valid app name"), "{e}");
        }
        assert!(validate(&"a".repeat(MAX_LEN)).is_ok());
    }

    #[test]
    fn default_is_the_executable_file_name() {
        // The unit-test binary is target/debug/deps/myflask-<hash>.
        let name = from_executable().expect("a valid executable name");
        assert!(name.starts_with("myflask-"), "{name}");
    }
}

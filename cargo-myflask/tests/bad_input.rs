//! Bad input, run through the real `cargo-myflask` binary on throw-away
//! crates: each case must end in exit status 1 and one sentence on stderr
//! that names what is wrong, with nothing on stdout and no package (or
//! staging directory) left behind.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GOOD: &str = r#"
[package]
name = "guest-book"
version = "1.2.0"
edition = "2021"
description = "Guest book web app"
license = "MIT"
authors = ["Jane Doe <jane@example.org>"]
"#;

fn myflask_dep() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    format!(
        "\n[dependencies]\nmyflask = {{ path = {:?} }}\n",
        root.display().to_string()
    )
}

/// A crate in a temporary directory: `manifest` is the whole Cargo.toml.
fn krate(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    dir
}

/// A stand-in executable at target/release/<bin> (what --no-build packages).
fn fake_binary(dir: &Path, bin: &str, script: &str) -> PathBuf {
    let release = dir.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    let path = release.join(bin);
    std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn run_in(dir: &Path, args: &[&str], path_env: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-myflask"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR");
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    cmd.output().unwrap()
}

/// Asserts the failure shape and returns the message.
fn fails(out: &Output, want: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let line = err
        .lines()
        .find(|l| l.starts_with("cargo-myflask: error: "))
        .unwrap_or_else(|| panic!("no error line in: {err}"));
    for w in want {
        assert!(line.contains(w), "'{w}' not in: {line}");
    }
    line.to_owned()
}

fn no_package_left(dir: &Path) {
    let debian = dir.join("target/debian");
    let left: Vec<_> = std::fs::read_dir(&debian)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", debian.display());
}

#[test]
fn not_in_a_crate() {
    let dir = tempfile::tempdir().unwrap();
    fails(
        &run_in(dir.path(), &["myflask", "deb"], None),
        &["no Cargo.toml", "directory of your app's crate"],
    );
}

#[test]
fn crate_without_myflask() {
    let dir = krate(GOOD);
    fails(
        &run_in(dir.path(), &["myflask", "deb"], None),
        &["does not depend on myflask", "myflask::cli::main_with"],
    );
    no_package_left(dir.path());
}

#[test]
fn binary_not_built_on_main_with() {
    let dir = krate(&format!("{GOOD}{}", myflask_dep()));
    fake_binary(dir.path(), "guest-book", "echo 'Hello, world!'");
    let msg = fails(
        &run_in(dir.path(), &["myflask", "deb", "--no-build"], None),
        &["manpage", "myflask::cli::main_with"],
    );
    assert!(msg.contains("printed no manual page"), "{msg}");
    no_package_left(dir.path());
}

#[test]
fn binary_that_serves_instead_of_answering_is_stopped() {
    let dir = krate(&format!("{GOOD}{}", myflask_dep()));
    fake_binary(dir.path(), "guest-book", "exec sleep 60");
    let t = std::time::Instant::now();
    fails(
        &run_in(dir.path(), &["myflask", "deb", "--no-build"], None),
        &["did not answer", "main_with"],
    );
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
    no_package_left(dir.path());
}

#[test]
fn names_that_cannot_be_package_and_unit_names() {
    for (meta, bad) in [
        ("name = \"Guest_Book\"", "Guest_Book"),
        ("name = \"gb.app\"", "gb.app"),
        ("", "guest_book"),
    ] {
        let manifest = format!(
            "{GOOD}\n[[bin]]\nname = \"guest_book\"\npath = \"src/main.rs\"\n{}\n[package.metadata.myflask]\n{meta}\n",
            myflask_dep()
        );
        let dir = krate(&manifest);
        fails(
            &run_in(dir.path(), &["myflask", "deb"], None),
            &[&format!("'{bad}' cannot name the package"), "lower-case"],
        );
        no_package_left(dir.path());
    }
}

#[test]
fn missing_fields_are_named() {
    let cases = [
        (
            GOOD.replace("description = \"Guest book web app\"\n", ""),
            "package.description",
        ),
        (GOOD.replace("version = \"1.2.0\"\n", ""), "package.version"),
        (
            GOOD.replace("authors = [\"Jane Doe <jane@example.org>\"]\n", ""),
            "package.authors",
        ),
        (GOOD.replace("license = \"MIT\"\n", ""), "package.license"),
    ];
    for (manifest, field) in cases {
        let dir = krate(&format!("{manifest}{}", myflask_dep()));
        fails(&run_in(dir.path(), &["myflask", "deb"], None), &[field]);
        no_package_left(dir.path());
    }
}

#[test]
fn bad_settings_are_named() {
    let cases = [
        ("mount-prefix = \"hello/\"", "mount-prefix"),
        ("watchdog-sec = \"10s\"", "watchdog-sec"),
        ("network = \"yes\"", "network must be true or false"),
        (
            "socket-grup = \"www-data\"",
            "unknown setting 'socket-grup'",
        ),
    ];
    for (meta, want) in cases {
        let dir = krate(&format!(
            "{GOOD}{}\n[package.metadata.myflask]\n{meta}\n",
            myflask_dep()
        ));
        fails(&run_in(dir.path(), &["myflask", "deb"], None), &[want]);
        no_package_left(dir.path());
    }
}

#[test]
fn missing_tools_say_how_to_install() {
    let dir = krate(&format!("{GOOD}{}", myflask_dep()));
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().to_str().unwrap();
    fails(
        &run_in(dir.path(), &["myflask", "deb"], Some(path)),
        &["dpkg-deb", "dpkg-shlibdeps", "apt install", "dpkg-dev"],
    );
    no_package_left(dir.path());
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["myflask", "rpm"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cargo myflask deb"));
    let out = run_in(dir.path(), &["myflask", "deb", "--frobnicate"], None);
    assert_eq!(out.status.code(), Some(2));
}

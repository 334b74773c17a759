//! The whole pipeline on a throw-away crate: `cargo myflask deb --no-build`
//! with a real myflask binary (the workspace's debug build, copied in as
//! the crate's release binary) must print the .deb's path last and produce
//! a package with the name-parametric files, Debian fields and conffiles,
//! and a binary whose `/status` reports the package's version, `--revision`
//! included.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

const MANIFEST: &str = r#"
[package]
name = "guest-book"
version = "1.2.0-rc.1"
edition = "2021"
description = "Guest book web app."
license = "MIT OR Apache-2.0"
authors = ["Jane Doe <jane@example.org>"]

[package.metadata.myflask]
mount-prefix = "/guests"
http-socket = true
shutdown-timeout = 60
"#;

/// Builds the workspace's myflask binary (debug) and returns its path.
fn myflask_binary() -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--quiet",
            "-p",
            "myflask",
            "--bin",
            "myflask",
            "--manifest-path",
        ])
        .arg(root.join("Cargo.toml"))
        .status()
        .unwrap();
    assert!(status.success());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| root.join("target"));
    target.join("debug/myflask")
}

fn stdout(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A throw-away crate on myflask with the real binary as its release build.
fn guest_book(extra_manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let manifest = format!(
        "{MANIFEST}{extra_manifest}\n[dependencies]\nmyflask = {{ path = {:?} }}\n",
        root.display().to_string()
    );
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::copy(myflask_binary(), release.join("guest-book")).unwrap();
    std::fs::set_permissions(
        release.join("guest-book"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// `cargo myflask deb --no-build ARGS` in DIR; the .deb's path.
fn package(dir: &Path, args: &[&str]) -> String {
    let out = stdout(
        Command::new(env!("CARGO_BIN_EXE_cargo-myflask"))
            .args(["myflask", "deb", "--no-build"])
            .args(args)
            .current_dir(dir)
            .env_remove("CARGO_TARGET_DIR"),
    );
    out.lines().last().unwrap_or_default().to_owned()
}

#[test]
fn packages_a_crate_built_on_myflask() {
    let dir = guest_book("");
    let deb = &package(dir.path(), &[]);
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    assert!(
        deb.ends_with(&format!(
            "target/debian/guest-book_1.2.0~rc.1-1_{}.deb",
            arch.trim()
        )),
        "{deb}"
    );
    assert!(Path::new(deb).is_file());
    let work: Vec<_> = std::fs::read_dir(dir.path().join("target/debian"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(work.len(), 1, "only the .deb is left: {work:?}");

    let field = |f: &str| {
        stdout(Command::new("dpkg-deb").args(["-f", deb, f]))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "guest-book");
    assert_eq!(field("Maintainer"), "Jane Doe <jane@example.org>");
    assert!(field("Depends").contains("libc6"), "{}", field("Depends"));
    assert!(
        field("Description").starts_with("Guest book web app\n"),
        "{}",
        field("Description")
    );

    let files = stdout(Command::new("dpkg-deb").args(["-c", deb]));
    for f in [
        "./usr/sbin/guest-book",
        "./usr/lib/systemd/system/guest-book.socket",
        "./usr/lib/systemd/system/guest-book.service",
        "./usr/lib/systemd/system/guest-book-http.socket",
        "./etc/default/guest-book",
        "./etc/nginx/snippets/guest-book.conf",
        "./etc/nginx/snippets/guest-book-upstream.conf",
        "./usr/share/doc/guest-book/examples/nginx-site.conf",
        "./usr/share/doc/guest-book/copyright",
        "./usr/share/doc/guest-book/changelog.Debian.gz",
        "./usr/share/man/man8/guest-book.8.gz",
    ] {
        assert!(
            files.lines().any(|l| l.ends_with(f)),
            "{f} not in:\n{files}"
        );
    }
    assert!(!files.contains("myflask"), "{files}");

    let x = dir.path().join("x");
    stdout(Command::new("dpkg-deb").args(["-R", deb]).arg(&x));
    let read = |p: &str| std::fs::read_to_string(x.join(p)).unwrap();
    assert_eq!(
        read("DEBIAN/conffiles"),
        "/etc/default/guest-book\n/etc/nginx/snippets/guest-book.conf\n/etc/nginx/snippets/guest-book-upstream.conf\n"
    );
    let service = read("usr/lib/systemd/system/guest-book.service");
    assert!(service.contains("ExecStart=/usr/sbin/guest-book serve\n"));
    assert!(service.contains("TimeoutStopSec=75s\n"));
    let default = read("etc/default/guest-book");
    assert!(
        default.contains("\nMYFLASK_MOUNT_PREFIX=/guests\n")
            && default.contains("\nMYFLASK_SHUTDOWN_TIMEOUT=60\n")
    );
    assert!(
        read("usr/share/doc/guest-book/examples/nginx-site.conf").contains("location /guests/ {")
    );
    let postinst = read("DEBIAN/postinst");
    assert!(postinst.contains("deb-systemd-invoke reload 'guest-book.service'"));
    assert!(postinst.contains("deb-systemd-invoke restart 'guest-book.service'"));
    // preinst and postinst digest the same files: the unit files and the conffile.
    let files = "for f in /usr/lib/systemd/system/guest-book.socket \
                 /usr/lib/systemd/system/guest-book-http.socket \
                 /usr/lib/systemd/system/guest-book.service /etc/default/guest-book; do";
    assert!(read("DEBIAN/preinst").contains(files) && postinst.contains(files));
    assert!(!read("DEBIAN/postinst").contains("restart 'guest-book.socket'"));
    let sums = read("DEBIAN/md5sums");
    assert!(
        sums.contains("  usr/sbin/guest-book\n") && !sums.contains("DEBIAN"),
        "{sums}"
    );
}

/// The packaged binary's `/status` field `package_version`, asked over
/// FastCGI from the binary itself serving on a unix socket in DIR.
fn served_package_version(bin: &Path, dir: &Path) -> serde_json::Value {
    let sock = dir.join("s.sock");
    let addr = format!("unix:{}", sock.display());
    let mut server = Command::new(bin)
        .args(["serve", "--listen", &addr])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let out = loop {
        let out = Command::new(bin)
            .args(["request", &addr, "/status"])
            .output()
            .unwrap();
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = server.kill();
    let _ = server.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    v["package_version"].clone()
}

#[test]
fn the_binary_reports_the_package_version_and_revision_needs_no_rebuild() {
    // A changelog of the crate's own, without an entry for revision 2.
    let dir = guest_book("changelog = \"debian.changelog\"\n");
    std::fs::write(
        dir.path().join("debian.changelog"),
        "guest-book (1.2.0~rc.1-1) unstable; urgency=medium\n\n  * First.\n\n -- Jane Doe <jane@example.org>  Wed, 25 Nov 2026 15:00:00 +0000\n",
    )
    .unwrap();
    let built = dir.path().join("target/release/guest-book");
    let before = std::fs::read(&built).unwrap();
    let deb = package(dir.path(), &["--revision", "2+local1"]);
    assert!(deb.contains("guest-book_1.2.0~rc.1-2+local1_"), "{deb}");
    let field = stdout(Command::new("dpkg-deb").args(["-f", &deb, "Version"]));
    assert_eq!(field.trim(), "1.2.0~rc.1-2+local1");
    assert_eq!(
        std::fs::read(&built).unwrap(),
        before,
        "the build is left as it was"
    );

    let x = dir.path().join("x");
    stdout(Command::new("dpkg-deb").args(["-x", &deb]).arg(&x));
    let changelog = stdout(
        Command::new("sh")
            .arg("-c")
            .arg("zcat \"$0\"")
            .arg(x.join("usr/share/doc/guest-book/changelog.Debian.gz")),
    );
    assert!(
        changelog.starts_with("guest-book (1.2.0~rc.1-2+local1) unstable;")
            && changelog.contains("\nguest-book (1.2.0~rc.1-1) unstable;"),
        "{changelog}"
    );
    let bin = x.join("usr/sbin/guest-book");
    assert_eq!(
        served_package_version(&bin, dir.path()),
        "1.2.0~rc.1-2+local1"
    );
    // The unpackaged build reports none.
    assert_eq!(
        served_package_version(&built, dir.path()),
        serde_json::Value::Null
    );
}

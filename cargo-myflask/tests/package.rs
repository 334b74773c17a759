//! The whole pipeline on a throw-away crate: `cargo myflask deb --no-build`
//! with a real myflask binary (the workspace's debug build, copied in as
//! the crate's release binary) must print the .deb's path last and produce
//! a package with the name-parametric files, Debian fields and conffiles.

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

#[test]
fn packages_a_crate_built_on_myflask() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let manifest = format!(
        "{MANIFEST}\n[dependencies]\nmyflask = {{ path = {:?} }}\n",
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

    let out = stdout(
        Command::new(env!("CARGO_BIN_EXE_cargo-myflask"))
            .args(["myflask", "deb", "--no-build"])
            .current_dir(dir.path())
            .env_remove("CARGO_TARGET_DIR"),
    );
    let arch = stdout(Command::new("dpkg").arg("--print-architecture"));
    let deb = out.lines().last().unwrap();
    assert!(
        deb.ends_with(&format!(
            "target/debian/guest-book_1.2.0~rc.1-1_{}.deb",
            arch.trim()
        )),
        "{out}"
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

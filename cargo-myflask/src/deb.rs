//! The .deb itself: a staging tree with every file at its installed path
//! and mode, DEBIAN/ control files (Depends from dpkg-shlibdeps, md5sums,
//! conffiles), archived by `dpkg-deb --build --root-owner-group`. The
//! archive is written under a temporary name and renamed at the end, so a
//! failure never leaves a half-built package at the final path.

use crate::crate_info::Crate;
use crate::docs::Docs;
use crate::settings::Settings;
use crate::units::Texts;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// External tools and the Debian package that has each.
const TOOLS: &[(&str, &str)] = &[
    ("dpkg-deb", "dpkg"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("strip", "binutils"),
    ("gzip", "gzip"),
    ("md5sum", "coreutils"),
];

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Fails, saying how to install them, if tools are missing.
pub fn check_tools() -> Result<(), String> {
    let missing: Vec<&(&str, &str)> = TOOLS.iter().filter(|(t, _)| !on_path(t)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let tools: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
    let mut pkgs: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    pkgs.dedup();
    Err(format!(
        "{} not found: install with `sudo apt install {}` (cargo myflask deb builds the package with dpkg-deb)",
        tools.join(", "),
        pkgs.join(" ")
    ))
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{what} failed: {}", err.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write(root: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), String> {
    let path = root.join(rel);
    let mut dir = path.parent().ok_or("no parent")?.to_path_buf();
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Directories 0755 whatever the umask, up to the staging root.
    while dir.starts_with(root) {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o755));
        if !dir.pop() {
            break;
        }
    }
    fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut child = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run gzip: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no gzip stdin")?;
    let data = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().map_err(|e| format!("gzip: {e}"))?;
    let _ = feeder.join();
    match out.status.success() {
        true => Ok(out.stdout),
        false => Err("gzip failed".into()),
    }
}

/// The files of the package (not DEBIAN/), at their installed paths.
fn stage_files(
    root: &Path,
    s: &Settings,
    t: &Texts,
    d: &Docs,
    bin: &Path,
    man: &[u8],
) -> Result<(), String> {
    let n = &s.name;
    let sbin = root.join(format!("usr/sbin/{n}"));
    fs::create_dir_all(root.join("usr/sbin")).map_err(|e| e.to_string())?;
    run(
        Command::new("strip")
            .args([
                "--strip-unneeded",
                "--remove-section=.comment",
                "--remove-section=.note",
                "-o",
            ])
            .arg(&sbin)
            .arg(bin),
        "strip",
    )?;
    crate::stamp::package_version(&sbin, &s.version())?;
    fs::set_permissions(&sbin, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let units = format!("usr/lib/systemd/system/{n}");
    write(root, &format!("{units}.socket"), t.socket.as_bytes(), 0o644)?;
    write(
        root,
        &format!("{units}.service"),
        t.service.as_bytes(),
        0o644,
    )?;
    if let Some(http) = &t.http_socket {
        write(
            root,
            &format!("{units}-http.socket"),
            http.as_bytes(),
            0o644,
        )?;
    }
    for (path, text) in conffiles(s)
        .iter()
        .zip([&t.default_file, &t.nginx, &t.nginx_upstream])
    {
        write(root, path.trim_start_matches('/'), text.as_bytes(), 0o644)?;
    }
    let doc = format!("usr/share/doc/{n}");
    for (file, text) in [
        ("nginx-site.conf", &t.nginx_site),
        ("nginx-several-hosts.conf", &t.several_hosts),
        ("socket-tcp.conf", &t.socket_tcp),
    ] {
        write(
            root,
            &format!("{doc}/examples/{file}"),
            text.as_bytes(),
            0o644,
        )?;
    }
    write(
        root,
        &format!("{doc}/copyright"),
        d.copyright.as_bytes(),
        0o644,
    )?;
    write(
        root,
        &format!("{doc}/changelog.Debian.gz"),
        &gzip(d.changelog.as_bytes())?,
        0o644,
    )?;
    write(
        root,
        &format!("usr/share/man/man8/{n}.8.gz"),
        &gzip(man)?,
        0o644,
    )?;
    if d.changelog_entries == 1 {
        write(
            root,
            &format!("usr/share/lintian/overrides/{n}"),
            t.lintian_overrides.as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

fn conffiles(s: &Settings) -> [String; 3] {
    let n = &s.name;
    [
        format!("/etc/default/{n}"),
        format!("/etc/nginx/snippets/{n}.conf"),
        format!("/etc/nginx/snippets/{n}-upstream.conf"),
    ]
}

/// `Depends:` of the binary, from dpkg-shlibdeps (which wants a debian/control).
fn shlib_depends(work: &Path, sbin: &Path) -> Result<String, String> {
    write(
        work,
        "debian/control",
        b"Source: app\n\nPackage: app\nArchitecture: any\n",
        0o644,
    )?;
    let out = run(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(format!("-e{}", sbin.display()))
            .current_dir(work),
        "dpkg-shlibdeps",
    )?;
    let deps = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok(deps)
}

/// The `Description:` field: the summary, then the extended text folded
/// into indented lines.
fn description(s: &Settings) -> String {
    let long = s.extended_description.clone().unwrap_or_else(|| {
        format!(
            "{n} runs as a socket-activated systemd service behind a web server speaking FastCGI, such as nginx: {n}.socket listens on /run/{n}/fcgi.sock (root:{g}, mode 0660) and starts the sandboxed {n}.service on the first connection. Settings are in /etc/default/{n}, nginx snippets in /etc/nginx/snippets. Served by myflask.",
            n = s.name, g = s.socket_group
        )
    });
    let mut out = s.summary.clone();
    for para in long.split("\n\n") {
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + word.len() > 72 {
                out.push_str(&format!("\n {line}"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        out.push_str(&format!("\n {line}\n ."));
    }
    out.trim_end_matches("\n .").to_owned()
}

fn installed_kib(root: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(entries) = fs::read_dir(p) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => 1 + walk(&e.path()),
                _ => e.metadata().map(|m| m.len().div_ceil(1024)).unwrap_or(0),
            })
            .sum()
    }
    walk(root)
}

fn control(s: &Settings, arch: &str, depends: &str, kib: u64) -> String {
    let mut c = format!(
        "Package: {}\nVersion: {}\nArchitecture: {arch}\nMaintainer: {}\nInstalled-Size: {kib}\n",
        s.name,
        s.version(),
        s.maintainer
    );
    if !depends.is_empty() {
        c.push_str(&format!("Depends: {depends}\n"));
    }
    c.push_str(&format!(
        "Suggests: {}\nSection: {}\nPriority: {}\n",
        s.suggests, s.section, s.priority
    ));
    if let Some(h) = &s.homepage {
        c.push_str(&format!("Homepage: {h}\n"));
    }
    c.push_str(&format!("Description: {}\n", description(s)));
    c
}

fn files_under(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let r = rel.join(e.file_name());
        match e.file_type() {
            Ok(t) if t.is_dir() => files_under(root, &r, out),
            Ok(t) if t.is_file() => out.push(r),
            _ => {}
        }
    }
}

fn stage_control(
    root: &Path,
    s: &Settings,
    t: &Texts,
    arch: &str,
    depends: &str,
) -> Result<(), String> {
    let mut files = Vec::new();
    files_under(root, Path::new(""), &mut files);
    files.sort();
    let sums = run(
        Command::new("md5sum")
            .arg("--")
            .args(&files)
            .current_dir(root),
        "md5sum",
    )?;
    let kib = installed_kib(root);
    write(
        root,
        "DEBIAN/control",
        control(s, arch, depends, kib).as_bytes(),
        0o644,
    )?;
    write(root, "DEBIAN/md5sums", sums.as_bytes(), 0o644)?;
    write(
        root,
        "DEBIAN/conffiles",
        (conffiles(s).join("\n") + "\n").as_bytes(),
        0o644,
    )?;
    write(root, "DEBIAN/preinst", t.preinst.as_bytes(), 0o755)?;
    write(root, "DEBIAN/postinst", t.postinst.as_bytes(), 0o755)?;
    write(root, "DEBIAN/prerm", t.prerm.as_bytes(), 0o755)?;
    write(root, "DEBIAN/postrm", t.postrm.as_bytes(), 0o755)
}

/// Stages and archives the package; returns the .deb's path.
pub fn build(
    c: &Crate,
    s: &Settings,
    t: &Texts,
    d: &Docs,
    bin: &Path,
    man: &[u8],
) -> Result<PathBuf, String> {
    let arch = run(
        Command::new("dpkg").arg("--print-architecture"),
        "dpkg --print-architecture",
    )?
    .trim()
    .to_owned();
    let out_dir = c.target_dir.join("debian");
    let work = out_dir.join(format!(".{}-work", s.name));
    let _ = fs::remove_dir_all(&work);
    let root = work.join("root");
    let result = (|| {
        stage_files(&root, s, t, d, bin, man)?;
        let depends = shlib_depends(
            &work.join("shlibs"),
            &root.join(format!("usr/sbin/{}", s.name)),
        )?;
        stage_control(&root, s, t, &arch, &depends)?;
        let deb = out_dir.join(format!("{}_{}_{arch}.deb", s.name, s.version()));
        let partial = work.join("partial.deb");
        run(
            Command::new("dpkg-deb")
                .args(["--build", "--root-owner-group", "-Zxz"])
                .arg(&root)
                .arg(&partial),
            "dpkg-deb --build",
        )?;
        fs::rename(&partial, &deb).map_err(|e| format!("{}: {e}", deb.display()))?;
        Ok(deb)
    })();
    let _ = fs::remove_dir_all(&work);
    result
}

//! The package's text files, rendered from the templates in the
//! repository's systemd/ and packaging/debian/ (embedded at compile time,
//! so the installed tool needs no source tree): units, conffile, nginx
//! snippets and site, maintainer scripts, lintian overrides.

use crate::settings::Settings;
use crate::template::{Vars, render};

const SOCKET: &str = include_str!("../../systemd/app.socket");
const SERVICE: &str = include_str!("../../systemd/app.service");
const HTTP_SOCKET: &str = include_str!("../../systemd/app-http.socket");
const DEFAULT: &str = include_str!("../../packaging/debian/app.default");
const NGINX: &str = include_str!("../../packaging/debian/nginx/app.conf");
const NGINX_UPSTREAM: &str = include_str!("../../packaging/debian/nginx/app-upstream.conf");
const NGINX_SITE: &str = include_str!("../../packaging/debian/nginx/site-example.conf");
const SEVERAL_HOSTS: &str = include_str!("../../packaging/debian/examples/app-several-hosts.conf");
const SOCKET_TCP: &str = include_str!("../../packaging/debian/examples/app-socket-tcp.conf");
const PREINST: &str = include_str!("../../packaging/debian/maintainer-scripts/preinst");
const POSTINST: &str = include_str!("../../packaging/debian/maintainer-scripts/postinst");
const PRERM: &str = include_str!("../../packaging/debian/maintainer-scripts/prerm");
const POSTRM: &str = include_str!("../../packaging/debian/maintainer-scripts/postrm");
const LINTIAN: &str = include_str!("../../packaging/debian/lintian-overrides");

/// The rendered files, by role.
pub struct Texts {
    pub socket: String,
    pub service: String,
    pub http_socket: Option<String>,
    pub default_file: String,
    pub nginx: String,
    pub nginx_upstream: String,
    pub nginx_site: String,
    /// Example nginx site for several backend hosts (doc example).
    pub several_hosts: String,
    /// Example socket drop-in for a TCP listener with an allow-list (doc example).
    pub socket_tcp: String,
    pub preinst: String,
    pub postinst: String,
    pub prerm: String,
    pub postrm: String,
    pub lintian_overrides: String,
}

/// Sandbox settings the metadata relaxes, appended at the end of [Service]:
/// a later assignment overrides a boolean and an empty one resets a list,
/// exactly as a drop-in would.
fn relaxations(s: &Settings) -> String {
    let mut out = String::new();
    if s.network {
        out.push_str(
            "\n# Relaxed by [package.metadata.myflask] network = true: the application\n\
             # makes outgoing TCP connections, so it keeps the host's network\n\
             # (PrivateNetwork=no), may open IPv4/IPv6 sockets and reach any address\n\
             # (the empty IPAddressDeny= clears `any`).\n\
             PrivateNetwork=no\n\
             RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\n\
             IPAddressDeny=\n",
        );
    }
    if s.state_directory {
        out.push_str(&format!(
            "\n# Relaxed by [package.metadata.myflask] state-directory = true: a persistent\n\
             # writable /var/lib/{n} (owned by the dynamic user; the rest of the file\n\
             # system stays read-only).\n\
             StateDirectory={n}\n",
            n = s.name
        ));
    }
    out.trim_end_matches('\n').to_owned()
}

fn vars(s: &Settings) -> Vars {
    let mut v = Vars::default();
    let n = &s.name;
    v.set("name", n.clone());
    v.set("socket_group", s.socket_group.clone());
    v.set(
        "watchdog_sec",
        match s.watchdog_sec {
            0 => "0".to_owned(),
            w => format!("{w}s"),
        },
    );
    v.set("shutdown_timeout", s.shutdown_timeout.to_string());
    v.set("timeout_stop_sec", (s.shutdown_timeout + 15).to_string());
    v.set(
        "shutdown_timeout_line",
        match s.shutdown_timeout {
            30 => "#MYFLASK_SHUTDOWN_TIMEOUT=30".to_owned(),
            t => format!("MYFLASK_SHUTDOWN_TIMEOUT={t}"),
        },
    );
    v.set("mount_prefix", s.mount_prefix.clone().unwrap_or_default());
    v.set(
        "mount_prefix_line",
        match &s.mount_prefix {
            Some(p) => format!("MYFLASK_MOUNT_PREFIX={p}"),
            None => "#MYFLASK_MOUNT_PREFIX=".to_owned(),
        },
    );
    let relaxed = relaxations(s);
    v.set("relaxed_note", match relaxed.is_empty() {
        true => String::new(),
        false => "# This package relaxes the sandbox below for its application: see the end\n# of [Service].".to_owned(),
    });
    v.set("relaxations", relaxed);
    let sockets = match s.http_socket {
        true => format!("'{n}-http.socket' '{n}.socket'"),
        false => format!("'{n}.socket'"),
    };
    v.set(
        "units",
        match s.http_socket {
            true => format!("'{n}.socket' '{n}-http.socket' '{n}.service'"),
            false => format!("'{n}.socket' '{n}.service'"),
        },
    );
    v.set("sockets", sockets);
    // What a reload cannot apply to the running process: an upgrade that
    // changes one of these restarts the service instead (maintainer scripts).
    let http_unit = match s.http_socket {
        true => format!(" /usr/lib/systemd/system/{n}-http.socket"),
        false => String::new(),
    };
    v.set(
        "reload_files",
        format!(
            "/usr/lib/systemd/system/{n}.socket{http_unit} /usr/lib/systemd/system/{n}.service /etc/default/{n}"
        ),
    );
    v.flag("http", s.http_socket);
    v.flag("prefix", s.mount_prefix.is_some());
    v.flag("state", s.state_directory);
    v
}

pub fn render_all(s: &Settings) -> Result<Texts, String> {
    let v = vars(s);
    Ok(Texts {
        socket: render("systemd/app.socket", SOCKET, &v)?,
        service: render("systemd/app.service", SERVICE, &v)?,
        http_socket: match s.http_socket {
            true => Some(render("systemd/app-http.socket", HTTP_SOCKET, &v)?),
            false => None,
        },
        default_file: render("packaging/debian/app.default", DEFAULT, &v)?,
        nginx: render("nginx/app.conf", NGINX, &v)?,
        nginx_upstream: render("nginx/app-upstream.conf", NGINX_UPSTREAM, &v)?,
        nginx_site: render("nginx/site-example.conf", NGINX_SITE, &v)?,
        several_hosts: render("examples/app-several-hosts.conf", SEVERAL_HOSTS, &v)?,
        socket_tcp: render("examples/app-socket-tcp.conf", SOCKET_TCP, &v)?,
        preinst: render("preinst", PREINST, &v)?,
        postinst: render("postinst", POSTINST, &v)?,
        prerm: render("prerm", PRERM, &v)?,
        postrm: render("postrm", POSTRM, &v)?,
        lintian_overrides: render("lintian-overrides", LINTIAN, &v)?,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn settings(name: &str) -> Settings {
        Settings {
            name: name.into(),
            bin: name.into(),
            upstream_version: "1.0.0".into(),
            revision: "1".into(),
            revision_overridden: false,
            summary: "Test app".into(),
            extended_description: None,
            maintainer: "T <t@example.org>".into(),
            section: "web".into(),
            priority: "optional".into(),
            suggests: "nginx".into(),
            homepage: None,
            socket_group: "www-data".into(),
            http_socket: false,
            network: false,
            state_directory: false,
            watchdog_sec: 10,
            shutdown_timeout: 30,
            mount_prefix: None,
            changelog: None,
            copyright: None,
        }
    }

    #[test]
    fn every_template_renders_with_every_option() {
        let mut s = settings("hello-app");
        render_all(&s).unwrap();
        (s.http_socket, s.network, s.state_directory) = (true, true, true);
        s.mount_prefix = Some("/hello".into());
        let t = render_all(&s).unwrap();
        for text in [
            &t.socket,
            &t.service,
            &t.default_file,
            &t.nginx,
            &t.nginx_site,
            &t.several_hosts,
            &t.socket_tcp,
            &t.preinst,
            &t.postinst,
            &t.postrm,
        ] {
            assert!(!text.contains("{{"), "{text}");
            assert!(
                !text.contains("myflask.socket") && !text.contains("/run/myflask"),
                "{text}"
            );
        }
    }

    #[test]
    fn service_relaxes_only_what_is_asked() {
        let mut s = settings("hello-app");
        let strict = render_all(&s).unwrap().service;
        assert!(strict.contains("PrivateNetwork=yes\n") && !strict.contains("\nPrivateNetwork=no"));
        assert!(!strict.contains("Relaxed by"));
        s.network = true;
        let net = render_all(&s).unwrap().service;
        let tail = &net[net.find("UMask=0077").unwrap()..net.find("[Install]").unwrap()];
        assert!(tail.contains("PrivateNetwork=no\nRestrictAddressFamilies=AF_UNIX AF_INET AF_INET6\nIPAddressDeny=\n"), "{tail}");
        assert!(!tail.contains("StateDirectory"));
        assert!(net.contains("ExecStart=/usr/sbin/hello-app serve\n"));
        assert!(net.contains("Environment=MYFLASK_APP_NAME=hello-app\n"));
        assert!(net.contains("SyslogIdentifier=hello-app\n"));
    }

    #[test]
    fn http_socket_and_prefix_follow_the_settings() {
        let mut s = settings("hello-app");
        let t = render_all(&s).unwrap();
        assert!(t.http_socket.is_none());
        assert!(!t.postinst.contains("-http.socket"));
        assert!(
            t.postrm
                .contains("deb-systemd-helper purge 'hello-app.socket' 'hello-app.service'")
        );
        assert!(
            t.nginx_site
                .contains("    location / {\n        include snippets/hello-app.conf;")
        );
        assert!(t.default_file.contains("\n#MYFLASK_MOUNT_PREFIX=\n"));
        s.mount_prefix = Some("/hello".into());
        s.http_socket = true;
        let t = render_all(&s).unwrap();
        assert!(t.postinst.contains("unmask 'hello-app-http.socket'"));
        assert!(
            t.prerm
                .contains("stop 'hello-app-http.socket' 'hello-app.socket'")
        );
        assert!(
            t.nginx_site
                .contains("    location /hello/ {\n        include snippets/hello-app.conf;")
        );
        assert!(!t.nginx_site.contains("location / {"));
        assert!(t.default_file.contains("\nMYFLASK_MOUNT_PREFIX=/hello\n"));
        assert!(!t.postrm.contains("/var/lib/"));
        s.state_directory = true;
        let t = render_all(&s).unwrap();
        assert!(
            t.postrm
                .contains("rm -rf '/var/lib/private/hello-app' '/var/lib/hello-app'")
        );
    }
}

//! Which TCP peers may talk to us: `--allowed-clients` (php-fpm's
//! `listen.allowed_clients`), its parsing, the check at accept, the
//! rate-limited log of refusals, and the start-up rules for TCP listeners
//! that have no list.
//!
//! FastCGI has no authentication: whoever reaches a FastCGI port runs
//! requests as the application, with any `REMOTE_ADDR` or `HTTPS` it likes.
//! So a TCP listener is either guarded by a list, or opted out with `any`,
//! or on loopback. Unix sockets are guarded by their file mode and are not
//! affected.
//!
//! The list is checked once per accepted connection, before anything is
//! read. No list (or `any`) means no check at all: the accept loop stays
//! the one it was (see `Server::serve`).

use crate::addr::ListenAddr;
use crate::systemd::listen::{Listener, Socket};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One address range of an [`AllowList`]: the network bits and the
/// prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    V4(u32, u8),
    V6(u128, u8),
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Net::V4(net, len), IpAddr::V4(a)) => u32::from(a) & mask32(len) == net,
            (Net::V6(net, len), IpAddr::V6(a)) => u128::from(a) & mask128(len) == net,
            _ => false,
        }
    }
}

fn mask32(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask128(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for Net {
    type Err = String;

    /// `10.0.0.2`, `10.0.0.0/24`, `fd00::/8`, `[::1]`; host bits under the
    /// mask are ignored, as systemd's `IPAddressAllow=` does.
    fn from_str(s: &str) -> Result<Net, String> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        // A v4-mapped v6 entry means the v4 address: peers are compared in
        // canonical form (see `AllowList::admits`).
        let (ip, shift) = match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => (ip.to_canonical(), 96),
            _ => (ip, 0),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .and_then(|l| l.checked_sub(shift))
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {}", max + shift))?,
        };
        Ok(match ip {
            IpAddr::V4(a) => Net::V4(u32::from(a) & mask32(len), len),
            IpAddr::V6(a) => Net::V6(u128::from(a) & mask128(len), len),
        })
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Net::V4(n, l) => write!(f, "{}/{l}", Ipv4Addr::from(n)),
            Net::V6(n, l) => write!(f, "{}/{l}", Ipv6Addr::from(n)),
        }
    }
}

/// The value of `--allowed-clients`: `any`, or addresses and CIDR ranges
/// separated by commas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowList {
    /// Every peer, on purpose.
    Any,
    /// Only peers in one of these ranges.
    Only(Arc<[Net]>),
}

impl FromStr for AllowList {
    type Err = String;

    fn from_str(s: &str) -> Result<AllowList, String> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        if items.is_empty() {
            return Err("the list is empty: give addresses or CIDR ranges, or `any`".into());
        }
        if items.iter().any(|i| i.eq_ignore_ascii_case("any")) {
            if items.len() > 1 {
                return Err(
                    "`any` allows every client and cannot be combined with addresses".into(),
                );
            }
            return Ok(AllowList::Any);
        }
        let nets = items
            .iter()
            .map(|i| i.parse())
            .collect::<Result<Vec<Net>, _>>()?;
        Ok(AllowList::Only(nets.into()))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowList::Any => f.write_str("any"),
            AllowList::Only(nets) => {
                for (i, n) in nets.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{n}")?;
                }
                Ok(())
            }
        }
    }
}

impl AllowList {
    /// Whether `ip` may connect. A v4 peer on a dual-stack v6 socket
    /// arrives as `::ffff:a.b.c.d` and is matched as `a.b.c.d`.
    pub fn admits(&self, ip: IpAddr) -> bool {
        match self {
            AllowList::Any => true,
            AllowList::Only(nets) => {
                let ip = ip.to_canonical();
                nets.iter().any(|n| n.contains(ip))
            }
        }
    }

    /// The check for one listener, or `None` when every peer is allowed
    /// (then the listener runs without any check).
    pub fn gate(list: Option<&AllowList>, listener: &str) -> Option<Gate> {
        match list {
            Some(l @ AllowList::Only(_)) => Some(Gate {
                list: l.clone(),
                listener: Arc::from(listener),
                log: Arc::new(Mutex::new(RefusalLog::default())),
            }),
            _ => None,
        }
    }
}

/// Refusals logged one by one per listener and per [`LOG_WINDOW`]; the rest
/// are counted and reported in one line when the next window opens.
pub const LOG_BURST: u32 = 10;
pub const LOG_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct RefusalLog {
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RefusalLog {
    /// Counts a refusal at `now`; returns how many earlier ones went
    /// unlogged (to report first) and whether this one is to be logged.
    fn note(&mut self, now: Instant) -> (u64, bool) {
        let fresh = self
            .window_start
            .is_none_or(|t| now.duration_since(t) >= LOG_WINDOW);
        let mut unreported = 0;
        if fresh {
            unreported = std::mem::take(&mut self.suppressed);
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < LOG_BURST {
            self.logged += 1;
            (unreported, true)
        } else {
            self.suppressed += 1;
            (unreported, false)
        }
    }
}

/// The allow-list of one TCP listener, with its refusal log.
#[derive(Debug, Clone)]
pub struct Gate {
    list: AllowList,
    listener: Arc<str>,
    log: Arc<Mutex<RefusalLog>>,
}

impl Gate {
    /// Whether to serve a connection from `peer`; a refusal is logged
    /// (rate-limited) with the peer and the listener.
    pub fn admit(&self, peer: SocketAddr) -> bool {
        if self.list.admits(peer.ip()) {
            return true;
        }
        let (unreported, log_this) = match self.log.lock() {
            Ok(mut l) => l.note(Instant::now()),
            Err(poisoned) => poisoned.into_inner().note(Instant::now()),
        };
        let listener = &*self.listener;
        if unreported > 0 {
            tracing::warn!(
                listener,
                refused = unreported,
                "{unreported} more connections on {listener} from clients outside --allowed-clients were closed in the last {}s without a line each",
                LOG_WINDOW.as_secs()
            );
        }
        if log_this {
            tracing::warn!(
                listener,
                peer = %peer,
                "closed a connection from {peer} on {listener}: not in --allowed-clients ({})",
                self.list
            );
        }
        false
    }
}

/// Whether `ip` only reaches this machine (127.0.0.0/8, ::1, v4-mapped
/// loopback).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Before binding: `--listen`/`--http` on a TCP address other than
/// loopback needs `--allowed-clients` (a list, or `any` on purpose).
pub fn check_bind(addrs: &[&ListenAddr], list: Option<&AllowList>) -> anyhow::Result<()> {
    if list.is_some() {
        return Ok(());
    }
    for a in addrs {
        if let ListenAddr::Tcp(sa) = a {
            if !is_loopback(sa.ip()) {
                anyhow::bail!(
                    "refusing to listen on {sa} without --allowed-clients (MYFLASK_ALLOWED_CLIENTS): FastCGI has no authentication, so name the web servers that may connect (e.g. --allowed-clients 10.0.0.1,10.0.1.0/24) or pass `any` on purpose"
                );
            }
        }
    }
    Ok(())
}

/// After taking the inherited sockets: one warning per non-loopback TCP
/// socket that no list guards (systemd's `IPAddressAllow=` on the socket
/// unit may guard it; we cannot see that from here).
pub fn warn_unguarded(listeners: &[Listener], list: Option<&AllowList>) {
    if list.is_some() {
        return;
    }
    for l in listeners.iter().filter(|l| l.inherited.is_some()) {
        let Socket::Tcp(s) = &l.socket else { continue };
        match s.local_addr() {
            Ok(a) if is_loopback(a.ip()) => {}
            _ => tracing::warn!(
                listener = %l.address,
                "inherited TCP socket {} accepts FastCGI from any client: set IPAddressAllow= (with IPAddressDeny=any) on the socket unit, or --allowed-clients (MYFLASK_ALLOWED_CLIENTS)",
                l.address
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(s: &str) -> AllowList {
        s.parse().unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn parses_and_prints() {
        let table: &[(&str, &str)] = &[
            ("10.0.0.2", "10.0.0.2/32"),
            ("10.0.0.0/24", "10.0.0.0/24"),
            ("10.0.0.77/24", "10.0.0.0/24"),
            (" 10.0.0.1 , 192.168.0.0/16 ", "10.0.0.1/32,192.168.0.0/16"),
            ("::1", "::1/128"),
            ("[::1]", "::1/128"),
            ("fd00::/8", "fd00::/8"),
            ("::ffff:10.0.0.9", "10.0.0.9/32"),
            ("::ffff:10.0.0.0/120", "10.0.0.0/24"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("any", "any"),
            ("ANY", "any"),
        ];
        for (input, shown) in table {
            assert_eq!(list(input).to_string(), *shown, "input {input:?}");
        }
    }

    #[test]
    fn rejects_bad_lists() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            (" , ", "empty"),
            ("10.0.0.1,any", "cannot be combined"),
            ("10.0.0.256", "not an IP address"),
            ("example.org", "not an IP address"),
            ("10.0.0.0/33", "0 to 32"),
            ("10.0.0.0/x", "0 to 32"),
            ("fd00::/129", "0 to 128"),
            ("::ffff:10.0.0.0/95", "0 to 128"),
            ("10.0.0.1:9000", "not an IP address"),
        ];
        for (input, why) in table {
            let e = input.parse::<AllowList>().expect_err(input);
            assert!(e.contains(why), "{input:?}: {e:?} should say {why:?}");
        }
    }

    #[test]
    fn matches_peers() {
        let l = list("10.0.0.1,10.0.1.0/24,fd00:1::/32");
        let table: &[(&str, bool)] = &[
            ("10.0.0.1", true),
            ("10.0.0.2", false),
            ("10.0.1.0", true),
            ("10.0.1.255", true),
            ("10.0.2.1", false),
            ("::ffff:10.0.0.1", true),
            ("::ffff:10.0.0.2", false),
            ("fd00:1:ffff::5", true),
            ("fd00:2::5", false),
            ("127.0.0.1", false),
            ("::1", false),
        ];
        for (peer, want) in table {
            let ip: IpAddr = peer.parse().unwrap();
            assert_eq!(l.admits(ip), *want, "peer {peer}");
        }
        assert!(list("0.0.0.0/0").admits("203.0.113.9".parse().unwrap()));
        assert!(!list("0.0.0.0/0").admits("2001:db8::1".parse().unwrap()));
        assert!(list("any").admits("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn no_gate_without_a_real_list() {
        assert!(AllowList::gate(None, "x").is_none());
        assert!(AllowList::gate(Some(&list("any")), "x").is_none());
        let g = AllowList::gate(Some(&list("10.0.0.1")), "x").unwrap();
        assert!(g.admit("10.0.0.1:4000".parse().unwrap()));
        assert!(!g.admit("10.0.0.2:4000".parse().unwrap()));
    }

    #[test]
    fn refusal_log_is_rate_limited() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        let mut lines = 0;
        for i in 0..1000u32 {
            let (unreported, log_this) = log.note(t0 + Duration::from_millis(u64::from(i)));
            assert_eq!(unreported, 0);
            lines += u32::from(log_this);
        }
        assert_eq!(lines, LOG_BURST);
        // The next window reports what was not logged, then logs again.
        assert_eq!(
            log.note(t0 + LOG_WINDOW + Duration::from_secs(1)),
            (u64::from(1000 - LOG_BURST), true)
        );
        assert_eq!(
            log.note(t0 + LOG_WINDOW + Duration::from_secs(2)),
            (0, true)
        );
    }

    #[test]
    fn bind_rules() {
        let lo: ListenAddr = "127.0.0.1:9000".parse().unwrap();
        let lo6: ListenAddr = "[::1]:9000".parse().unwrap();
        let mapped: ListenAddr = "[::ffff:127.0.0.1]:9000".parse().unwrap();
        let all: ListenAddr = "0.0.0.0:9000".parse().unwrap();
        let lan: ListenAddr = "10.0.0.2:9000".parse().unwrap();
        let unix: ListenAddr = "unix:/run/x.sock".parse().unwrap();
        assert!(check_bind(&[&lo, &lo6, &mapped, &unix], None).is_ok());
        for a in [&all, &lan] {
            let e = check_bind(&[&lo, a], None).unwrap_err().to_string();
            assert!(e.contains("--allowed-clients"), "{e}");
            assert!(check_bind(&[a], Some(&list("any"))).is_ok());
            assert!(check_bind(&[a], Some(&list("10.0.0.1"))).is_ok());
        }
    }
}

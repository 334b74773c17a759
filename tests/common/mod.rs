//! Shared helpers for the integration tests, one concern a file:
//!
//! - `server`: `myflask serve` on a temporary socket, `myflask <args>` run
//!   to completion;
//! - `process`: other children (nginx, systemd tools) and adopted ones (a
//!   reload's successor), a clean environment, bounded waits, programs fed
//!   on stdin, finding programs;
//! - `sockets`: socket directories, free ports, RLIMIT_NOFILE;
//! - `client`: whole requests through the project's FastCGI client, raw
//!   HTTP over a unix socket and one-shot HTTP/1.0 over TCP, and the
//!   runtime for them;
//! - `nginx`: a real nginx with the test's `http { }`, in a namespace or not;
//! - `netns`: private networks of network namespaces (root only);
//! - `app`: reading back the built-in app's answers;
//! - `measure`: process memory, deterministic bodies, hashes;
//! - [`raw`]: a record-level FastCGI client that checks the protocol.
//!
//! Every helper is reachable as `common::name` (and the record-level ones
//! as `common::raw::name`), whichever file holds it.
//!
//! Each test file compiles this whole module (`mod common;`) and uses a part
//! of it, so a helper one file leaves unused is dead code in that crate:
//! hence the allow, which a separate helper crate would avoid at the cost of
//! a workspace member and a path dev-dependency. The re-exports below are
//! unused in most crates for the same reason and carry their own allow.
#![allow(dead_code)]

mod app;
mod client;
mod measure;
mod netns;
mod nginx;
mod process;
pub mod raw;
mod server;
mod sockets;

#[allow(unused_imports)]
pub use app::{in_flight, json_pairs, wait_none_in_flight, wait_phase};
#[allow(unused_imports)]
pub use client::{
    current_thread_runtime, fcgi_get, fcgi_request, http_once, http_over_unix, read_all,
};
#[allow(unused_imports)]
pub use measure::{FNV_BASIS, assert_same, fnv, fnv_continue, noise, proc_kib, rss_kib};
#[allow(unused_imports)]
pub use netns::{Lan, can_build_lans, enter, in_netns};
#[allow(unused_imports)]
pub use nginx::Nginx;
#[allow(unused_imports)]
pub use process::{
    Adopted, Proc, become_subreaper, clean_cmd, eventually, pipe_through, require_tool, wait_child,
};
#[allow(unused_imports)]
pub use server::{BIN, Server, run, serve_cmd};
#[allow(unused_imports)]
pub use sockets::{free_tcp_port, raise_nofile, require_nofile, target_tmpdir, under_tmp};

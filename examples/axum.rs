//! An axum application served over FastCGI by myflask.
//!
//! ```sh
//! cargo run --example axum -- unix:/tmp/axum.sock
//! myflask request unix:/tmp/axum.sock /hello/world
//! ```
//!
//! Under systemd (a `.socket` unit passing the socket) the inherited socket
//! is served and the address argument is ignored.

use axum::{Router, extract::Path, routing::get};
use myflask::systemd::{journal, listen};
use myflask::{App, Server, ServerConfig};

fn main() -> anyhow::Result<()> {
    journal::init(journal::LogTarget::Auto, None);
    // Take the sockets before any thread exists (the runtime comes after).
    let mut listeners = listen::inherited()?;
    if listeners.is_empty() {
        let addr = std::env::args()
            .nth(1)
            .unwrap_or_else(|| "unix:/run/myflask/fcgi.sock".into());
        let addr = addr.parse().map_err(anyhow::Error::msg)?;
        listeners.push(listen::bind(
            &addr,
            myflask::Transport::FastCgi,
            &Default::default(),
        )?);
    }

    let app = Router::new()
        .route("/", get(|| async { "Hello from axum over FastCGI\n" }))
        .route(
            "/hello/{name}",
            get(|Path(name): Path<String>| async move { format!("Hello, {name}!\n") }),
        );

    let server = Server::new(ServerConfig::default(), listeners);
    tokio::runtime::Runtime::new()?.block_on(server.serve(App::from_tower(app)))
}

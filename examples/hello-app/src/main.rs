//! hello-app: the example of an application shipped with `cargo myflask
//! deb`. An axum router handed to `myflask::cli::main_with`, which gives the
//! binary the whole myflask command line (`serve` with systemd's sockets,
//! notify and journald, `request`, `manpage`).
//!
//! Routes, as the app sees them (behind nginx at /hello/ the server strips
//! the mount prefix first, so `GET /hello/where` reaches `/where`):
//! - `GET /`              a greeting
//! - `GET /hello/{name}`  a greeting for `name`
//! - `POST /words`        reads the request body (UTF-8 text) and counts its words
//! - `GET /where`         the path the app routed on and the REQUEST_URI nginx sent
//! - `GET /healthz`       `ok`

use axum::Router;
use axum::extract::{Extension, Path};
use axum::http::StatusCode;
use axum::routing::{get, post};
use myflask::{App, RequestInfo};
use std::process::ExitCode;

fn router() -> Router {
    Router::new()
        .route("/", get(|| async { "Hello from hello-app\n" }))
        .route(
            "/hello/{name}",
            get(|Path(name): Path<String>| async move { format!("Hello, {name}!\n") }),
        )
        .route("/words", post(words))
        .route("/where", get(where_am_i))
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Reads the whole body; axum answers 400 for a body that is not UTF-8.
async fn words(body: String) -> String {
    format!(
        "{} words, {} bytes\n",
        body.split_whitespace().count(),
        body.len()
    )
}

async fn where_am_i(
    uri: axum::http::Uri,
    info: Option<Extension<RequestInfo>>,
) -> (StatusCode, String) {
    let sent = info
        .as_ref()
        .and_then(|Extension(i)| i.params.as_ref())
        .and_then(|p| p.get_str("REQUEST_URI"))
        .unwrap_or("-")
        .to_owned();
    (
        StatusCode::OK,
        format!("routed on {}, REQUEST_URI {sent}\n", uri.path()),
    )
}

fn main() -> ExitCode {
    myflask::cli::main_with(|_stats| App::from_tower(router()))
}

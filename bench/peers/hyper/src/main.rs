//! Bench peer: a plain hyper 1.x HTTP/1.1 server on a unix socket, put
//! behind nginx `proxy_pass` with upstream keepalive. `GET /` -> "Hello,
//! World!\n", `POST /echo` -> the body (read whole, then sent back).
//! Usage: bench-hyper UNIX_SOCKET_PATH
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tokio::net::UnixListener;

type B = BoxBody<Bytes, hyper::Error>;

async fn handle(req: Request<Incoming>) -> Result<Response<B>, Infallible> {
    if req.method() == Method::POST && req.uri().path() == "/echo" {
        // Read the whole body, then answer: nginx stops sending the request
        // body once the response head arrives, so a streaming echo stalls
        // behind proxy_pass (every peer's echo collects first).
        let body = match req.into_body().collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let mut resp = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(resp);
    }
    let body = Full::new(Bytes::from_static(b"Hello, World!\n"))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    Ok(resp)
}

#[tokio::main]
async fn main() {
    let path = std::env::args().nth(1).expect("usage: bench-hyper SOCKET");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}

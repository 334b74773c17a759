//! The benchmark's app served by myflask: the same routes every peer
//! serves (`GET /` -> "Hello, World!\n", `POST /echo` -> the body), written
//! as a user would — a hyper service handed to `myflask::cli::main_with`,
//! which brings the whole `myflask serve` command line. `/echo` and the
//! rest come from the built-in app.

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::Full;
use myflask::{App, Body};
use std::convert::Infallible;
use std::process::ExitCode;

fn main() -> ExitCode {
    myflask::cli::main_with(|stats| {
        let builtin = myflask::app::Builtin::new(stats);
        App::from_hyper(hyper::service::service_fn(move |req: Request<Body>| {
            // Like the other peers' hello routes, `GET /` touches no shared
            // state (cloning `builtin` is a reference count every request
            // would bump from both cores).
            let hello = req.uri().path() == "/" && req.method() == Method::GET;
            let builtin = (!hello).then(|| builtin.clone());
            async move {
                let Some(builtin) = builtin else {
                    let mut r = Response::new(myflask::service::box_body(Full::new(
                        Bytes::from_static(b"Hello, World!\n"),
                    )));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain"),
                    );
                    return Ok::<_, Infallible>(r);
                };
                Ok(builtin.handle(req).await)
            }
        }))
    })
}

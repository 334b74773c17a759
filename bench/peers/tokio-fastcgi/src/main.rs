//! Bench peer: tokio-fastcgi 1.3 used as its docs show (one task per
//! connection, requests handled sequentially with `Requests::next` +
//! `Request::process`). `GET /` -> "Hello, World!\n", `POST /echo` -> body.
//! Usage: bench-tokio-fastcgi UNIX_SOCKET_PATH
use std::io::Read;
use tokio::net::UnixListener;
use tokio_fastcgi::{RequestResult, Requests};

#[tokio::main]
async fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: bench-tokio-fastcgi SOCKET");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).expect("bind");
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let mut requests = Requests::from_split_socket(stream.split(), 10, 10);
            while let Ok(Some(request)) = requests.next().await {
                let r = request
                    .process(|req| async move {
                        let uri = req.get_str_param("REQUEST_URI").unwrap_or("/");
                        let method = req.get_str_param("REQUEST_METHOD").unwrap_or("GET");
                        let mut out: Vec<u8>;
                        if method == "POST" && uri == "/echo" {
                            let mut body = Vec::new();
                            let _ = req.get_stdin().read_to_end(&mut body);
                            out = format!(
                                "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            out.extend_from_slice(&body);
                        } else {
                            out = b"Content-Type: text/plain\r\nContent-Length: 14\r\n\r\nHello, World!\n"
                                .to_vec();
                        }
                        let mut stdout = req.get_stdout();
                        if stdout.write(&out).await.is_err() {
                            return RequestResult::Complete(1);
                        }
                        RequestResult::Complete(0)
                    })
                    .await;
                if r.is_err() {
                    break;
                }
            }
        });
    }
}

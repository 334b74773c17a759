//! What came back for one request id, and its CGI response parsed and
//! checked (END_REQUEST complete, STDOUT closed, no `Transfer-Encoding`).

use myflask::fastcgi::client::parse_cgi;
use myflask::fastcgi::record::{self, EndRequest};

/// What came back for one request id.
#[derive(Debug, Default, Clone)]
pub struct Reply {
    pub stdout: Vec<u8>,
    /// Content length of every non-empty STDOUT record, in order.
    pub stdout_records: Vec<usize>,
    /// The empty STDOUT record arrived.
    pub stdout_closed: bool,
    pub stderr: Vec<u8>,
    pub end: Option<EndRequest>,
}

/// A parsed CGI response.
#[derive(Debug, Clone)]
pub struct Http {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Http {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

impl Reply {
    /// The END_REQUEST body (panics if none arrived).
    pub fn end(&self) -> EndRequest {
        self.end.expect("no END_REQUEST")
    }

    /// Parses and checks the CGI response: END_REQUEST with
    /// REQUEST_COMPLETE, STDOUT closed by its empty record, a head that
    /// parses, and no `Transfer-Encoding` header.
    pub fn http(&self) -> Http {
        let end = self.end();
        assert_eq!(
            end.protocol_status,
            record::REQUEST_COMPLETE,
            "protocol status of END_REQUEST"
        );
        assert!(
            self.stdout_closed,
            "STDOUT was not closed by an empty record before END_REQUEST"
        );
        let (status, headers, body) = parse_cgi(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "bad CGI response ({e}): {:?}",
                String::from_utf8_lossy(&self.stdout[..self.stdout.len().min(500)])
            )
        });
        for (k, v) in &headers {
            assert!(
                !k.eq_ignore_ascii_case("transfer-encoding"),
                "a CGI response carries `{k}: {v}` (nginx does not de-chunk)"
            );
        }
        Http {
            status,
            headers,
            body,
        }
    }
}

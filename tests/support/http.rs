//! A minimal blocking HTTP/1.1 client for the HTTP listener's tests: one
//! request per connection (`Connection: close`), the whole answer read.

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// The head, lower-cased.
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", self.status, self.body))
    }

    /// The `error.code` of an error answer.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {}", self.body))
            .to_string()
    }
}

/// Sends `raw` (a whole request) and reads the answer until the server
/// closes (within `within`).
pub fn raw(addr: SocketAddr, raw: &[u8], within: Duration) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect to the HTTP listener");
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(raw).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).expect("read the answer to EOF");
    parse(&got)
}

/// Parses a whole answer (head and a body of content-length bytes).
pub fn parse(got: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(got).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// `method path` with `headers` and an optional body, `Connection: close`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    if let Some(b) = body {
        r.push_str(b);
    }
    raw(addr, r.as_bytes(), Duration::from_secs(10))
}

/// A client holding the API key (or none).
#[derive(Debug, Clone)]
pub struct Api {
    pub addr: SocketAddr,
    pub key: Option<String>,
}

impl Api {
    fn auth(&self) -> Option<String> {
        self.key.as_ref().map(|k| format!("Bearer {k}"))
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> Answer {
        let auth = self.auth();
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(self.addr, "GET", path, &h, None)
    }

    /// GET `path`, expecting 200 JSON.
    pub fn get_ok(&self, path: &str) -> Value {
        let a = self.get(path);
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
        a.json()
    }

    /// POST `body` to `path`.
    pub fn post(&self, path: &str, body: &Value) -> Answer {
        let auth = self.auth();
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(self.addr, "POST", path, &h, Some(&body.to_string()))
    }

    /// POST, expecting 200 JSON.
    pub fn post_ok(&self, path: &str, body: &Value) -> Value {
        let a = self.post(path, body);
        assert_eq!(a.status, 200, "POST {path} {body}: {}", a.body);
        a.json()
    }
}

/// Raises this process's descriptor limit to its hard limit (tests that
/// hold a thousand sockets, with the server in the same process); returns
/// the limit now.
pub fn raise_nofile() -> u64 {
    ringcast::io::sys::raise_nofile_limit()
        .expect("raise RLIMIT_NOFILE")
        .1
}

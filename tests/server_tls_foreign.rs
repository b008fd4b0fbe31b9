//! TLS clients we did not write, against a real server on 127.0.0.1 (on
//! the backend RINGCAST_IO_BACKEND names): Python's `ssl` module and
//! `openssl s_client`, both OpenSSL, each doing a verified handshake, a
//! ping and an echo. Certificates are made at test time.

mod support;

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::server::spawn;
use support::tls::{tls_addr, Pki};

/// Python: a verified handshake (the test CA, server name localhost), a
/// ping, an echo, and a clean close_notify; prints the version and answers.
const PYTHON: &str = r#"
import json, socket, ssl, struct, sys
port, ca, min13 = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1.3"
ctx = ssl.create_default_context(cafile=ca)
if min13:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
else:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
f = s.makefile("rb")
def rt(o):
    b = json.dumps(o).encode()
    s.sendall(struct.pack(">I", len(b)) + b)
    (n,) = struct.unpack(">I", f.read(4))
    return json.loads(f.read(n))
pong = rt({"type": "ping"})
echo = rt({"type": "echo", "content": "from python"})
print(json.dumps({"version": s.version(), "pong": pong["type"], "echo": echo["content"]}))
s.unwrap()
s.close()
"#;

fn python_client(pki: &Pki, port: u16, version: &str) -> Value {
    let out = Command::new("python3")
        .args(["-c", PYTHON, &port.to_string()])
        .arg(&pki.ca)
        .arg(version)
        .output()
        .expect("python3 runs (the test suite needs Python 3.9+)");
    assert!(
        out.status.success(),
        "python ssl client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
fn python_ssl_tls13_and_tls12() {
    let pki = Pki::new();
    let h = spawn(pki.server(1));
    let port = tls_addr(&h).port();
    for (version, name) in [("1.3", "TLSv1.3"), ("1.2", "TLSv1.2")] {
        let v = python_client(&pki, port, version);
        assert_eq!(v["version"], name, "{v}");
        assert_eq!(v["pong"], "pong", "{v}");
        assert_eq!(v["echo"], "from python", "{v}");
    }
    // Both closed with close_notify: no handshake failure was counted.
    let t = h.totals();
    assert_eq!(t.tls_handshake_failures.iter().sum::<u64>(), 0, "{t:?}");
}

/// Reads frames from `r` until `n` have arrived or `within` passes.
fn read_frames(r: &mut impl Read, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut frames = Vec::new();
    while frames.len() < n && Instant::now() < deadline {
        let got = r.read(&mut chunk).expect("read s_client's output");
        if got == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..got]);
        while buf.len() >= 4 {
            let len = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
            if buf.len() < 4 + len {
                break;
            }
            frames.push(serde_json::from_slice(&buf[4..4 + len]).expect("a JSON frame"));
            buf.drain(..4 + len);
        }
    }
    frames
}

#[test]
fn openssl_s_client_handshake_ping_echo() {
    let pki = Pki::new();
    let h = spawn(pki.server(1));
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-no_ign_eof", "-verify_return_error"])
        .args(["-connect", &tls_addr(&h).to_string()])
        .args(["-servername", "localhost", "-verify_hostname", "localhost"])
        .arg("-CAfile")
        .arg(&pki.ca)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl runs (the test suite needs the openssl command)");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(&support::wire::frame(&json!({"type": "ping"})))
        .unwrap();
    stdin
        .write_all(&support::wire::frame(
            &json!({"type": "echo", "content": "from openssl"}),
        ))
        .unwrap();
    stdin.flush().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // s_client's output is read on a thread so that a hung client is
    // killed at the deadline (which ends the read) instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(read_frames(&mut stdout, 2, Duration::from_secs(10)));
    });
    let frames = rx
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            Vec::new()
        });
    drop(stdin); // s_client sends close_notify and exits
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(frames.len(), 2, "s_client got {frames:?}; stderr: {err}");
    assert_eq!(frames[0]["type"], "pong");
    assert_eq!(frames[1]["content"], "from openssl");
    assert!(status.success(), "s_client: {status}; {err}");
}

//! The protections as the `ringcast server` binary exposes them: the auth
//! token from RINGCAST_AUTH_TOKEN and from --auth-token (with the client
//! library authenticating), --rate-limit/--rate-burst and
//! --max-connections-per-ip (per address: another loopback address is
//! still admitted). tests/server_limits.rs covers the same protections
//! through `ServerBuilder`; this checks the CLI wiring and that each
//! protection leaves other clients served.

mod support;

use ringcast::client::{Client as LibClient, ClientConfig};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use support::server::CliServer;
use support::wire::Client;

fn lib_client(addr: SocketAddr, token: Option<&str>) -> ringcast::client::Result<LibClient> {
    LibClient::connect_with(
        addr,
        ClientConfig {
            auth_token: token.map(str::to_owned),
            request_timeout: Duration::from_secs(5),
            ..ClientConfig::default()
        },
    )
}

/// An unauthenticated raw client is refused; the library with the right
/// token is served, with a wrong one it fails to connect.
fn check_token(addr: SocketAddr, token: &str) {
    let mut raw = Client::connect(addr);
    raw.send(&json!({"type": "ping"}));
    raw.expect_error("unauthorized");
    assert!(raw.read_until_closed(Duration::from_secs(4)).is_empty());

    let good = lib_client(addr, Some(token)).expect("the right token is accepted");
    good.ping().expect("ping after auth");
    assert_eq!(good.echo("after auth").unwrap(), "after auth");

    let bad = lib_client(addr, Some("wrong-token"));
    assert!(bad.is_err(), "a wrong token was accepted");
    let none = lib_client(addr, None).and_then(|c| c.ping().map(|_| ()));
    assert!(none.is_err(), "no token, yet served");

    // The refused ones did not disturb the member.
    good.ping().expect("ping after the refusals");
    let stats = good.get_stats().unwrap();
    assert_eq!(stats.connected_clients, 1, "{stats:?}");
}

#[test]
fn cli_auth_token_from_the_environment() {
    let mut server = CliServer::start(&[], &[("RINGCAST_AUTH_TOKEN", "from-env-5ecret")]);
    check_token(server.addr, "from-env-5ecret");
    assert!(server.terminate(Duration::from_secs(10)), "unclean exit");
}

#[test]
fn cli_auth_token_flag_wins_over_the_environment() {
    let mut server = CliServer::start(
        &["--auth-token", "from-flag"],
        &[("RINGCAST_AUTH_TOKEN", "from-env")],
    );
    check_token(server.addr, "from-flag");
    assert!(lib_client(server.addr, Some("from-env")).is_err());
    assert!(server.terminate(Duration::from_secs(10)), "unclean exit");
}

#[test]
fn cli_rate_limit_and_connections_per_ip() {
    let mut server = CliServer::start(
        &[
            "--rate-limit",
            "20",
            "--rate-burst",
            "5",
            "--max-connections-per-ip",
            "3",
        ],
        &[],
    );
    let addr = server.addr;
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    assert_eq!(a.request(&json!({"type": "ping"}))["type"], "pong");
    assert_eq!(b.request(&json!({"type": "ping"}))["type"], "pong");

    // A flood of 200 pipelined pings: every one is answered in order,
    // the excess with rate_limited; the other connection is not limited.
    let (ok, limited) = a.ping_flood(200);
    eprintln!("rate limit 20/s, burst 5: {ok} of 200 pipelined pings passed");
    // The first ping above took one token of the burst of 5.
    assert!((4..=40).contains(&ok), "{ok} passed");
    assert!(limited >= 160, "{limited} limited");
    // b has used one token of its own burst of 5; it uses four more below.
    for i in 0..2 {
        let v = b.request(&json!({"type": "ping", "id": i}));
        assert_eq!(v["type"], "pong", "the other connection was limited: {v}");
    }

    // Per IP: the third from 127.0.0.1 is admitted, the fourth refused;
    // 127.0.0.2 has its own allowance.
    let mut c = Client::connect(addr);
    let v = c.request(&json!({"type": "ping"}));
    assert_eq!(v["type"], "pong", "{v}");
    let mut d = Client::connect(addr);
    d.expect_error("server_full");
    assert!(d.read_until_closed(Duration::from_secs(4)).is_empty());
    let mut other_ip = Client::connect_from([127, 0, 0, 2].into(), addr);
    let v = other_ip.request(&json!({"type": "ping", "id": "other"}));
    assert_eq!(v["type"], "pong", "{v}");
    assert_eq!(
        v["client_id"].as_str().unwrap().split(':').next(),
        Some("127.0.0.2")
    );
    assert_eq!(b.request(&json!({"type": "ping"}))["type"], "pong");
    let s = b.stats();
    assert_eq!(s["errors_by_code"]["server_full"], 1, "{s}");
    assert_eq!(s["errors_by_code"]["rate_limited"], limited, "{s}");
    assert!(server.terminate(Duration::from_secs(10)), "unclean exit");
}

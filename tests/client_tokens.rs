//! The client library with JWTs against a real server in this process
//! (either backend, `RINGCAST_IO_BACKEND`): the token provider is asked for
//! each connection and before expiry, `refresh` replaces the token, and a
//! refused refresh closes the connection, after which a reconnection asks
//! the provider again.

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ringcast::client::{Client, ClientConfig, ReconnectPolicy};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::server::{builder, spawn};
use support::wait::wait_until;

const SECRET: &str = "client-token-tests-secret";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(sub: &str, ttl: u64) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "exp": now() + ttl, "channels": {"subscribe": ["a.*"]}}),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A server that cuts an expired token 2 s after `exp` (no leeway).
fn server() -> ringcast::server::ServerHandle {
    spawn(
        builder(2)
            .jwt_secret(Some(SECRET.into()))
            .jwt_leeway_secs(0)
            .token_refresh_grace_secs(2),
    )
}

#[test]
fn the_provider_is_asked_per_connection_and_before_expiry() {
    let server = server();
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    let config = ClientConfig {
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let c = Client::builder()
        .connect_timeout(config.connect_timeout)
        .request_timeout(config.request_timeout)
        .token_provider(move || {
            c2.fetch_add(1, Ordering::Relaxed);
            Ok(token("alice", 4))
        })
        .connect(server.local_addr())
        .unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let first = c.token_expires_at().expect("auth_ok carries expires_at");
    // Without a refresh the server would cut it at 4 s + 2 s.
    std::thread::sleep(Duration::from_secs(8));
    assert!(c.is_connected());
    c.ping().unwrap();
    assert!(calls.load(Ordering::Relaxed) >= 3, "{calls:?}");
    assert!(c.token_expires_at().unwrap() > first);
    // An explicit refresh answers the new expiry.
    let t = token("alice", 600);
    let exp = c.refresh(&t).unwrap();
    assert_eq!(exp, c.token_expires_at());
    assert!(exp.unwrap() >= now() + 590);
}

#[test]
fn a_refused_refresh_closes_and_the_reconnection_asks_the_provider() {
    let server = server();
    let calls = Arc::new(AtomicU64::new(0));
    let c2 = calls.clone();
    let c = Client::builder()
        .reconnect(ReconnectPolicy {
            enabled: true,
            max_attempts: 50,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(200),
            multiplier: 2.0,
            jitter: 0.5,
        })
        .token_provider(move || {
            c2.fetch_add(1, Ordering::Relaxed);
            Ok(token("alice", 600))
        })
        .connect(server.local_addr())
        .unwrap();
    assert_eq!(c.subscribe("a.b").unwrap(), 1);
    // Another user's token: refused, and the server closes.
    let err = c.refresh(&token("mallory", 600)).unwrap_err();
    assert!(err.to_string().contains("another user"), "{err}");
    wait_until(Duration::from_secs(10), "a reconnection", || {
        calls.load(Ordering::Relaxed) >= 2 && c.is_connected()
    });
    c.ping().unwrap();
    // A provider that fails: the attempt fails with its reason.
    let bad = Client::builder()
        .token_provider(|| Err("the auth backend is down".into()))
        .connect(server.local_addr())
        .unwrap_err();
    assert!(bad.to_string().contains("auth backend is down"), "{bad}");
}

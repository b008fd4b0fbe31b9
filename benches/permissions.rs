//! Issue 25's costs on one core, without sockets:
//!
//! - `permit_*`: the permission check a `subscribe` (or `publish`) pays
//!   (`Grant::permits`): a token with 10 patterns, no namespaces, for a
//!   channel, an allowed pattern and a refused one; and the same with 5
//!   namespace rules in front.
//! - `verify_*`: one `auth` token verification (`server::jwt`) with HS256
//!   and ES256: what a handshake costs the shard beyond the static token.
//!
//! Results and the machine: bench-results/README.md ("Tokens").

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use ringcast::server::config::{Access, Namespace, Namespaces, ServerConfig};
use ringcast::server::jwt::JwtVerifier;
use ringcast::session::grant::{Claims, Grant, Op};
use std::time::{SystemTime, UNIX_EPOCH};

fn grant() -> Grant {
    let subscribe = (0..10)
        .map(|i| format!("tenant{i}.room.*").into_boxed_str())
        .chain(["chat.public.>".into()])
        .collect();
    Grant::Token(Box::new(Claims {
        user: "alice".into(),
        expires_at: None,
        subscribe,
        publish: vec!["chat.public.room1".into()],
        history: Vec::new(),
        broadcast: false,
    }))
}

fn namespaces() -> Namespaces {
    let rule = |pattern: &str, subscribe, publish| Namespace {
        pattern: pattern.into(),
        subscribe,
        publish,
        history_size: None,
        history_ttl_secs: None,
    };
    Namespaces(vec![
        rule("public.>", Access::Anyone, Access::Token),
        rule("system.>", Access::Token, Access::Nobody),
        rule("admin.*.>", Access::Nobody, Access::Nobody),
        rule("metrics.*", Access::Anyone, Access::Nobody),
        rule("chat.>", Access::Token, Access::Token),
    ])
}

fn permits(c: &mut Criterion) {
    let g = grant();
    let none = Namespaces::default();
    let rules = namespaces();
    for (label, ns) in [("no_namespaces", &none), ("5_namespaces", &rules)] {
        for (what, name) in [
            ("channel", "chat.public.room1"),
            ("pattern", "chat.public.*"),
            ("refused", "chat.>"),
        ] {
            c.bench_function(&format!("permit_{label}_{what}"), |b| {
                b.iter(|| g.permits(black_box(ns), Op::Subscribe, black_box(name)))
            });
        }
    }
}

fn verify(c: &mut Criterion) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({"sub": "alice", "exp": now + 3600,
        "channels": {"subscribe": ["chat.public.*"], "publish": ["chat.public.room1"]}});
    let secret = "a-benchmark-secret-of-some-length";
    let key = rcgen::KeyPair::generate().expect("an EC key");
    let dir = std::env::temp_dir().join(format!("ringcast-bench-{}.pem", std::process::id()));
    std::fs::write(&dir, key.public_key_pem()).expect("writable temp dir");
    let config = ServerConfig {
        jwt_secret: Some(secret.into()),
        jwt_public_key: Some(dir.clone()),
        ..ServerConfig::default()
    };
    let v = JwtVerifier::from_config(&config)
        .expect("valid keys")
        .expect("keys set");
    let hs = encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signs");
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims,
        &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("PKCS#8 EC key"),
    )
    .expect("signs");
    for (label, token) in [("hs256", &hs), ("es256", &es)] {
        assert!(v.0.verify(token, now).is_ok(), "{label} verifies");
        c.bench_function(&format!("verify_{label}"), |b| {
            b.iter(|| v.0.verify(black_box(token), now))
        });
    }
    let _ = std::fs::remove_file(dir);
}

criterion_group!(benches, permits, verify);
criterion_main!(benches);

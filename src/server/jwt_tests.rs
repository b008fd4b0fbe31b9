//! The verifier against tokens `jsonwebtoken` signs (HS256, ES256 with an
//! rcgen key) and hand-made hostile ones. The Python suite
//! (python/tests/test_tokens.py) does the same with PyJWT tokens against the
//! real server, for RS256 and EdDSA too.

use super::*;
use crate::server::ServerConfig;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "hmac-secret-for-tests";
const NOW: u64 = 1_800_000_000;

fn verifier(
    secret: Option<&str>,
    public_pem: Option<&str>,
    f: impl FnOnce(&mut ServerConfig),
) -> Verifier {
    let mut c = ServerConfig {
        jwt_secret: secret.map(String::from),
        ..ServerConfig::default()
    };
    if let Some(pem) = public_pem {
        let path = std::env::temp_dir().join(format!(
            "ringcast-jwt-{}-{}.pem",
            std::process::id(),
            crate::random::random_u64()
        ));
        std::fs::write(&path, pem).unwrap();
        c.jwt_public_key = Some(path);
    }
    f(&mut c);
    JwtVerifier::from_config(&c).unwrap().expect("a key is set")
}

fn hs(claims: &Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn claims() -> Value {
    json!({"sub": "alice", "exp": NOW + 60,
           "channels": {"subscribe": ["chat.public.*"], "publish": ["chat.public.room1"]},
           "broadcast": true})
}

/// An EC P-256 key pair: (private PKCS#8 PEM, public PEM).
fn ec_pair() -> (String, String) {
    let k = rcgen::KeyPair::generate().unwrap();
    (k.serialize_pem(), k.public_key_pem())
}

/// A token with this header and claims and the signature part given.
fn raw(header: &Value, claims: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

#[test]
fn hs256_claims_are_read() {
    let v = verifier(Some(SECRET), None, |_| {});
    let c = v.0.verify(&hs(&claims()), NOW).unwrap();
    assert_eq!(&*c.user, "alice");
    assert_eq!(c.expires_at, Some(NOW + 60));
    assert_eq!(c.subscribe, vec![Box::from("chat.public.*")]);
    assert_eq!(c.publish, vec![Box::from("chat.public.room1")]);
    assert!(c.history.is_empty() && c.broadcast);
}

#[test]
fn es256_verifies_with_the_public_key_and_not_as_hmac() {
    let (private, public) = ec_pair();
    let v = verifier(None, Some(&public), |_| {});
    let es = encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(&*v.0.verify(&es, NOW).unwrap().user, "alice");
    // Key confusion: HMAC with only a public key configured, whatever the
    // secret (the public key's own PEM included).
    assert_eq!(
        v.0.verify(&hs(&claims()), NOW),
        Err(TokenRefusal::Algorithm)
    );
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert_eq!(v.0.verify(&confused, NOW), Err(TokenRefusal::Algorithm));
    // Another key's signature.
    let (other, _) = ec_pair();
    let forged = encode(
        &Header::new(Algorithm::ES256),
        &claims(),
        &EncodingKey::from_ec_pem(other.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(v.0.verify(&forged, NOW), Err(TokenRefusal::Signature));
    // An RSA algorithm with an EC key.
    let rs = raw(&json!({"alg": "RS256", "typ": "JWT"}), &claims(), "c2ln");
    assert_eq!(v.0.verify(&rs, NOW), Err(TokenRefusal::Algorithm));
}

#[test]
fn hostile_tokens_are_refused_by_name() {
    let v = verifier(Some(SECRET), None, |_| {});
    let good = hs(&claims());
    let cases: Vec<(String, TokenRefusal)> = vec![
        (
            raw(&json!({"alg": "none"}), &claims(), ""),
            TokenRefusal::AlgNone,
        ),
        (
            raw(&json!({"alg": "None", "typ": "JWT"}), &claims(), ""),
            TokenRefusal::AlgNone,
        ),
        (
            raw(&json!({"alg": "HS1"}), &claims(), "x"),
            TokenRefusal::Algorithm,
        ),
        (good[..good.len() - 3].to_string(), TokenRefusal::Signature),
        (
            good.rsplit_once('.').unwrap().0.to_string(),
            TokenRefusal::Malformed,
        ),
        ("not base64!.at all.%%".to_string(), TokenRefusal::Malformed),
        (String::new(), TokenRefusal::Malformed),
        ("a.b.c.d".to_string(), TokenRefusal::Malformed),
        (
            encode(
                &Header::new(Algorithm::HS256),
                &claims(),
                &EncodingKey::from_secret(b"another secret"),
            )
            .unwrap(),
            TokenRefusal::Signature,
        ),
        (hs(&json!({"sub": 5})), TokenRefusal::Claims),
        (hs(&json!({"exp": NOW + 60})), TokenRefusal::Claims),
        (hs(&json!({"sub": ""})), TokenRefusal::Claims),
        (
            hs(&json!({"sub": "a", "exp": "tomorrow"})),
            TokenRefusal::Claims,
        ),
        (
            hs(&json!({"sub": "a", "broadcast": "yes"})),
            TokenRefusal::Claims,
        ),
        (
            hs(&json!({"sub": "a", "channels": {"subscribe": "x"}})),
            TokenRefusal::Claims,
        ),
        (
            hs(&json!({"sub": "a", "channels": {"subscribe": [1]}})),
            TokenRefusal::Claims,
        ),
        (
            hs(&json!({"sub": "a", "channels": {"subcribe": ["x"]}})),
            TokenRefusal::Claims,
        ),
        (
            hs(&json!({"sub": "a", "channels": {"publish": [">.a"]}})),
            TokenRefusal::Claims,
        ),
        (
            hs(&json!({"sub": "a", "exp": NOW - 31})),
            TokenRefusal::Expired,
        ),
        (
            hs(&json!({"sub": "a", "nbf": NOW + 31})),
            TokenRefusal::NotYetValid,
        ),
    ];
    for (token, why) in cases {
        assert_eq!(v.0.verify(&token, NOW).err(), Some(why), "{token}");
    }
    // Within the leeway (30 s) both ways.
    assert!(v
        .0
        .verify(&hs(&json!({"sub": "a", "exp": NOW - 29})), NOW)
        .is_ok());
    assert!(v
        .0
        .verify(&hs(&json!({"sub": "a", "nbf": NOW + 29})), NOW)
        .is_ok());
}

#[test]
fn audience_and_issuer_are_checked_when_set() {
    let v = verifier(Some(SECRET), None, |c| {
        c.jwt_audience = Some("ringcast".into());
        c.jwt_issuer = Some("https://auth.example".into());
    });
    let ok = json!({"sub": "a", "aud": "ringcast", "iss": "https://auth.example"});
    assert!(v.0.verify(&hs(&ok), NOW).is_ok());
    for (c, why) in [
        (
            json!({"sub": "a", "aud": "other", "iss": "https://auth.example"}),
            TokenRefusal::Audience,
        ),
        (
            json!({"sub": "a", "iss": "https://auth.example"}),
            TokenRefusal::Audience,
        ),
        (
            json!({"sub": "a", "aud": "ringcast", "iss": "https://evil"}),
            TokenRefusal::Issuer,
        ),
        (json!({"sub": "a", "aud": "ringcast"}), TokenRefusal::Issuer),
    ] {
        assert_eq!(v.0.verify(&hs(&c), NOW).err(), Some(why), "{c}");
    }
    // Not set: a token's aud is not held against it.
    let plain = verifier(Some(SECRET), None, |_| {});
    assert!(plain
        .0
        .verify(&hs(&json!({"sub": "a", "aud": "x"})), NOW)
        .is_ok());
}

#[test]
fn bad_key_settings_are_refused_at_start() {
    let mut c = ServerConfig {
        jwt_public_key: Some("/nonexistent/key.pem".into()),
        ..ServerConfig::default()
    };
    assert!(JwtVerifier::from_config(&c)
        .unwrap_err()
        .contains("jwt_public_key"));
    let path = std::env::temp_dir().join(format!("ringcast-jwt-bad-{}.pem", std::process::id()));
    std::fs::write(&path, "not a key").unwrap();
    c.jwt_public_key = Some(path);
    assert!(JwtVerifier::from_config(&c)
        .unwrap_err()
        .contains("not a PEM public key"));
    let c = ServerConfig {
        jwt_audience: Some("x".into()),
        ..ServerConfig::default()
    };
    assert!(JwtVerifier::from_config(&c).is_err());
    assert!(JwtVerifier::from_config(&ServerConfig::default())
        .unwrap()
        .is_none());
}

//! Tokens through the session and the router, in memory, with a simulated
//! clock: `auth` with claims, permissions by claim and by namespace, the
//! expiry notice, the cut at the grace, and `refresh`. The verifier here is
//! `TestTokens` (claims as plain JSON); signatures are `server::jwt`'s
//! tests and the Python suite's.

use super::channel_tests::{ask, take};
use crate::protocol::RequestKind;
use crate::route::testing::{shared, ServerConfig, TestEnv, TestTokens};
use crate::session::grant::{Access, Namespace, Namespaces, TokenRefusal};
use crate::session::*;
use serde_json::{json, Value};

/// The simulated wall clock at the start, in seconds.
const T0: u64 = 1_700_000_000;

/// A token's text for `TestTokens`.
fn token(claims: Value) -> String {
    claims.to_string()
}

/// A session that sent `auth` with `claims`; returns it and the answer.
fn authed(env: &mut TestEnv<'_>, id: usize, claims: Value) -> (Session, Vec<Value>) {
    let mut s = Session::new(env, id, format!("c{id}").into(), None, Transport::Plain);
    let r = ask(
        env,
        &mut s,
        &json!({"type": "auth", "token": token(claims), "id": "a"}),
    );
    (s, r)
}

fn env_with_tokens(sh: &crate::route::testing::Shared) -> TestEnv<'_> {
    let mut env = sh.env(0);
    env.config.verifier = Some(TestTokens::verifier());
    env.now_ms = T0 * 1000;
    env.now_mono_ms = 0;
    env
}

/// Advances both clocks by `secs` and ticks `s`; returns what it sent.
fn advance(env: &mut TestEnv<'_>, s: &mut Session, secs: u64) -> Vec<Value> {
    env.now_ms += secs * 1000;
    env.now_mono_ms += secs * 1000;
    s.handle_tick(env);
    take(env, s)
}

fn code(r: &[Value]) -> &str {
    r.last().and_then(|f| f["code"].as_str()).unwrap_or("")
}

#[test]
fn auth_with_a_token_names_the_user_and_its_expiry() {
    let sh = shared(ServerConfig::default());
    let mut env = env_with_tokens(&sh);
    let (s, r) = authed(&mut env, 0, json!({"sub": "alice", "exp": T0 + 600}));
    assert_eq!(
        r,
        [json!({"type": "auth_ok", "user": "alice", "expires_at": T0 + 600, "id": "a"})]
    );
    assert_eq!(s.user(), Some("alice"));
    assert!(s.is_established());
    // A refused token closes, naming the check, and is counted by reason.
    let (s, r) = authed(&mut env, 1, json!({"sub": "bob", "exp": T0 - 100}));
    assert_eq!(r[0]["code"], "unauthorized");
    assert_eq!(r[0]["message"], TokenRefusal::Expired.message());
    assert!(!matches!(s.phase(), Phase::Open));
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.auth_failures[TokenRefusal::Expired.index()], 1);
    // Not auth first: refused as missing.
    let mut s = Session::new(&mut env, 2, "c2".into(), None, Transport::Plain);
    let r = ask(&mut env, &mut s, &json!({"type": "ping"}));
    assert_eq!(code(&r), "unauthorized");
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.auth_failures[TokenRefusal::Missing.index()], 1);
}

#[test]
fn claims_allow_and_deny_without_cutting_the_connection() {
    let sh = shared(ServerConfig::default());
    let mut env = env_with_tokens(&sh);
    let claims = json!({"sub": "alice", "subscribe": ["chat.public.*"],
                        "publish": ["chat.public.room1"], "history": []});
    let (mut a, _) = authed(&mut env, 0, claims);
    let (mut b, _) = authed(&mut env, 1, json!({"sub": "root", "subscribe": [">"]}));
    for (req, want) in [
        (
            json!({"type": "subscribe", "channel": "chat.public.room1"}),
            "subscribed",
        ),
        (
            json!({"type": "subscribe", "channel": "chat.public.*"}),
            "subscribed",
        ),
        (
            json!({"type": "subscribe", "channel": "chat.private.x"}),
            "error",
        ),
        // A pattern reaching past the claim is refused whole.
        (json!({"type": "subscribe", "channel": "chat.>"}), "error"),
        (
            json!({"type": "subscribe", "channel": "chat.public.>"}),
            "error",
        ),
        (
            json!({"type": "publish", "channel": "chat.public.room2", "content": 1}),
            "error",
        ),
        (
            json!({"type": "history", "channel": "chat.public.room1"}),
            "error",
        ),
        (json!({"type": "broadcast", "content": "hi"}), "error"),
    ] {
        let r = ask(&mut env, &mut a, &req);
        assert_eq!(r[0]["type"], want, "{req} → {r:?}");
        if want == "error" {
            assert_eq!(r[0]["code"], "permission_denied", "{req}");
        }
    }
    assert_eq!(a.phase(), Phase::Open);
    // Nothing denied was delivered: b listens everywhere.
    ask(
        &mut env,
        &mut b,
        &json!({"type": "subscribe", "channel": "chat.public.room2"}),
    );
    assert!(env.host.outgoing.is_empty());
    // Allowed: delivered, with the publisher's user.
    let r = ask(
        &mut env,
        &mut a,
        &json!({"type": "publish", "channel": "chat.public.room1", "content": 1}),
    );
    assert_eq!(r[0]["type"], "published");
    let (d, _) = env.host.outgoing.pop().expect("the publish is routed");
    let msg: Value = serde_json::from_slice(&d.frame[4..]).unwrap();
    assert_eq!(msg["user"], "alice");
    assert_eq!(msg["from"], "c0");
    let t = sh.totals(&mut Vec::new());
    assert_eq!(
        t.errors[crate::protocol::ErrorCode::PermissionDenied.index()],
        6
    );
}

#[test]
fn namespaces_decide_first_match_wins() {
    let cfg = ServerConfig {
        namespace: Namespaces(vec![
            Namespace {
                pattern: "public.>".into(),
                subscribe: Access::Anyone,
                publish: Access::Token,
                history_size: None,
                history_ttl_secs: None,
            },
            Namespace {
                pattern: "system.>".into(),
                subscribe: Access::Token,
                publish: Access::Nobody,
                history_size: None,
                history_ttl_secs: None,
            },
        ]),
        ..ServerConfig::default()
    };
    let sh = shared(cfg);
    let mut env = env_with_tokens(&sh);
    let (mut a, _) = authed(
        &mut env,
        0,
        json!({"sub": "alice", "subscribe": ["system.alerts"], "publish": ["public.news", "system.alerts"]}),
    );
    for (req, want) in [
        // anyone: no claim needed.
        (
            json!({"type": "subscribe", "channel": "public.anything"}),
            "subscribed",
        ),
        (
            json!({"type": "subscribe", "channel": "public.>"}),
            "subscribed",
        ),
        // token: the claim decides.
        (
            json!({"type": "publish", "channel": "public.news", "content": 1}),
            "published",
        ),
        (
            json!({"type": "publish", "channel": "public.other", "content": 1}),
            "error",
        ),
        (
            json!({"type": "subscribe", "channel": "system.alerts"}),
            "subscribed",
        ),
        (
            json!({"type": "subscribe", "channel": "system.other"}),
            "error",
        ),
        // nobody: not even a claim that names it.
        (
            json!({"type": "publish", "channel": "system.alerts", "content": 1}),
            "error",
        ),
        // No rule: the claims (none here).
        (json!({"type": "subscribe", "channel": "other"}), "error"),
        // A pattern over both namespaces needs both to allow it.
        (json!({"type": "subscribe", "channel": "*.alerts"}), "error"),
    ] {
        let r = ask(&mut env, &mut a, &req);
        assert_eq!(r[0]["type"], want, "{req} → {r:?}");
    }
    // Without auth configured, a token namespace refuses everyone.
    let mut open = sh.env(0);
    let mut s = Session::new(&mut open, 9, "x".into(), None, Transport::Plain);
    let r = ask(
        &mut open,
        &mut s,
        &json!({"type": "subscribe", "channel": "system.x"}),
    );
    assert_eq!(code(&r), "permission_denied");
    let r = ask(
        &mut open,
        &mut s,
        &json!({"type": "subscribe", "channel": "public.x"}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    let r = ask(
        &mut open,
        &mut s,
        &json!({"type": "subscribe", "channel": "other"}),
    );
    assert_eq!(r[0]["type"], "subscribed");
}

#[test]
fn expiry_is_noticed_then_cut_at_the_grace() {
    let sh = shared(ServerConfig::default());
    let mut env = env_with_tokens(&sh);
    let (mut s, _) = authed(&mut env, 0, json!({"sub": "alice", "exp": T0 + 60}));
    // exp + leeway (30 s) is T0 + 90: nothing before.
    assert!(advance(&mut env, &mut s, 89).is_empty());
    let r = advance(&mut env, &mut s, 1);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["type"], "error");
    assert_eq!(r[0]["code"], "token_expired");
    assert_eq!(s.phase(), Phase::Open);
    // Requests are still served during the grace (10 s).
    let r = ask(&mut env, &mut s, &json!({"type": "ping"}));
    assert_eq!(r[0]["type"], "pong");
    assert!(advance(&mut env, &mut s, 9).is_empty());
    let r = advance(&mut env, &mut s, 1);
    assert_eq!(code(&r), "token_expired");
    assert!(matches!(
        s.phase(),
        Phase::Draining { .. } | Phase::Lingering { .. } | Phase::Closed
    ));
}

#[test]
fn a_refresh_in_time_keeps_the_connection() {
    let sh = shared(ServerConfig::default());
    let mut env = env_with_tokens(&sh);
    let (mut s, _) = authed(&mut env, 0, json!({"sub": "alice", "exp": T0 + 60}));
    assert_eq!(code(&advance(&mut env, &mut s, 90)), "token_expired");
    let r = ask(
        &mut env,
        &mut s,
        &json!({"type": "refresh", "token": token(json!({"sub": "alice", "exp": T0 + 600})), "id": 7}),
    );
    assert_eq!(
        r,
        [json!({"type": "refreshed", "expires_at": T0 + 600, "id": 7})]
    );
    // Past the old grace: still open, no notice until the new expiry.
    assert!(advance(&mut env, &mut s, 60).is_empty());
    assert_eq!(s.phase(), Phase::Open);
    let r = advance(&mut env, &mut s, 600 + 30 - 150);
    assert_eq!(code(&r), "token_expired");
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.messages_of(RequestKind::Refresh), 1);
}

#[test]
fn a_refresh_for_another_user_is_refused_and_closes() {
    let sh = shared(ServerConfig::default());
    let mut env = env_with_tokens(&sh);
    let (mut s, _) = authed(&mut env, 0, json!({"sub": "alice", "exp": T0 + 60}));
    let r = ask(
        &mut env,
        &mut s,
        &json!({"type": "refresh", "token": token(json!({"sub": "mallory", "exp": T0 + 600}))}),
    );
    assert_eq!(code(&r), "unauthorized");
    assert_eq!(r[0]["message"], TokenRefusal::OtherUser.message());
    assert_ne!(s.phase(), Phase::Open);
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.auth_failures[TokenRefusal::OtherUser.index()], 1);
}

#[test]
fn a_refresh_that_narrows_drops_what_is_no_longer_allowed() {
    let sh = shared(ServerConfig::default());
    let mut env = env_with_tokens(&sh);
    let wide = json!({"sub": "alice", "exp": T0 + 60, "subscribe": ["a.*", "b.x"]});
    let (mut s, _) = authed(&mut env, 0, wide);
    for ch in ["a.one", "a.*", "b.x"] {
        let r = ask(
            &mut env,
            &mut s,
            &json!({"type": "subscribe", "channel": ch}),
        );
        assert_eq!(r[0]["type"], "subscribed");
    }
    let narrow = json!({"sub": "alice", "exp": T0 + 600, "subscribe": ["a.one"]});
    let r = ask(
        &mut env,
        &mut s,
        &json!({"type": "refresh", "token": token(narrow)}),
    );
    assert_eq!(r[0]["type"], "refreshed");
    let mut dropped: Vec<&str> = r[1..]
        .iter()
        .map(|f| {
            assert_eq!(f["type"], "unsubscribed");
            assert_eq!(f["reason"], "permission_denied");
            f["channel"].as_str().unwrap()
        })
        .collect();
    dropped.sort();
    assert_eq!(dropped, ["a.*", "b.x"]);
    assert_eq!(r.last().unwrap()["subscriptions"], 1);
    assert!(env.host.channels.is_subscribed(0, "a.one"));
    assert!(!env.host.channels.is_subscribed(0, "b.x"));
}

#[test]
fn the_static_token_still_grants_everything() {
    let sh = shared(ServerConfig {
        auth_token: Some("s3cret".into()),
        ..ServerConfig::default()
    });
    let mut env = env_with_tokens(&sh);
    let mut s = Session::new(&mut env, 0, "c0".into(), None, Transport::Plain);
    let r = ask(
        &mut env,
        &mut s,
        &json!({"type": "auth", "token": "s3cret"}),
    );
    assert_eq!(r, [json!({"type": "auth_ok"})]);
    let r = ask(
        &mut env,
        &mut s,
        &json!({"type": "broadcast", "content": 1}),
    );
    assert_eq!(r[0]["type"], "broadcast_sent");
    let r = ask(
        &mut env,
        &mut s,
        &json!({"type": "subscribe", "channel": ">"}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    // Nothing to refresh on a static token: refused, closed.
    let r = ask(
        &mut env,
        &mut s,
        &json!({"type": "refresh", "token": "s3cret"}),
    );
    assert_eq!(r[0]["message"], TokenRefusal::NotToken.message());
    // A token over 8 KiB is refused before the verifier sees it.
    let mut s = Session::new(&mut env, 1, "c1".into(), None, Transport::Plain);
    let big = "x".repeat(crate::session::grant::MAX_TOKEN_BYTES + 1);
    let r = ask(&mut env, &mut s, &json!({"type": "auth", "token": big}));
    assert_eq!(r[0]["message"], TokenRefusal::TooLarge.message());
}

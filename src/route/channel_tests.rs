//! Channels through the session and the router, in memory: subscribe,
//! unsubscribe, publish, their errors and limits, across simulated shards.

use super::session_tests::{decode, frame};
use crate::protocol::{ErrorCode, RequestKind};
use crate::route::testing::{shards, shared, ServerConfig, TestEnv};
use crate::session::*;
use serde_json::{json, Value};

/// `n` sessions on shard `shard` of `sh`, named "c0", "c1", … (session
/// ids are their index).
pub(super) fn sessions(env: &mut TestEnv<'_>, n: usize) -> Vec<Session> {
    (0..n)
        .map(|i| Session::new(env, i, format!("c{i}").into(), None, Transport::Plain))
        .collect()
}

/// Sends `v` from `s` and returns the frames it gets back.
pub(super) fn ask(env: &mut TestEnv<'_>, s: &mut Session, v: &Value) -> Vec<Value> {
    let mut b = frame(v);
    s.handle_data(env, &mut b);
    take(env, s)
}

/// Everything `s` has to send, reported sent, as frames.
pub(super) fn take(env: &mut TestEnv<'_>, s: &mut Session) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(batch) = s.poll_transmit(env) {
        let bytes: Vec<u8> = batch.slices().flatten().copied().collect();
        let n = bytes.len();
        s.handle_sent(env, batch, Ok(n));
        frames.extend(decode(bytes));
    }
    frames
}

#[test]
fn subscribe_and_unsubscribe_are_answered_with_the_id_and_the_count_held() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "news", "id": 1}),
    );
    assert_eq!(
        r,
        [json!({"type": "subscribed", "channel": "news", "subscriptions": 1, "id": 1})]
    );
    // Again: answered the same, still one subscription.
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "news", "id": "x"}),
    );
    assert_eq!(r[0]["subscriptions"], 1);
    assert_eq!(r[0]["id"], "x");
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "sport"}),
    );
    assert_eq!(r[0]["subscriptions"], 2);
    assert_eq!(sh.totals(&mut Vec::new()).subscriptions, 2);
    assert_eq!(sh.totals(&mut Vec::new()).channels, 2);
    // Not subscribed: answered, not an error.
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "unsubscribe", "channel": "weather", "id": 2}),
    );
    assert_eq!(
        r,
        [json!({"type": "unsubscribed", "channel": "weather", "subscriptions": 2, "id": 2})]
    );
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "unsubscribe", "channel": "news"}),
    );
    assert_eq!(r[0]["subscriptions"], 1);
    assert_eq!(env.host.channels.subscriber_count("news"), 0);
    assert_eq!(sh.totals(&mut Vec::new()).subscriptions, 1);
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.messages_of(RequestKind::Subscribe), 3);
    assert_eq!(t.messages_of(RequestKind::Unsubscribe), 2);
    assert_eq!(t.protocol_errors(), 0);
}

#[test]
fn channel_names_are_checked_with_clear_errors() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    let longest = "é".repeat(128); // 256 bytes of UTF-8
    assert_eq!(longest.len(), crate::protocol::message::MAX_CHANNEL_BYTES);
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": longest}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    for (req, code) in [
        (
            json!({"type": "subscribe", "channel": "", "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "x".repeat(257), "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "publish", "channel": "a\u{0}b", "content": 1, "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "unsubscribe", "channel": "tab\there", "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "del\u{7f}", "id": 1}),
            "invalid_channel",
        ),
        (json!({"type": "subscribe", "id": 1}), "invalid_field"),
        (
            json!({"type": "subscribe", "channel": 5, "id": 1}),
            "invalid_field",
        ),
        (
            json!({"type": "publish", "channel": "a", "id": 1}),
            "invalid_field",
        ),
    ] {
        let r = ask(&mut env, &mut c[0], &req);
        assert_eq!(r.len(), 1, "{req}");
        assert_eq!(r[0]["type"], "error", "{req}");
        assert_eq!(r[0]["code"], code, "{req}");
        assert_eq!(r[0]["id"], 1, "{req}");
        assert_eq!(r[0]["request_type"], req["type"], "{req}");
    }
    assert_eq!(
        c[0].phase(),
        Phase::Open,
        "a bad name leaves the connection open"
    );
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.errors[ErrorCode::InvalidChannel.index()], 5);
    assert_eq!(t.errors[ErrorCode::InvalidField.index()], 3);
    assert_eq!(t.subscriptions, 1, "no rejected name was subscribed");
}

#[test]
fn subscriptions_per_connection_are_capped() {
    let sh = shared(ServerConfig {
        max_subscriptions: 2,
        ..ServerConfig::default()
    });
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 2);
    for ch in ["a", "b"] {
        let r = ask(
            &mut env,
            &mut c[0],
            &json!({"type": "subscribe", "channel": ch}),
        );
        assert_eq!(r[0]["type"], "subscribed");
    }
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "c", "id": 7}),
    );
    assert_eq!(r[0]["code"], "too_many_subscriptions");
    assert_eq!(r[0]["id"], 7);
    // Subscribing again to one it holds is no new subscription.
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "a"}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    // The cap is per connection; and leaving one makes room.
    let r = ask(
        &mut env,
        &mut c[1],
        &json!({"type": "subscribe", "channel": "c"}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    ask(
        &mut env,
        &mut c[0],
        &json!({"type": "unsubscribe", "channel": "a"}),
    );
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "c"}),
    );
    assert_eq!(r[0]["subscriptions"], 2);
    assert_eq!(
        sh.totals(&mut Vec::new()).errors[ErrorCode::TooManySubscriptions.index()],
        1
    );
}

#[test]
fn publish_counts_subscribers_and_queues_one_shared_frame() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 3);
    for i in [1, 2] {
        ask(
            &mut env,
            &mut c[i],
            &json!({"type": "subscribe", "channel": "news"}),
        );
    }
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "news", "content": {"k": [1, 2]}, "id": "p"}),
    );
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["type"], "published");
    assert_eq!(r[0]["channel"], "news");
    assert_eq!(r[0]["recipients"], 2, "the publisher is not subscribed");
    assert_eq!(r[0]["id"], "p");
    let (d, sender) = env.host.outgoing.pop().expect("one delivery");
    assert_eq!(sender, 0);
    assert_eq!(d.channel.as_deref(), Some("news"));
    let v = decode(d.frame.to_vec());
    assert_eq!(
        v[0],
        json!({"type": "channel_message", "channel": "news", "content": {"k": [1, 2]},
               "from": "c0", "timestamp": r[0]["timestamp"]})
    );
    // A subscribed publisher counts itself, as in Redis.
    ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "news"}),
    );
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "news", "content": 1}),
    );
    assert_eq!(r[0]["recipients"], 3);
    // Nobody there: answered with 0, still published (and counted).
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "empty", "content": 1}),
    );
    assert_eq!(r[0]["recipients"], 0);
    assert_eq!(
        sh.totals(&mut Vec::new()).messages_of(RequestKind::Publish),
        3
    );
}

#[test]
fn closing_drops_every_subscription() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 2);
    for ch in ["a", "b", "c"] {
        ask(
            &mut env,
            &mut c[0],
            &json!({"type": "subscribe", "channel": ch}),
        );
    }
    ask(
        &mut env,
        &mut c[1],
        &json!({"type": "subscribe", "channel": "a"}),
    );
    assert_eq!(sh.totals(&mut Vec::new()).subscriptions, 4);
    c[0].handle_eof(&mut env);
    assert_eq!(env.host.channels.subscriber_count("a"), 1);
    assert_eq!(env.host.channels.subscriber_count("b"), 0);
    let t = sh.totals(&mut Vec::new());
    assert_eq!((t.subscriptions, t.channels), (1, 1));
    c[1].handle_failed(&mut env);
    let t = sh.totals(&mut Vec::new());
    assert_eq!((t.subscriptions, t.channels), (0, 0));
    let slot = crate::protocol::interest::slot_of("a");
    assert_eq!(sh.interest[0].count(slot), 0, "interest withdrawn");
}

#[test]
fn publish_counts_subscribers_on_other_shards_from_their_interest() {
    let sh = shards(ServerConfig::default(), 2);
    let mut env0 = sh.env(0);
    let mut env1 = sh.env(1);
    let mut a = sessions(&mut env0, 1);
    let mut b = sessions(&mut env1, 2);
    for s in b.iter_mut() {
        let r = ask(
            &mut env1,
            s,
            &json!({"type": "subscribe", "channel": "room"}),
        );
        assert_eq!(r[0]["type"], "subscribed");
    }
    let slot = crate::protocol::interest::slot_of("room");
    assert_eq!(
        (sh.interest[0].count(slot), sh.interest[1].count(slot)),
        (0, 2)
    );
    let r = ask(
        &mut env0,
        &mut a[0],
        &json!({"type": "publish", "channel": "room", "content": "hi"}),
    );
    assert_eq!(r[0]["recipients"], 2);
    ask(
        &mut env1,
        &mut b[0],
        &json!({"type": "unsubscribe", "channel": "room"}),
    );
    let r = ask(
        &mut env0,
        &mut a[0],
        &json!({"type": "publish", "channel": "room", "content": "hi"}),
    );
    assert_eq!(r[0]["recipients"], 1);
}

#[test]
fn an_unauthenticated_client_cannot_subscribe() {
    let sh = shared(ServerConfig {
        auth_token: Some("t".into()),
        ..ServerConfig::default()
    });
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "a"}),
    );
    assert_eq!(r[0]["code"], "unauthorized");
    assert_eq!(env.host.channels.subscription_count(), 0);
}

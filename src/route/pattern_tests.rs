//! Pattern subscriptions through the session and the router, in memory:
//! one delivery however many subscriptions match, unsubscribing one of
//! two, routing to other shards only where a pattern may match, the
//! caches seeing every change, and the refusals.

use super::channel_tests::{ask, sessions, take};
use super::history_tests::{fan_out, with_history};
use crate::route::testing::{shards, ServerConfig, Shared, TestEnv};
use crate::route::Delivery;
use crate::session::*;
use serde_json::{json, Value};

fn sub(env: &mut TestEnv<'_>, s: &mut Session, channel: &str) -> Value {
    let r = ask(env, s, &json!({"type": "subscribe", "channel": channel}));
    assert_eq!(r.len(), 1, "{r:?}");
    r[0].clone()
}

/// Publishes from `s` on shard `shard` and routes the delivery as the
/// shard loop does (to the other shards' mailboxes); returns the answer.
fn publish(sh: &Shared, shard: usize, env: &mut TestEnv<'_>, s: &mut Session, ch: &str) -> Value {
    let r = ask(
        env,
        s,
        &json!({"type": "publish", "channel": ch, "content": ch}),
    );
    let (d, _) = env.host.outgoing.pop().expect("a delivery");
    assert!(env.host.outgoing.is_empty());
    sh.to_shards(Some(shard), &d, false, &mut vec![None; sh.shards()]);
    // What the loop then hands its own sessions: kept in the mailbox of
    // the publisher's shard for `fan_out` to find.
    sh.mailboxes[shard].push_own(d);
    r[0].clone()
}

/// The channels of the `channel_message`s `s` received.
fn got(env: &mut TestEnv<'_>, s: &mut Session) -> Vec<String> {
    take(env, s)
        .iter()
        .filter(|f| f["type"] == "channel_message")
        .map(|f| f["channel"].as_str().expect("a channel").to_owned())
        .collect()
}

/// Deliveries waiting in shard `shard`'s mailbox (taken out).
fn waiting(sh: &Shared, shard: usize) -> Vec<Delivery> {
    let mut v = Vec::new();
    sh.mailboxes[shard].drain(|d| v.push(d));
    v
}

#[test]
fn a_connection_gets_a_publication_once_however_many_subscriptions_match() {
    let sh = shards(ServerConfig::default(), 2);
    let (mut env0, mut env1) = (sh.env(0), sh.env(1));
    let mut a = sessions(&mut env0, 1);
    let mut b = sessions(&mut env1, 3);
    for (i, ch) in ["room.1", "room.*", "room.>", ">"].iter().enumerate() {
        assert_eq!(sub(&mut env1, &mut b[0], ch)["subscriptions"], i + 1);
    }
    sub(&mut env1, &mut b[1], "room.*");
    // The publisher's shard has no subscriber: the other shard's patterns
    // route it there.
    publish(&sh, 0, &mut env0, &mut a[0], "room.1");
    fan_out(&sh, 0, &mut env0, &mut a);
    fan_out(&sh, 1, &mut env1, &mut b);
    assert_eq!(
        got(&mut env1, &mut b[0]),
        ["room.1"],
        "once, not four times"
    );
    assert_eq!(got(&mut env1, &mut b[1]), ["room.1"]);
    assert!(got(&mut env0, &mut a[0]).is_empty());

    publish(&sh, 0, &mut env0, &mut a[0], "room.2.x");
    publish(&sh, 0, &mut env0, &mut a[0], "lobby");
    fan_out(&sh, 0, &mut env0, &mut a);
    fan_out(&sh, 1, &mut env1, &mut b);
    assert_eq!(got(&mut env1, &mut b[0]), ["room.2.x", "lobby"]);
    assert!(got(&mut env1, &mut b[1]).is_empty(), "* is one token");

    // On the subscribers' own shard the count is exact: each session once.
    let r = publish(&sh, 1, &mut env1, &mut b[2], "room.1");
    assert_eq!(r["recipients"], 2);
    fan_out(&sh, 1, &mut env1, &mut b);
    assert_eq!(got(&mut env1, &mut b[0]), ["room.1"]);
    assert_eq!(got(&mut env1, &mut b[1]), ["room.1"]);
    assert!(waiting(&sh, 0).is_empty(), "no pattern on shard 0: no hop");
    let t = sh.totals(&mut Vec::new());
    assert_eq!(t.subscriptions, 5);
}

#[test]
fn unsubscribing_one_of_two_overlapping_subscriptions_keeps_the_other() {
    let sh = shards(ServerConfig::default(), 2);
    let (mut env0, mut env1) = (sh.env(0), sh.env(1));
    let mut a = sessions(&mut env0, 1);
    let mut b = sessions(&mut env1, 1);
    sub(&mut env1, &mut b[0], "room.*");
    sub(&mut env1, &mut b[0], "room.>");
    let r = ask(
        &mut env1,
        &mut b[0],
        &json!({"type": "unsubscribe", "channel": "room.*", "id": 1}),
    );
    assert_eq!(
        r,
        [json!({"type": "unsubscribed", "channel": "room.*", "subscriptions": 1, "id": 1})]
    );
    publish(&sh, 0, &mut env0, &mut a[0], "room.1");
    fan_out(&sh, 1, &mut env1, &mut b);
    assert_eq!(got(&mut env1, &mut b[0]), ["room.1"]);
    ask(
        &mut env1,
        &mut b[0],
        &json!({"type": "unsubscribe", "channel": "room.>"}),
    );
    publish(&sh, 0, &mut env0, &mut a[0], "room.1");
    assert!(
        waiting(&sh, 1).is_empty(),
        "no pattern left on shard 1: the publication does not cross"
    );
    assert!(sh.patterns.is_empty());
    assert_eq!(sh.totals(&mut Vec::new()).subscriptions, 0);
}

#[test]
fn every_cache_sees_a_pattern_come_and_go_at_once() {
    let sh = shards(ServerConfig::default(), 2);
    let (mut env0, mut env1) = (sh.env(0), sh.env(1));
    let mut a = sessions(&mut env0, 2);
    let mut b = sessions(&mut env1, 2);
    sub(&mut env0, &mut a[1], "a.*");
    // Fill both caches: shard 0's own trie, and its view of the node's
    // patterns (no shard 1 pattern yet).
    for _ in 0..2 {
        assert_eq!(
            publish(&sh, 0, &mut env0, &mut a[0], "a.b")["recipients"],
            1
        );
        fan_out(&sh, 0, &mut env0, &mut a);
        assert_eq!(got(&mut env0, &mut a[1]), ["a.b"]);
    }
    assert!(waiting(&sh, 1).is_empty());
    // A new pattern on the other shard: the next publish crosses.
    sub(&mut env1, &mut b[0], "*.b");
    assert_eq!(
        publish(&sh, 0, &mut env0, &mut a[0], "a.b")["recipients"],
        2
    );
    fan_out(&sh, 1, &mut env1, &mut b);
    assert_eq!(got(&mut env1, &mut b[0]), ["a.b"]);
    // A second subscriber of a pattern already held: counts read live.
    sub(&mut env1, &mut b[1], "*.b");
    assert_eq!(
        publish(&sh, 0, &mut env0, &mut a[0], "a.b")["recipients"],
        3
    );
    fan_out(&sh, 0, &mut env0, &mut a);
    fan_out(&sh, 1, &mut env1, &mut b);
    assert_eq!(got(&mut env1, &mut b[0]), ["a.b"]);
    assert_eq!(got(&mut env1, &mut b[1]), ["a.b"]);
    // The local pattern leaves: shard 0's own cache forgets it.
    ask(
        &mut env0,
        &mut a[1],
        &json!({"type": "unsubscribe", "channel": "a.*"}),
    );
    assert_eq!(
        publish(&sh, 0, &mut env0, &mut a[0], "a.b")["recipients"],
        2
    );
    fan_out(&sh, 0, &mut env0, &mut a);
    assert!(got(&mut env0, &mut a[1]).is_empty());
    // The remote ones leave (one by closing): nothing crosses any more.
    b[1].handle_eof(&mut env1);
    ask(
        &mut env1,
        &mut b[0],
        &json!({"type": "unsubscribe", "channel": "*.b"}),
    );
    waiting(&sh, 1);
    assert_eq!(
        publish(&sh, 0, &mut env0, &mut a[0], "a.b")["recipients"],
        0
    );
    assert!(waiting(&sh, 1).is_empty());
}

#[test]
fn patterns_are_refused_where_a_channel_is_needed_and_checked_where_allowed() {
    let sh = shards(
        ServerConfig {
            max_subscriptions: 2,
            ..ServerConfig::default()
        },
        1,
    );
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    for (req, code) in [
        (
            json!({"type": "publish", "channel": "a.*", "content": 1, "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "publish", "channel": ">", "content": 1, "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "a.>.b", "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "a*", "id": 1}),
            "invalid_channel",
        ),
        (
            json!({"type": "subscribe", "channel": "a.*",
                   "recover": {"offset": 1, "epoch": "e"}, "id": 1}),
            "invalid_field",
        ),
    ] {
        let r = ask(&mut env, &mut c[0], &req);
        assert_eq!(r.len(), 1, "{req}");
        assert_eq!(r[0]["code"], code, "{req}: {r:?}");
        assert_eq!(r[0]["id"], 1);
    }
    assert_eq!(c[0].phase(), Phase::Open);
    // Patterns count in max_subscriptions.
    sub(&mut env, &mut c[0], "a.*");
    sub(&mut env, &mut c[0], "b");
    assert_eq!(
        sub(&mut env, &mut c[0], "c.>")["code"],
        "too_many_subscriptions"
    );
}

#[test]
fn a_pattern_on_a_history_channel_gets_offsets_but_no_position() {
    let sh = with_history(10, 1);
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 3);
    let r = sub(&mut env, &mut c[1], "h.*");
    assert_eq!(r["type"], "subscribed");
    assert!(r.get("offset").is_none() && r.get("epoch").is_none(), "{r}");
    // Subscribed to the channel and the pattern: once, by the channel's
    // own subscription (which knows what it was replayed).
    sub(&mut env, &mut c[2], "h.1");
    sub(&mut env, &mut c[2], "h.>");
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "h.1", "content": 1}),
    );
    assert_eq!(r[0]["offset"], 1);
    assert_eq!(r[0]["recipients"], 2);
    env.host.outgoing.clear();
    fan_out(&sh, 0, &mut env, &mut c);
    for s in [1, 2] {
        let f = take(&mut env, &mut c[s]);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0]["channel"], "h.1");
        assert_eq!(f[0]["offset"], 1);
        assert!(f[0]["epoch"].is_string());
    }
}

//! Channel history and recovery through the session and the router, in
//! memory with a simulated clock: offsets, replay racing live
//! publications, refusals, reads and bad input.

use super::channel_tests::{ask, sessions, take};
use super::session_tests::code;
use crate::route::testing::{cluster_node, shards, shared, ServerConfig, Shared, TestEnv};
use crate::session::*;
use serde_json::{json, Value};

/// A node keeping history: `size` publications a channel, TTL 60 s.
pub(super) fn with_history(size: usize, n: usize) -> Shared {
    shards(
        ServerConfig {
            history: crate::route::history::HistorySettings {
                size,
                ttl_ms: 60_000,
                max_bytes: 1 << 20,
                recover_limit: 1000,
            },
            ..ServerConfig::default()
        },
        n,
    )
}

/// What the shard loop does with shard `shard`'s mailbox: each delivery to
/// the subscribers its index names (skipping those whose subscription
/// began at or after a history publication).
pub(super) fn fan_out(sh: &Shared, shard: usize, env: &mut TestEnv<'_>, sessions: &mut [Session]) {
    let mut got = Vec::new();
    sh.mailboxes[shard].drain(|d| got.push(d));
    for d in got {
        if let Some(t) = &d.to {
            assert!(sessions[t.conn].push_broadcast(env, &d.frame, &d.packed, 1));
            continue;
        }
        let ch = d.channel.as_deref().expect("a channel message");
        let mut keys = Vec::new();
        env.host
            .channels
            .recipients(ch, d.history_mark(), &mut keys);
        for k in keys {
            assert!(sessions[k].push_broadcast(env, &d.frame, &d.packed, 1));
        }
    }
}

fn offsets(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "channel_message")
        .map(|f| f["offset"].as_u64().expect("an offset"))
        .collect()
}

#[test]
fn a_publication_racing_a_recovery_is_delivered_once_in_order() {
    let sh = with_history(100, 2);
    let mut env0 = sh.env(0);
    let mut env1 = sh.env(1);
    let mut p = sessions(&mut env0, 1);
    // On shard 1: a watcher (so shard 1 has interest: publications reach
    // its mailbox) and the session that will recover.
    let mut b = sessions(&mut env1, 2);
    let sub = |ch: &str| json!({"type": "subscribe", "channel": ch});
    let r = ask(&mut env1, &mut b[0], &sub("prices"));
    let epoch = r[0]["epoch"].as_str().expect("an epoch").to_owned();
    assert_eq!(r[0]["offset"], 0);
    let publish = |n: u64| json!({"type": "publish", "channel": "prices", "content": n});
    for n in 1..=3 {
        let r = ask(&mut env0, &mut p[0], &publish(n));
        assert_eq!(
            (r[0]["offset"].as_u64(), r[0]["epoch"].as_str()),
            (Some(n), Some(&*epoch))
        );
    }
    // 2 and 3 are still in shard 1's mailbox, not delivered, when b[1]
    // recovers from 1: they come in the replay and must not come again.
    let r = ask(
        &mut env1,
        &mut b[1],
        &json!({"type": "subscribe", "channel": "prices", "id": 7,
                "recover": {"offset": 1, "epoch": epoch}}),
    );
    assert_eq!(r[0]["type"], "subscribed");
    assert_eq!(
        (
            r[0]["recovered"].clone(),
            r[0]["offset"].clone(),
            r[0]["id"].clone()
        ),
        (json!(true), json!(3), json!(7))
    );
    assert_eq!(offsets(&r), [2, 3], "the replay follows subscribed at once");
    // One published after the read: live.
    ask(&mut env0, &mut p[0], &publish(4));
    fan_out(&sh, 1, &mut env1, &mut b);
    let live = take(&mut env1, &mut b[1]);
    assert_eq!(offsets(&live), [4], "2 and 3 not twice, 4 once");
    assert_eq!(live[0]["content"], 4);
    assert_eq!(offsets(&take(&mut env1, &mut b[0])), [1, 2, 3, 4]);
    // The publisher's own shard had no subscriber: nothing queued there.
    let mut none = 0;
    sh.mailboxes[0].drain(|_| none += 1);
    assert_eq!(none, 0);
}

#[test]
fn recovery_is_refused_past_the_history_and_on_another_epoch() {
    let sh = with_history(2, 1);
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 2);
    let mut epoch = String::new();
    for n in 1..=3 {
        let r = ask(
            &mut env,
            &mut c[0],
            &json!({"type": "publish", "channel": "h", "content": n}),
        );
        epoch = r[0]["epoch"].as_str().unwrap().to_owned();
    }
    let recover = |offset: u64, epoch: &str| json!({"type": "subscribe", "channel": "h", "recover": {"offset": offset, "epoch": epoch}});
    // 1 is gone (size 2): from 0 is refused, from 1 is granted.
    let r = ask(&mut env, &mut c[1], &recover(0, &epoch));
    assert_eq!((r.len(), r[0]["recovered"].clone()), (1, json!(false)));
    assert_eq!(r[0]["offset"], 3);
    ask(
        &mut env,
        &mut c[1],
        &json!({"type": "unsubscribe", "channel": "h"}),
    );
    let r = ask(&mut env, &mut c[1], &recover(1, &epoch));
    assert_eq!(r[0]["recovered"], true);
    assert_eq!(offsets(&r), [2, 3]);
    ask(
        &mut env,
        &mut c[1],
        &json!({"type": "unsubscribe", "channel": "h"}),
    );
    let r = ask(&mut env, &mut c[1], &recover(1, "another"));
    assert_eq!((r.len(), r[0]["recovered"].clone()), (1, json!(false)));
    // Already subscribed: nothing replayed (it would double).
    let r = ask(&mut env, &mut c[1], &recover(1, &epoch));
    assert_eq!((r.len(), r[0]["recovered"].clone()), (1, json!(false)));
    // The TTL (60 s): everything gone, the channel restarts under a new epoch.
    env.now_ms += 60_000;
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "h", "content": 4}),
    );
    assert_eq!(r[0]["offset"], 1);
    assert_ne!(r[0]["epoch"], json!(epoch));
}

#[test]
fn history_reads_and_bad_history_input_keep_the_connection() {
    let sh = with_history(10, 1);
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    for n in 1..=3 {
        ask(
            &mut env,
            &mut c[0],
            &json!({"type": "publish", "channel": "h", "content": {"n": n}}),
        );
    }
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "history", "channel": "h", "since": 1, "limit": 1, "id": "q"}),
    );
    assert_eq!(r[0]["type"], "history");
    assert_eq!(
        (r[0]["offset"].clone(), r[0]["id"].clone()),
        (json!(3), json!("q"))
    );
    let pubs = r[0]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 1);
    assert_eq!(pubs[0]["offset"], 2);
    assert_eq!(pubs[0]["content"], json!({"n": 2}));
    assert_eq!(pubs[0]["from"], "c0");
    assert!(pubs[0]["timestamp"].is_string());
    let bad = [
        json!({"type": "subscribe", "channel": "h", "recover": {"epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": "1", "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": -1, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": 1e300, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": 9007199254740992u64, "epoch": "e"}}),
        json!({"type": "subscribe", "channel": "h", "recover": {"offset": 1, "epoch": 5}}),
        json!({"type": "subscribe", "channel": "h", "recover": 1}),
        json!({"type": "history", "channel": "h", "limit": 0}),
        json!({"type": "history", "channel": "h", "limit": 1001}),
        json!({"type": "history", "channel": "h", "since": -1}),
        json!({"type": "history", "channel": ""}),
    ];
    for b in &bad {
        let r = ask(&mut env, &mut c[0], b);
        assert_eq!(r.len(), 1, "{b}");
        assert_eq!(r[0]["type"], "error", "{b}");
        let want = if b["channel"] == "" {
            "invalid_channel"
        } else {
            "invalid_field"
        };
        assert_eq!(code(&r[0]), want, "{b}");
        assert!(r[0]["message"].as_str().unwrap().len() > 10, "{b}");
    }
    assert_eq!(env.host.channels.subscription_count(), 0);
    let r = ask(&mut env, &mut c[0], &json!({"type": "ping"}));
    assert_eq!(r[0]["type"], "pong", "still connected");
}

#[test]
fn without_history_channels_carry_no_offsets_and_history_is_refused() {
    let sh = shared(ServerConfig::default());
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 1);
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "subscribe", "channel": "h", "recover": {"offset": 3, "epoch": "e"}}),
    );
    assert_eq!(r[0]["recovered"], false);
    assert!(r[0].get("offset").is_none() && r[0].get("epoch").is_none());
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "publish", "channel": "h", "content": 1}),
    );
    assert!(r[0].get("offset").is_none());
    let r = ask(
        &mut env,
        &mut c[0],
        &json!({"type": "history", "channel": "h", "id": 2}),
    );
    assert_eq!((code(&r[0]), r[0]["id"].clone()), ("no_history", json!(2)));
    assert_eq!(r[0]["request_type"], "history");
    let r = ask(&mut env, &mut c[0], &json!({"type": "ping"}));
    assert_eq!(r[0]["type"], "pong");
}

#[test]
fn a_live_subscriber_keeps_receiving_after_the_channel_restarts_under_a_new_epoch() {
    let sh = with_history(10, 1);
    let mut env = sh.env(0);
    let mut c = sessions(&mut env, 2);
    let publish = |n: u64| json!({"type": "publish", "channel": "h", "content": n});
    for n in 1..=3 {
        ask(&mut env, &mut c[0], &publish(n));
    }
    // Subscribed at offset 3: live delivery starts after it.
    let r = ask(
        &mut env,
        &mut c[1],
        &json!({"type": "subscribe", "channel": "h"}),
    );
    assert_eq!(r[0]["offset"], 3);
    fan_out(&sh, 0, &mut env, &mut c);
    assert!(offsets(&take(&mut env, &mut c[1])).is_empty());
    // Past the TTL the log is dropped; the next publication is offset 1 of
    // a new epoch, and the subscriber, still live, gets it.
    env.now_ms += 60_000;
    let r = ask(&mut env, &mut c[0], &publish(4));
    assert_eq!(r[0]["offset"], 1);
    fan_out(&sh, 0, &mut env, &mut c);
    let got = take(&mut env, &mut c[1]);
    assert_eq!(
        (offsets(&got), got[0]["content"].clone()),
        (vec![1], json!(4))
    );
}

/// What the backplane reader of a cluster node does with a history
/// publication it reads back, placed by Redis at `offset` of epoch `R`.
fn read_back(sh: &Shared, channel: &str, offset: u64, content: u64) {
    let mut plain = Vec::new();
    crate::protocol::message::write_response(&mut plain, "channel_message", None, |o| {
        o.str("channel", channel);
        o.u64("content", content);
        o.str("from", "elsewhere");
        o.str("timestamp", "t");
    });
    let (frame, body) = crate::cluster::entry::place(&plain, channel, offset, "R").unwrap();
    sh.router.deliver_history(channel, offset, "R", frame, body);
}

#[test]
fn in_a_cluster_redis_places_publications_and_recovery_races_them_exactly_once() {
    let mut cfg = ServerConfig::default();
    cfg.history.size = 100;
    let sh = cluster_node(cfg, 2);
    use crate::cluster::Host as _;
    sh.router.history_epoch("R");
    let mut env0 = sh.env(0);
    let mut env1 = sh.env(1);
    let mut p = sessions(&mut env0, 1);
    let mut b = sessions(&mut env1, 2);
    let r = ask(
        &mut env1,
        &mut b[0],
        &json!({"type": "subscribe", "channel": "prices"}),
    );
    assert_eq!(
        (r[0]["offset"].clone(), r[0]["epoch"].clone()),
        (json!(0), json!("R"))
    );
    // A publish here is not delivered here: it waits for Redis, and so
    // does its `published`.
    let r = ask(
        &mut env0,
        &mut p[0],
        &json!({"type": "publish", "channel": "prices", "content": 1, "id": 9}),
    );
    assert!(r.is_empty(), "published waits for its offset: {r:?}");
    let mut queued = 0;
    sh.mailboxes[1].drain(|_| queued += 1);
    assert_eq!(queued, 0, "nothing delivered before Redis placed it");
    // Redis answered the writer: the reply gets its offset and epoch.
    let reply = crate::cluster::history::Reply {
        shard: 0,
        conn: 0,
        client_id: "c0".into(),
        frame: {
            let mut f = Vec::new();
            crate::protocol::message::write_response(&mut f, "published", None, |o| {
                o.u64("recipients", 1);
            });
            bytes::Bytes::from(f)
        },
    };
    sh.router.placed(reply, Some((1, "R")));
    fan_out(&sh, 0, &mut env0, &mut p);
    let r = take(&mut env0, &mut p[0]);
    assert_eq!(
        (
            r[0]["type"].clone(),
            r[0]["offset"].clone(),
            r[0]["epoch"].clone()
        ),
        (json!("published"), json!(1), json!("R"))
    );
    // Read back: 1, 2, 3 (still in shard 1's mailbox when b[1] recovers).
    for n in 1..=3 {
        read_back(&sh, "prices", n, n);
    }
    let r = ask(
        &mut env1,
        &mut b[1],
        &json!({"type": "subscribe", "channel": "prices",
                "recover": {"offset": 1, "epoch": "R"}}),
    );
    assert_eq!(r[0]["recovered"], true, "{r:?}");
    assert_eq!(offsets(&r), [2, 3]);
    read_back(&sh, "prices", 3, 3); // read twice: kept and delivered once
    read_back(&sh, "prices", 4, 4);
    fan_out(&sh, 1, &mut env1, &mut b);
    assert_eq!(offsets(&take(&mut env1, &mut b[1])), [4]);
    assert_eq!(offsets(&take(&mut env1, &mut b[0])), [1, 2, 3, 4]);
}

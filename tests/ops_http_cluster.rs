//! The HTTP API on three nodes joined through a real redis-server: a
//! publish and a broadcast through one node's API reach the clients of
//! every node; a disconnect and an unsubscribe through one node's API act
//! on the clients of every node; `/v1/cluster` lists the nodes.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::hostile::serial;
use support::http::Api;
use support::redis::{available, Redis};
use support::server::{builder, spawn};
use support::wait::wait_until;
use support::wire::Client;

const KEY: &str = "cluster-key";
/// Heartbeats are 1 s apart: membership and subscriber counts show within this.
const MEMBERSHIP: Duration = Duration::from_secs(10);

fn node(redis: &Redis, id: &str) -> (ringcast::server::ServerHandle, Api) {
    let handle = spawn(
        builder(1)
            .backplane(Some(redis.url()))
            .node_id(Some(id.into()))
            .http_addr(Some("127.0.0.1:0".parse().unwrap()))
            .api_key(Some(KEY.into())),
    );
    let api = Api {
        addr: handle.http_addr().unwrap(),
        key: Some(KEY.into()),
    };
    (handle, api)
}

fn subscribe(c: &mut Client, ch: &str) {
    let v = c.request(&json!({"type": "subscribe", "channel": ch}));
    assert_eq!(v["type"], "subscribed", "{v}");
}

#[test]
fn writes_through_one_node_act_on_every_node() {
    if !available("writes_through_one_node_act_on_every_node") {
        return;
    }
    let _one_at_a_time = serial();
    let redis = Redis::start();
    let nodes: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| node(&redis, id))
        .collect();
    let api = &nodes[0].1;
    // On every node: a subscriber of "room" and of "side" (S), and a
    // client subscribed to nothing (L).
    let mut subs: Vec<Client> = nodes
        .iter()
        .map(|(h, _)| Client::connect(h.local_addr()))
        .collect();
    for s in subs.iter_mut() {
        subscribe(s, "room");
        subscribe(s, "side");
    }
    let mut lists: Vec<Client> = nodes
        .iter()
        .map(|(h, _)| Client::connect(h.local_addr()))
        .collect();
    wait_until(MEMBERSHIP, "node 1 to see the others' clients", || {
        let v = api.get_ok("/v1/cluster");
        v["nodes"].as_array().unwrap().len() == 3
            && v["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["clients"] == 2)
    });
    let v = api.get_ok("/v1/cluster");
    assert_eq!(
        (v["node"].as_str(), v["backplane"].as_str()),
        (Some("n1"), Some("connected")),
        "{v}"
    );
    let ids: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    for n in &v["nodes"].as_array().unwrap()[1..] {
        assert_eq!(n["self"], false);
        assert!(n["heartbeat_age_ms"].as_u64().unwrap() < 5000, "{n}");
    }

    // Publish and broadcast through node 1's API.
    let v = api.post_ok("/v1/publish", &json!({"channel": "room", "content": "all"}));
    assert_eq!(v["recipients"], 3, "one here, two from the heartbeats: {v}");
    for s in subs.iter_mut() {
        let m = s.recv();
        assert_eq!(
            (
                m["type"].as_str(),
                m["from"].as_str(),
                m["content"].as_str()
            ),
            (Some("channel_message"), Some("api"), Some("all")),
            "{m}"
        );
    }
    let v = api.post_ok("/v1/broadcast", &json!({"content": "everyone"}));
    assert_eq!(v["recipients"], 6, "{v}");
    for c in subs.iter_mut().chain(lists.iter_mut()) {
        let m = c.recv();
        assert_eq!(
            (m["type"].as_str(), m["from"].as_str()),
            (Some("broadcast_message"), Some("api")),
            "{m}"
        );
    }

    // Unsubscribe node 3's subscriber from "side", through node 1.
    let s3 = subs[2].client_id();
    let v = api.post_ok(
        "/v1/unsubscribe",
        &json!({"client_id": s3, "channel": "side"}),
    );
    assert_eq!(v, json!({"unsubscribed": 0}), "not on node 1");
    wait_until(MEMBERSHIP, "node 3 to drop the subscription", || {
        let l = nodes[2]
            .1
            .get_ok(&format!("/v1/connections?client_id={s3}&subs=1"));
        l["connections"][0]["subscriptions"] == json!(["room"])
    });
    // Node 3 told its client, as a local unsubscribe does.
    let told = subs[2].recv();
    assert_eq!(
        (
            told["type"].clone(),
            told["channel"].clone(),
            told["reason"].clone()
        ),
        (json!("unsubscribed"), json!("side"), json!("operator")),
        "{told}"
    );
    api.post_ok("/v1/publish", &json!({"channel": "side", "content": 1}));
    for s in subs.iter_mut().take(2) {
        assert_eq!(s.recv()["channel"], "side");
    }
    subs[2].expect_silence(Duration::from_millis(300));

    // Disconnect node 2's listener through node 1.
    let l2 = lists[1].client_id();
    let v = api.post_ok("/v1/disconnect", &json!({"client_id": l2, "reason": "bye"}));
    assert_eq!(v, json!({"disconnected": 0}), "not on node 1");
    let last = lists[1].read_until_closed(Duration::from_secs(5));
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(
        (last[0]["code"].as_str(), last[0]["message"].as_str()),
        (Some("kicked"), Some("bye"))
    );
    wait_until(
        Duration::from_secs(5),
        "node 2 to list it as kicked",
        || {
            let closed: Value = nodes[1]
                .1
                .get_ok(&format!("/v1/connections?state=closed&client_id={l2}"));
            closed["connections"][0]["reason"] == "kicked"
        },
    );
    // The others are untouched.
    for c in lists.iter_mut().step_by(2).chain(subs.iter_mut().take(1)) {
        assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
    }
    let v = api.get_ok("/v1/cluster");
    assert_eq!(v["bad_entries"], 0, "{v}");
    for (h, _) in nodes {
        h.shutdown();
    }
}

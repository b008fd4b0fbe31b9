//! The HTTP API (`http_addr`, docs/OPERATIONS.md) over real HTTP against a
//! real server: every endpoint, filter, page and sort order, the closed
//! connections and their reasons, and the JSON shapes tools rely on.

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;
use support::http::Api;
use support::server::{builder, spawn};
use support::wait::{poll, wait_until};
use support::wire::{frame_bytes, is_timestamp, keys, Client};

const KEY: &str = "test-key-0123";

/// A server with the HTTP listener on loopback and the key set.
fn start(
    shards: usize,
    b: impl FnOnce(ringcast::server::ServerBuilder) -> ringcast::server::ServerBuilder,
) -> (ringcast::server::ServerHandle, Api) {
    let handle = spawn(b(builder(shards)
        .http_addr(Some("127.0.0.1:0".parse().unwrap()))
        .api_key(Some(KEY.into()))));
    let api = Api {
        addr: handle.http_addr().expect("HTTP listener on"),
        key: Some(KEY.into()),
    };
    (handle, api)
}

fn subscribe(c: &mut Client, channel: &str) {
    let v = c.request(&json!({"type": "subscribe", "channel": channel}));
    assert_eq!(v["type"], "subscribed", "{v}");
}

/// The open connections' entries by client id (waits until `n` are listed).
fn listed(api: &Api, query: &str, n: usize) -> Vec<Value> {
    poll(Duration::from_secs(5), || {
        let v = api.get_ok(&format!("/v1/connections?{query}"));
        let list = v["connections"].as_array().unwrap().clone();
        (list.len() == n).then_some(list)
    })
    .unwrap_or_else(|| panic!("{n} connections never listed for {query}"))
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|c| c["client_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn stats_is_what_get_stats_answers() {
    let (handle, api) = start(2, |b| b);
    let mut c = Client::connect(handle.local_addr());
    let over_tcp = c.stats();
    let v = api.get_ok("/v1/stats");
    assert_eq!(v["type"], "server_stats");
    let want: HashSet<&str> = keys(&over_tcp).into_iter().collect();
    let got: HashSet<&str> = keys(&v).into_iter().collect();
    assert_eq!(got, want, "the same fields as get_stats");
    assert_eq!(v["connected_clients"], 1);
    assert_eq!(v["io_backend"], over_tcp["io_backend"]);
    handle.shutdown();
}

#[test]
fn connections_have_every_field_and_filter_page_and_sort() {
    let (handle, api) = start(2, |b| b);
    let addr = handle.local_addr();
    let mut cs = Client::connect_many(addr, 5);
    // Different traffic per client, to sort on: client i sends i+1 pings
    // and holds i subscriptions.
    for (i, c) in cs.iter_mut().enumerate() {
        for _ in 0..=i {
            assert_eq!(c.request(&json!({"type": "ping"}))["type"], "pong");
        }
        for s in 0..i {
            subscribe(c, &format!("room.{s}"));
        }
    }
    let all = listed(&api, "", 5);
    let v = api.get_ok("/v1/connections");
    assert_eq!(
        keys(&v).into_iter().collect::<HashSet<_>>(),
        HashSet::from(["node", "total", "offset", "limit", "connections"])
    );
    assert_eq!(
        (
            v["total"].as_u64(),
            v["offset"].as_u64(),
            v["limit"].as_u64()
        ),
        (Some(5), Some(0), Some(256))
    );
    let fields = [
        "client_id",
        "addr",
        "user",
        "shard",
        "tls",
        "codec",
        "connected_at",
        "last_activity",
        "idle_ms",
        "subscriptions",
        "msgs_in",
        "msgs_out",
        "bytes_in",
        "bytes_out",
        "pending_bytes",
    ];
    for c in &all {
        assert_eq!(
            keys(c).into_iter().collect::<HashSet<_>>(),
            HashSet::from(fields),
            "{c}"
        );
        assert!(is_timestamp(c["connected_at"].as_str().unwrap()), "{c}");
        assert!(is_timestamp(c["last_activity"].as_str().unwrap()), "{c}");
        assert_eq!(c["user"], Value::Null);
        assert_eq!(c["tls"], false);
        assert_eq!(c["codec"], Value::Null);
        assert!(c["shard"].as_u64().unwrap() < 2);
        assert_eq!(c["addr"], c["client_id"]);
        assert_eq!(c["pending_bytes"], 0);
    }
    // Each client's own figures: i+1 pings and i subscribes in, as many
    // answers out, bytes both ways.
    let clients: Vec<String> = cs.iter().map(Client::client_id).collect();
    for (i, id) in clients.iter().enumerate() {
        let c = all
            .iter()
            .find(|c| c["client_id"] == id.as_str())
            .expect("listed");
        let frames = (2 * i + 1) as u64;
        assert_eq!(c["msgs_in"], frames, "{c}");
        assert_eq!(c["msgs_out"], frames, "{c}");
        assert_eq!(c["subscriptions"], i as u64, "{c}");
        // A ping frame is 19 bytes, a subscribe more.
        assert!(c["bytes_in"].as_u64().unwrap() >= 19 * frames, "{c}");
        assert!(c["bytes_out"].as_u64().unwrap() > 20 * frames, "{c}");
    }
    // Sorts: msgs_in descending is the clients in reverse; ascending, in order.
    let by_in = listed(&api, "sort=msgs_in", 5);
    assert_eq!(
        ids(&by_in),
        clients.iter().rev().cloned().collect::<Vec<_>>()
    );
    let by_in_asc = listed(&api, "sort=msgs_in&order=asc", 5);
    assert_eq!(ids(&by_in_asc), clients);
    let by_subs = listed(&api, "sort=subscriptions", 5);
    assert_eq!(by_subs[0]["subscriptions"], 4);
    for s in ["cid", "idle", "pending", "msgs_out", "bytes_out", "uptime"] {
        assert_eq!(listed(&api, &format!("sort={s}"), 5).len(), 5, "sort={s}");
    }
    // cid: the order of connection (ascending by default).
    assert_eq!(ids(&listed(&api, "sort=cid", 5)), clients);
    // Paging.
    let p = api.get_ok("/v1/connections?sort=msgs_in&order=asc&offset=1&limit=2");
    assert_eq!(
        (
            p["total"].as_u64(),
            p["offset"].as_u64(),
            p["limit"].as_u64()
        ),
        (Some(5), Some(1), Some(2))
    );
    assert_eq!(
        ids(p["connections"].as_array().unwrap()),
        clients[1..3].to_vec()
    );
    assert_eq!(
        api.get_ok("/v1/connections?offset=9")["connections"],
        json!([])
    );
    assert_eq!(api.get_ok("/v1/connections?limit=5000")["limit"], 1024);
    // Filters.
    let in_room3 = listed(&api, "channel=room.3", 1);
    assert_eq!(ids(&in_room3), vec![clients[4].clone()]);
    assert_eq!(listed(&api, "channel=room.0", 4).len(), 4);
    let one = listed(&api, &format!("client_id={}", clients[2]), 1);
    assert_eq!(ids(&one), vec![clients[2].clone()]);
    assert_eq!(listed(&api, "user=alice", 0).len(), 0);
    let with_subs = listed(&api, &format!("client_id={}&subs=1", clients[2]), 1);
    let mut subs: Vec<&str> = with_subs[0]["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    subs.sort();
    assert_eq!(subs, ["room.0", "room.1"]);
    // Bad parameters are refused, naming the choices.
    for bad in [
        "sort=nope",
        "order=up",
        "state=gone",
        "limit=-1",
        "offset=x",
        "subs=2",
    ] {
        let a = api.get(&format!("/v1/connections?{bad}"));
        assert_eq!(
            (a.status, a.code().as_str()),
            (400, "invalid_query"),
            "{bad}: {}",
            a.body
        );
    }
    // Idle time grows while a client is quiet.
    std::thread::sleep(Duration::from_millis(1100));
    let quiet = listed(&api, &format!("client_id={}", clients[0]), 1);
    assert!(
        quiet[0]["idle_ms"].as_u64().unwrap() >= 1000,
        "{}",
        quiet[0]
    );
    drop(cs);
    handle.shutdown();
}

/// Waits until the closed list for `client_id` holds one entry; returns it.
fn closed_entry(api: &Api, client_id: &str) -> Value {
    poll(Duration::from_secs(10), || {
        let v = api.get_ok(&format!(
            "/v1/connections?state=closed&client_id={client_id}"
        ));
        v["connections"].as_array().unwrap().first().cloned()
    })
    .unwrap_or_else(|| panic!("{client_id} never listed as closed"))
}

#[test]
fn closed_connections_are_kept_with_their_reason() {
    let (handle, api) = start(2, |b| b.idle_timeout_secs(1).max_frame_bytes(1024));
    let addr = handle.local_addr();
    // peer_closed: the client goes.
    let c = Client::connect(addr);
    let gone = c.client_id();
    drop(c);
    // A framing error: a header over max_frame_bytes.
    let mut big = Client::connect(addr);
    let big_id = big.client_id();
    big.send_raw(&frame_bytes(&vec![b' '; 2048]));
    big.expect_error("frame_too_large");
    // idle_timeout: sends nothing for a second.
    let idle = Client::connect(addr);
    let idle_id = idle.client_id();
    // kicked: through the API.
    let mut kicked = Client::connect(addr);
    let kicked_id = kicked.client_id();
    assert_eq!(kicked.request(&json!({"type": "ping"}))["type"], "pong");
    let v = api.post_ok(
        "/v1/disconnect",
        &json!({"client_id": kicked_id, "reason": "maintenance"}),
    );
    assert_eq!(v, json!({"disconnected": 1}));
    let last = kicked.read_until_closed(Duration::from_secs(5));
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(
        (last[0]["code"].as_str(), last[0]["message"].as_str()),
        (Some("kicked"), Some("maintenance"))
    );

    for (id, reason) in [
        (&gone, "peer_closed"),
        (&big_id, "frame_too_large"),
        (&idle_id, "idle_timeout"),
        (&kicked_id, "kicked"),
    ] {
        let c = closed_entry(&api, id);
        assert_eq!(c["reason"], reason, "{c}");
        assert!(is_timestamp(c["closed_at"].as_str().unwrap()), "{c}");
        assert!(c["closed_at"].as_str() >= c["connected_at"].as_str(), "{c}");
    }
    drop(idle);
    // state=all holds the open ones and the closed ones; open, no closed one.
    let mut live = Client::connect(addr);
    assert_eq!(live.request(&json!({"type": "ping"}))["type"], "pong");
    let all = api.get_ok("/v1/connections?state=all&limit=1024");
    let all_ids: HashSet<String> = ids(all["connections"].as_array().unwrap())
        .into_iter()
        .collect();
    assert!(
        all_ids.contains(&live.client_id()) && all_ids.contains(&kicked_id),
        "{all}"
    );
    let open = api.get_ok("/v1/connections");
    assert!(open["connections"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c.get("reason").is_none()));
    handle.shutdown();
}

#[test]
fn an_unauthorized_client_is_listed_as_such() {
    let (handle, api) = start(1, |b| b.auth_token(Some("tok".into())));
    let mut c = Client::connect(handle.local_addr());
    let id = c.client_id();
    c.send(&json!({"type": "ping"}));
    c.expect_error("unauthorized");
    assert_eq!(closed_entry(&api, &id)["reason"], "unauthorized");
    handle.shutdown();
}

#[test]
fn channels_are_listed_with_their_figures_and_history_position() {
    let (handle, api) = start(2, |b| b.history_size(10));
    let addr = handle.local_addr();
    let mut subs = Client::connect_many(addr, 3);
    subscribe(&mut subs[0], "orders.eu");
    subscribe(&mut subs[1], "orders.eu");
    subscribe(&mut subs[2], "orders.us");
    subscribe(&mut subs[2], "news");
    let mut publisher = Client::connect(addr);
    for _ in 0..3 {
        let v =
            publisher.request(&json!({"type": "publish", "channel": "orders.eu", "content": 1}));
        assert_eq!(v["type"], "published", "{v}");
    }
    for s in subs.iter_mut().take(2) {
        for _ in 0..3 {
            assert_eq!(s.recv()["type"], "channel_message");
        }
    }
    let v = poll(Duration::from_secs(5), || {
        let v = api.get_ok("/v1/channels");
        (v["channels"][0]["deliveries"] == 6).then_some(v)
    })
    .expect("deliveries counted");
    assert_eq!(
        (
            v["total"].as_u64(),
            v["offset"].as_u64(),
            v["limit"].as_u64()
        ),
        (Some(3), Some(0), Some(256))
    );
    let eu = &v["channels"][0];
    assert_eq!(eu["channel"], "orders.eu", "most subscribers first: {v}");
    assert_eq!(
        (
            eu["subscribers"].as_u64(),
            eu["publishes"].as_u64(),
            eu["deliveries"].as_u64()
        ),
        (Some(2), Some(3), Some(6))
    );
    assert_eq!(eu["offset"], 3, "the history offset: {eu}");
    assert!(eu["epoch"].is_string(), "{eu}");
    // Subscribing started the channel's history: offset 0, nothing yet.
    let news = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == "news")
        .unwrap();
    assert_eq!(
        (news["offset"].as_u64(), news["publishes"].as_u64()),
        (Some(0), Some(0)),
        "{news}"
    );
    // pattern, sort, order, paging.
    let orders = api.get_ok("/v1/channels?pattern=orders.*&sort=subscribers&order=asc");
    let names: Vec<&str> = orders["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders.us", "orders.eu"]);
    let top = api.get_ok("/v1/channels?sort=deliveries&limit=1");
    assert_eq!(
        (
            top["total"].as_u64(),
            top["channels"][0]["channel"].as_str()
        ),
        (Some(3), Some("orders.eu"))
    );
    let page2 = api.get_ok("/v1/channels?sort=publishes&offset=1&limit=5");
    assert_eq!(page2["channels"].as_array().unwrap().len(), 2);
    let a = api.get("/v1/channels?sort=bytes");
    assert_eq!((a.status, a.code().as_str()), (400, "invalid_query"));
    handle.shutdown();
}

#[test]
fn publish_and_broadcast_reach_clients_from_api() {
    let (handle, api) = start(2, |b| b);
    let addr = handle.local_addr();
    let mut subs = Client::connect_many(addr, 3);
    subscribe(&mut subs[0], "news");
    subscribe(&mut subs[1], "news");
    let v = api.post_ok(
        "/v1/publish",
        &json!({"channel": "news", "content": {"headline": "hi"}}),
    );
    assert_eq!(
        v,
        json!({"recipients": 2}),
        "no offset or epoch without history"
    );
    for s in subs.iter_mut().take(2) {
        let m = s.recv();
        assert_eq!(m["type"], "channel_message");
        assert_eq!(m["channel"], "news");
        assert_eq!(m["from"], "api");
        assert_eq!(m["content"], json!({"headline": "hi"}));
        assert!(is_timestamp(m["timestamp"].as_str().unwrap()), "{m}");
    }
    subs[2].expect_silence(Duration::from_millis(200));
    let v = api.post_ok("/v1/publish", &json!({"channel": "empty", "content": 1}));
    assert_eq!(v["recipients"], 0);

    let v = api.post_ok("/v1/broadcast", &json!({"content": [1, 2, 3]}));
    assert_eq!(v, json!({"recipients": 3}));
    for s in subs.iter_mut() {
        let m = s.recv();
        assert_eq!(
            (m["type"].as_str(), m["from"].as_str()),
            (Some("broadcast_message"), Some("api")),
            "{m}"
        );
        assert_eq!(m["content"], json!([1, 2, 3]));
    }
    handle.shutdown();
}

#[test]
fn publish_on_a_history_channel_answers_its_offset_and_epoch() {
    let (handle, api) = start(1, |b| b.history_size(5));
    let mut sub = Client::connect(handle.local_addr());
    subscribe(&mut sub, "log");
    let first = api.post_ok("/v1/publish", &json!({"channel": "log", "content": "a"}));
    let second = api.post_ok("/v1/publish", &json!({"channel": "log", "content": "b"}));
    assert_eq!(
        (first["recipients"].as_u64(), first["offset"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(second["offset"], 2);
    assert!(first["epoch"].is_string() && first["epoch"] == second["epoch"]);
    for n in 1..=2u64 {
        let m = sub.recv();
        assert_eq!(
            (m["offset"].as_u64(), m["from"].as_str()),
            (Some(n), Some("api")),
            "{m}"
        );
    }
    let h = sub.request(&json!({"type": "history", "channel": "log"}));
    assert_eq!(h["publications"].as_array().map(Vec::len), Some(2), "{h}");
    assert_eq!(h["publications"][1]["from"], "api");
    handle.shutdown();
}

#[test]
fn disconnect_and_unsubscribe_by_client_id() {
    let (handle, api) = start(2, |b| b);
    let addr = handle.local_addr();
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    subscribe(&mut a, "chat");
    subscribe(&mut a, "other");
    subscribe(&mut b, "chat");
    let v = api.post_ok(
        "/v1/unsubscribe",
        &json!({"client_id": a.client_id(), "channel": "chat"}),
    );
    assert_eq!(v, json!({"unsubscribed": 1}));
    // The client is told, as when a token refresh drops a subscription.
    assert_eq!(
        a.recv(),
        json!({"type": "unsubscribed", "channel": "chat", "subscriptions": 1, "reason": "operator"})
    );
    let v = api.post_ok(
        "/v1/unsubscribe",
        &json!({"client_id": a.client_id(), "channel": "chat"}),
    );
    assert_eq!(v, json!({"unsubscribed": 0}), "already gone");
    assert_eq!(
        api.post_ok("/v1/publish", &json!({"channel": "chat", "content": 1}))["recipients"],
        1
    );
    assert_eq!(b.recv()["channel"], "chat");
    a.expect_silence(Duration::from_millis(200));
    let listed = api.get_ok(&format!(
        "/v1/connections?client_id={}&subs=1",
        a.client_id()
    ));
    assert_eq!(listed["connections"][0]["subscriptions"], json!(["other"]));
    // Disconnect: default reason; an unknown client is 0, not an error.
    let v = api.post_ok("/v1/disconnect", &json!({"client_id": b.client_id()}));
    assert_eq!(v, json!({"disconnected": 1}));
    let last = b.read_until_closed(Duration::from_secs(5));
    assert_eq!(last[0]["code"], "kicked");
    assert_eq!(last[0]["message"], "disconnected by an operator");
    let v = api.post_ok("/v1/disconnect", &json!({"client_id": "10.9.9.9:1"}));
    assert_eq!(v, json!({"disconnected": 0}));
    // By user: these connections have none (no JWT), so none match.
    assert_eq!(
        api.post_ok("/v1/disconnect", &json!({"user": "alice"})),
        json!({"disconnected": 0})
    );
    assert_eq!(
        api.post_ok("/v1/unsubscribe", &json!({"user": "alice", "channel": "x"})),
        json!({"unsubscribed": 0})
    );
    assert_eq!(
        a.request(&json!({"type": "ping"}))["type"],
        "pong",
        "the other client is untouched"
    );
    wait_until(Duration::from_secs(5), "b is gone from the listing", || {
        api.get_ok("/v1/connections")["total"] == 1
    });
    handle.shutdown();
}

#[test]
fn cluster_without_a_backplane_is_this_node_alone() {
    let (handle, api) = start(1, |b| b.node_id(Some("solo".into())));
    let _c = Client::connect(handle.local_addr());
    wait_until(Duration::from_secs(5), "one client counted", || {
        api.get_ok("/v1/cluster")["nodes"][0]["clients"] == 1
    });
    let v = api.get_ok("/v1/cluster");
    assert_eq!(
        v,
        json!({
            "node": "solo",
            "nodes": [{"id": "solo", "clients": 1, "heartbeat_age_ms": 0, "self": true}],
            "backplane": "none",
            "buffered_bytes": 0,
            "bad_entries": 0,
        })
    );
    handle.shutdown();
}

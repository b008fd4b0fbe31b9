//! The session's boundary is real: a `Session` built from the public API
//! alone, with a host written here (no server, no router, no sockets),
//! fed bytes and a simulated clock. What it asks of the host and what it
//! sends back are checked.

use bytes::Bytes;
use ringcast::protocol::{encode_frame, JsonValue};
use ringcast::session::counters::ShardCounters;
use ringcast::session::{
    Action, ConnId, Env, Handler, Host, Phase, Routed, Session, SessionConfig, SubscribeError,
    Transport,
};
use serde_json::{json, Value};
use std::collections::BTreeSet;

/// A host that remembers what it was asked.
#[derive(Default)]
struct Recorder {
    subscribed: BTreeSet<(ConnId, String)>,
    published: Vec<(ConnId, String, Value)>,
    broadcasts: Vec<Value>,
    dropped: Vec<ConnId>,
    /// Refuse publishes as if the backplane were down.
    backplane_down: bool,
}

fn payload(frame: &Bytes) -> Value {
    serde_json::from_slice(&frame[4..]).unwrap()
}

impl Host for Recorder {
    fn broadcast(&mut self, _from: ConnId, frame: Bytes) -> Routed {
        self.broadcasts.push(payload(&frame));
        Routed::Recipients(7)
    }
    fn publish(&mut self, from: ConnId, channel: &str, frame: Bytes) -> Routed {
        if self.backplane_down {
            return Routed::LocalOnly;
        }
        self.published.push((from, channel.into(), payload(&frame)));
        Routed::Recipients(3)
    }
    fn subscribe(&mut self, conn: ConnId, channel: &str) -> Result<usize, SubscribeError> {
        if channel == "full" {
            return Err(SubscribeError::TooMany);
        }
        self.subscribed.insert((conn, channel.into()));
        Ok(self.subscribed.iter().filter(|(c, _)| *c == conn).count())
    }
    fn unsubscribe(&mut self, conn: ConnId, channel: &str) -> usize {
        self.subscribed.remove(&(conn, channel.into()));
        self.subscribed.iter().filter(|(c, _)| *c == conn).count()
    }
    fn drop_subscriptions(&mut self, conn: ConnId) {
        self.dropped.push(conn);
        self.subscribed.retain(|(c, _)| *c != conn);
    }
    fn write_stats(
        &mut self,
        out: &mut Vec<u8>,
        _id: Option<&JsonValue<'_, '_>>,
        now: &str,
        _: u64,
    ) {
        let v = json!({"type": "server_stats", "from_host": true, "current_time": now});
        encode_frame(out, v.to_string().as_bytes());
    }
    fn handler(&self, _type_name: &str) -> Option<&dyn Handler> {
        None
    }
}

fn frame(v: Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, v.to_string().as_bytes());
    out
}

/// Everything the session wants to send, reported sent, as JSON.
fn drain(s: &mut Session, env: &mut Env<'_, Recorder>) -> Vec<Value> {
    let mut bytes = Vec::new();
    while let Some(batch) = s.poll_transmit(env) {
        let b: Vec<u8> = batch.slices().flatten().copied().collect();
        s.handle_sent(env, batch, Ok(b.len()));
        bytes.extend(b);
    }
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 4 {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push(serde_json::from_slice(&rest[4..4 + n]).unwrap());
        rest = &rest[4 + n..];
    }
    out
}

#[test]
fn a_session_built_from_the_public_api_asks_its_host_and_answers() {
    let counters = ShardCounters::default();
    let config = SessionConfig {
        idle_timeout_secs: 5,
        ..SessionConfig::default()
    };
    let mut env = Env::new(config, 0, &counters, Recorder::default(), false);
    env.now_ms = 1_700_000_000_000;
    env.now_mono_ms = 0;
    let mut s = Session::new(&mut env, 42, "10.0.0.1:5000".into(), None, Transport::Plain);
    assert!(s.is_established());

    let mut input = Vec::new();
    for v in [
        json!({"type": "subscribe", "channel": "news", "id": 1}),
        json!({"type": "subscribe", "channel": "full", "id": 2}),
        json!({"type": "publish", "channel": "news", "content": {"n": 1}, "id": 3}),
        json!({"type": "broadcast", "content": "hi", "id": 4}),
        json!({"type": "get_stats", "id": 5}),
        json!({"type": "unsubscribe", "channel": "news", "id": 6}),
    ] {
        input.extend(frame(v));
    }
    // Split mid-frame: the session keeps the rest and answers in order.
    let (a, b) = input.split_at_mut(37);
    assert_eq!(s.handle_data(&mut env, a), 0);
    assert_eq!(s.handle_data(&mut env, b), 6, "six requests handled");
    let out = drain(&mut s, &mut env);
    let types: Vec<&str> = out.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        [
            "subscribed",
            "error",
            "published",
            "broadcast_sent",
            "server_stats",
            "unsubscribed"
        ]
    );
    assert_eq!(out[0]["subscriptions"], 1);
    assert_eq!(out[1]["code"], "too_many_subscriptions");
    assert_eq!(out[2]["recipients"], 3, "the host's count");
    assert_eq!(out[3]["recipients"], 7);
    assert_eq!(
        out[4]["from_host"], true,
        "get_stats is the host's snapshot"
    );
    assert_eq!(out[5]["subscriptions"], 0);
    // The host got the frames, serialised once, with the sender's id.
    let (from, ch, msg) = &env.host.published[0];
    assert_eq!((*from, ch.as_str()), (42, "news"));
    assert_eq!(msg["type"], "channel_message");
    assert_eq!(msg["from"], "10.0.0.1:5000");
    assert_eq!(msg["content"], json!({"n": 1}));
    assert_eq!(env.host.broadcasts[0]["content"], "hi");

    // A refusal from the host is the sender's error; the connection stays.
    env.host.backplane_down = true;
    let mut b = frame(json!({"type": "publish", "channel": "news", "content": 2, "id": 7}));
    s.handle_data(&mut env, &mut b);
    let out = drain(&mut s, &mut env);
    assert_eq!(out[0]["code"], "backplane_unavailable");
    assert_eq!(s.phase(), Phase::Open);

    // The clock is the caller's: idle for 5 s of simulated time, it closes,
    // and its subscriptions are dropped through the host.
    env.now_mono_ms += 4_999;
    assert!(!s.handle_tick(&mut env));
    env.now_mono_ms += 1;
    let mut sub = frame(json!({"type": "subscribe", "channel": "x"}));
    env.now_mono_ms -= 1;
    s.handle_data(&mut env, &mut sub); // activity at 4,999 ms
    drain(&mut s, &mut env);
    env.now_mono_ms += 5_000;
    assert!(s.handle_tick(&mut env), "idle past the timeout");
    assert_eq!(s.poll_action(), Some(Action::Close));
    assert_eq!(env.host.dropped, [42]);
    assert!(env.host.subscribed.is_empty());
    assert_eq!(
        counters
            .connected
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no longer counted"
    );
}

//! Control entries: an operator's disconnect or unsubscribe
//! (`POST /v1/disconnect`, `/v1/unsubscribe`), written to the stream so
//! that every node acts on its own clients.
//!
//! A control entry has the fields every entry has (`n` node, `s`
//! sequence) and, instead of a frame `f`:
//!
//! | field | value |
//! |---|---|
//! | `k` | `disconnect` or `unsubscribe` |
//! | `t` | `client_id` or `user`: what `v` names |
//! | `v` | the client id or the user |
//! | `r` | a disconnect's reason (the `kicked` error's message) |
//! | `c` | an unsubscribe's channel |
//!
//! Like a message entry ([`super::entry`]), it is checked field by field
//! before anything acts on it: a field missing, unknown or of the wrong
//! kind, a value empty or over [`MAX_VALUE_BYTES`], or a channel that is
//! not a channel makes it a [`BadEntry`], skipped and counted. A node of
//! an older version counts these entries as bad too (they have no `f`).

use super::entry::BadEntry;
use crate::protocol::message::check_channel;
use std::collections::HashMap;
use std::sync::Arc;

/// Longest client id, user or reason a control entry may carry: far over
/// any real one (an "ip:port" is at most 47 bytes), small enough that an
/// entry cannot carry a payload in disguise.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Whom a disconnect or unsubscribe is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The connection with this `client_id`.
    ClientId(Arc<str>),
    /// Every connection of this user.
    User(Arc<str>),
}

impl Target {
    /// The `t` and `v` fields.
    fn fields(&self) -> (&'static str, &str) {
        match self {
            Target::ClientId(v) => ("client_id", v),
            Target::User(v) => ("user", v),
        }
    }
}

/// What an operator asked every node to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOp {
    /// Cut the target's connections with `kicked` and this reason.
    Disconnect {
        /// Whom.
        target: Target,
        /// The `kicked` error's message.
        reason: Arc<str>,
    },
    /// Unsubscribe the target's connections from the channel.
    Unsubscribe {
        /// Whom.
        target: Target,
        /// The channel.
        channel: Arc<str>,
    },
}

impl ControlOp {
    /// The entry's fields after `n` and `s`, as (name, value) pairs.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        match self {
            ControlOp::Disconnect { target, reason } => {
                let (t, v) = target.fields();
                vec![("k", "disconnect"), ("t", t), ("v", v), ("r", reason)]
            }
            ControlOp::Unsubscribe { target, channel } => {
                let (t, v) = target.fields();
                vec![("k", "unsubscribe"), ("t", t), ("v", v), ("c", channel)]
            }
        }
    }

    /// Bytes it takes in the backplane's buffer.
    pub fn size(&self) -> usize {
        self.fields().iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// A well-formed control entry from another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlEntry {
    /// The node that wrote it.
    pub node: String,
    /// Its sequence number there.
    pub seq: u64,
    /// What to do.
    pub op: ControlOp,
}

/// Whether an entry's fields are a control entry's (it has `k`).
pub fn is_control(fields: &HashMap<String, redis::Value>) -> bool {
    fields.contains_key("k")
}

/// Decodes and checks a control entry (see the module doc).
pub fn decode(fields: &HashMap<String, redis::Value>) -> Result<ControlEntry, BadEntry> {
    let get = |k: &'static str| -> Result<String, BadEntry> {
        fields
            .get(k)
            .and_then(|v| redis::from_redis_value_ref::<Vec<u8>>(v).ok())
            .ok_or(BadEntry::Missing(k))
            .and_then(|b| String::from_utf8(b).map_err(|_| BadEntry::Control("not UTF-8")))
    };
    let node = get("n").map_err(|_| BadEntry::Node)?;
    if node.is_empty() {
        return Err(BadEntry::Node);
    }
    let seq = get("s")?.parse::<u64>().map_err(|_| BadEntry::Seq)?;
    let kind = get("k")?;
    let value = get("v")?;
    if value.is_empty() || value.len() > MAX_VALUE_BYTES {
        return Err(BadEntry::Control("target empty or too long"));
    }
    let value: Arc<str> = Arc::from(value);
    let target = match get("t")?.as_str() {
        "client_id" => Target::ClientId(value),
        "user" => Target::User(value),
        _ => return Err(BadEntry::Control("unknown target kind")),
    };
    let (op, allowed): (ControlOp, [&str; 6]) = match kind.as_str() {
        "disconnect" => {
            let reason = get("r")?;
            if reason.len() > MAX_VALUE_BYTES {
                return Err(BadEntry::Control("reason too long"));
            }
            let op = ControlOp::Disconnect {
                target,
                reason: Arc::from(reason),
            };
            (op, ["n", "s", "k", "t", "v", "r"])
        }
        "unsubscribe" => {
            let channel = get("c")?;
            check_channel(&channel).map_err(|_| BadEntry::Channel)?;
            let op = ControlOp::Unsubscribe {
                target,
                channel: Arc::from(channel),
            };
            (op, ["n", "s", "k", "t", "v", "c"])
        }
        _ => return Err(BadEntry::Control("unknown control kind")),
    };
    if fields.keys().any(|k| !allowed.contains(&k.as_str())) {
        return Err(BadEntry::Control("a field this kind does not have"));
    }
    Ok(ControlEntry { node, seq, op })
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.as_bytes().to_vec())))
            .collect()
    }

    fn with_op(op: &ControlOp) -> HashMap<String, Value> {
        let mut f = vec![("n", "node-a"), ("s", "7")];
        f.extend(op.fields());
        fields(&f)
    }

    #[test]
    fn control_entries_round_trip() {
        for op in [
            ControlOp::Disconnect {
                target: Target::ClientId("10.0.0.1:5000".into()),
                reason: "maintenance".into(),
            },
            ControlOp::Disconnect {
                target: Target::User("alice".into()),
                reason: "".into(),
            },
            ControlOp::Unsubscribe {
                target: Target::User("bob".into()),
                channel: "orders.eu".into(),
            },
        ] {
            let f = with_op(&op);
            assert!(is_control(&f));
            let e = decode(&f).expect("decodes");
            assert_eq!((e.node.as_str(), e.seq, &e.op), ("node-a", 7, &op));
        }
    }

    #[test]
    fn every_kind_of_bad_control_entry_is_refused() {
        let good = [
            ("n", "a"),
            ("s", "1"),
            ("k", "unsubscribe"),
            ("t", "user"),
            ("v", "u"),
            ("c", "ch"),
        ];
        let with = |k: &str, v: Option<&str>| {
            let mut f: Vec<(&str, String)> = good
                .iter()
                .filter(|(n, _)| *n != k)
                .map(|(n, v)| (*n, v.to_string()))
                .collect();
            if let Some(v) = v {
                f.push((k, v.to_string()));
            }
            let pairs: Vec<(&str, &str)> = f.iter().map(|(k, v)| (*k, v.as_str())).collect();
            decode(&fields(&pairs))
        };
        assert!(with("c", Some("ch")).is_ok());
        assert_eq!(with("n", Some("")), Err(BadEntry::Node));
        assert_eq!(with("s", Some("x")), Err(BadEntry::Seq));
        assert!(matches!(
            with("k", Some("explode")),
            Err(BadEntry::Control(_))
        ));
        assert!(matches!(with("t", Some("ip")), Err(BadEntry::Control(_))));
        assert!(matches!(with("v", Some("")), Err(BadEntry::Control(_))));
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(matches!(with("v", Some(&long)), Err(BadEntry::Control(_))));
        assert_eq!(with("c", Some("")), Err(BadEntry::Channel));
        assert_eq!(with("c", None), Err(BadEntry::Missing("c")));
        assert!(
            matches!(with("r", Some("why")), Err(BadEntry::Control(_))),
            "a field an unsubscribe has not"
        );
        assert!(
            matches!(with("f", Some("frame")), Err(BadEntry::Control(_))),
            "a frame too"
        );
        let mut bad_utf8 = fields(&good);
        bad_utf8.insert("v".into(), Value::BulkString(vec![0xff, 0xfe]));
        assert!(matches!(decode(&bad_utf8), Err(BadEntry::Control(_))));
        let mut not_a_string = fields(&good);
        not_a_string.insert(
            "t".into(),
            Value::Array(vec![Value::BulkString(b"user".to_vec())]),
        );
        assert_eq!(decode(&not_a_string), Err(BadEntry::Missing("t")));
    }
}

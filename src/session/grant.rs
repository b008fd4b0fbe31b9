//! Who a connection is and what it may do: the grant its `auth` earned
//! (nothing to prove, the static token, or a verified token's claims), the
//! namespace rules of the configuration, and the one permission check that
//! combines them.
//!
//! Tokens are verified outside the session, by a [`TokenVerifier`] the
//! server puts in [`SessionConfig`](super::SessionConfig) (the JWT one is
//! `server::jwt`): the session learns only the claims or why they were
//! refused, and keeps no key and no crypto of its own.
//!
//! Permissions are checked where a request arrives (subscribe, publish,
//! history, broadcast), never at delivery: a pattern subscription is
//! allowed only if every channel it can match is allowed
//! ([`pattern::contains`]), so nothing it receives later needs a check.

use crate::protocol::pattern;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Largest token accepted, in bytes. A JWT with a few dozen channel
/// patterns is well under 2 KiB; 8 KiB bounds what one `auth` can make a
/// shard base64-decode and parse before the signature is even checked.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;

/// Why a token was refused: the `message` of `unauthorized` and the
/// `reason` label of the `auth_failures` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// The first message was not `auth` with a string `token`.
    Missing,
    /// Not the static `auth_token`, and no JWT key is set.
    Static,
    /// Over [`MAX_TOKEN_BYTES`].
    TooLarge,
    /// Not three base64url parts with a JSON header and claims.
    Malformed,
    /// `alg: none`: an unsigned token.
    AlgNone,
    /// An algorithm not allowed, or no key of its kind configured (an
    /// HMAC token where only a public key is set: key confusion).
    Algorithm,
    /// The signature does not verify with the configured key.
    Signature,
    /// `exp` (plus the leeway) has passed.
    Expired,
    /// `nbf` (less the leeway) is still to come.
    NotYetValid,
    /// `aud` is not the configured audience.
    Audience,
    /// `iss` is not the configured issuer.
    Issuer,
    /// A claim is missing (`sub`) or of the wrong type, or a channel
    /// pattern in it is invalid.
    Claims,
    /// `refresh` with a valid token for another `sub`.
    OtherUser,
    /// `refresh` on a connection that did not authenticate with a token.
    NotToken,
}

impl TokenRefusal {
    /// How many reasons there are (the length of the counter array).
    pub const COUNT: usize = 14;
    /// Every reason, in counter order.
    pub const ALL: [TokenRefusal; TokenRefusal::COUNT] = [
        TokenRefusal::Missing,
        TokenRefusal::Static,
        TokenRefusal::TooLarge,
        TokenRefusal::Malformed,
        TokenRefusal::AlgNone,
        TokenRefusal::Algorithm,
        TokenRefusal::Signature,
        TokenRefusal::Expired,
        TokenRefusal::NotYetValid,
        TokenRefusal::Audience,
        TokenRefusal::Issuer,
        TokenRefusal::Claims,
        TokenRefusal::OtherUser,
        TokenRefusal::NotToken,
    ];

    /// Index into the counter array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label in stats and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "missing",
            TokenRefusal::Static => "static_token",
            TokenRefusal::TooLarge => "too_large",
            TokenRefusal::Malformed => "malformed",
            TokenRefusal::AlgNone => "alg_none",
            TokenRefusal::Algorithm => "algorithm",
            TokenRefusal::Signature => "signature",
            TokenRefusal::Expired => "expired",
            TokenRefusal::NotYetValid => "not_yet_valid",
            TokenRefusal::Audience => "audience",
            TokenRefusal::Issuer => "issuer",
            TokenRefusal::Claims => "claims",
            TokenRefusal::OtherUser => "other_user",
            TokenRefusal::NotToken => "not_token",
        }
    }

    /// The `message` of the `unauthorized` frame: which check failed.
    pub fn message(self) -> &'static str {
        match self {
            TokenRefusal::Missing => "the first message must be auth with a valid token",
            TokenRefusal::Static => "the token is not the server's auth token",
            TokenRefusal::TooLarge => "the token is over 8 KiB",
            TokenRefusal::Malformed => {
                "the token is malformed: not a JWT (three base64url parts of JSON)"
            }
            TokenRefusal::AlgNone => "the token is unsigned (alg none)",
            TokenRefusal::Algorithm => {
                "the token's algorithm is not accepted with the keys this server has"
            }
            TokenRefusal::Signature => "the token's signature does not verify",
            TokenRefusal::Expired => "the token has expired (exp)",
            TokenRefusal::NotYetValid => "the token is not valid yet (nbf)",
            TokenRefusal::Audience => "the token's audience (aud) is not this server's",
            TokenRefusal::Issuer => "the token's issuer (iss) is not the one this server trusts",
            TokenRefusal::Claims => "the token's claims are missing (sub) or of the wrong type",
            TokenRefusal::OtherUser => "the refresh token is for another user (sub)",
            TokenRefusal::NotToken => {
                "this connection did not authenticate with a token: nothing to refresh"
            }
        }
    }
}

impl std::fmt::Display for TokenRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for TokenRefusal {}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// `sub`: the user.
    pub user: Arc<str>,
    /// `exp`, seconds since the Unix epoch; `None`: the token never expires.
    pub expires_at: Option<u64>,
    /// `channels.subscribe`: patterns the user may subscribe to.
    pub subscribe: Vec<Box<str>>,
    /// `channels.publish`: channels (as patterns) the user may publish to.
    pub publish: Vec<Box<str>>,
    /// `channels.history`: channels (as patterns) whose history the user
    /// may read.
    pub history: Vec<Box<str>>,
    /// `broadcast`: the user may broadcast to everyone.
    pub broadcast: bool,
}

/// Checks a token and says what it grants. Implemented by the server
/// (`server::jwt`); runs on the shard, inline, for `auth` and `refresh`.
pub trait TokenVerifier: Send + Sync + std::fmt::Debug {
    /// The claims of `token` at `now_secs` (Unix seconds; the session's
    /// clock, so tests can simulate time), or why it is refused.
    fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenRefusal>;
}

/// A shared verifier in the session settings (compared by identity).
#[derive(Debug, Clone)]
pub struct Verifier(pub Arc<dyn TokenVerifier>);

impl PartialEq for Verifier {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Who may do an operation under a namespace rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Any connection (that passed `auth`, if the server requires it).
    Anyone,
    /// A connection whose token's claims allow it (the static
    /// `auth_token` allows everything).
    Token,
    /// No connection: only the server itself (its API) may.
    Nobody,
}

/// A `[[namespace]]` rule of the config file: the channels `pattern`
/// matches, who may subscribe to them (and read their history) and who
/// may publish; first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    /// A channel pattern (`public.>`).
    pub pattern: String,
    /// Who may subscribe and read history.
    pub subscribe: Access,
    /// Who may publish.
    pub publish: Access,
    /// Publications kept per channel here (replaces the server's
    /// `history_size` for these channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_size: Option<usize>,
    /// Seconds a publication is kept here (replaces `history_ttl_secs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_ttl_secs: Option<u64>,
}

/// The ordered namespace rules, as the config file's `[[namespace]]`
/// array. Empty: no namespaces (today's behaviour).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Namespaces(pub Vec<Namespace>);

impl Namespaces {
    /// Checks every rule's pattern; the error names the rule.
    pub fn validate(&self) -> Result<(), String> {
        for (i, ns) in self.0.iter().enumerate() {
            pattern::check_subscribe(&ns.pattern)
                .map_err(|e| format!("namespace {} ({:?}): {e}", i + 1, ns.pattern))?;
            if ns.history_ttl_secs == Some(0) {
                return Err(format!(
                    "namespace {} ({:?}): history_ttl_secs must be at least 1",
                    i + 1,
                    ns.pattern
                ));
            }
        }
        Ok(())
    }

    /// The first rule matching the concrete `channel`, if any.
    pub fn rule_for(&self, channel: &str) -> Option<&Namespace> {
        self.0
            .iter()
            .find(|ns| pattern::matches(&ns.pattern, channel))
    }
}

impl std::str::FromStr for Namespaces {
    type Err = String;
    /// Namespaces have no flag (a table does not fit one); the config
    /// file's `[[namespace]]` sets them.
    fn from_str(_: &str) -> Result<Self, String> {
        Err("namespaces are set in the config file ([[namespace]])".into())
    }
}

/// An operation on a channel that permissions govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `subscribe` (the name may be a pattern).
    Subscribe,
    /// `publish`.
    Publish,
    /// `history`.
    History,
}

/// What a connection's `auth` earned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Grant {
    /// The server requires no auth: everything, except what a namespace
    /// reserves for tokens.
    #[default]
    Anonymous,
    /// The static `auth_token`: everything.
    Static,
    /// A verified token: its claims.
    Token(Box<Claims>),
}

impl Grant {
    /// The user, for a token.
    pub fn user(&self) -> Option<&Arc<str>> {
        match self {
            Grant::Token(c) => Some(&c.user),
            _ => None,
        }
    }

    /// Whether the claims (or the static token) allow `op` on `name`.
    fn claims_allow(&self, op: Op, name: &str) -> bool {
        match self {
            Grant::Anonymous => false,
            Grant::Static => true,
            Grant::Token(c) => {
                let list = match op {
                    Op::Subscribe => &c.subscribe,
                    Op::Publish => &c.publish,
                    Op::History => &c.history,
                };
                pattern::allowed_by(list, name)
            }
        }
    }

    /// Whether this connection may `op` on `name` (a channel, or a pattern
    /// for a subscribe) under `namespaces`.
    ///
    /// Rules are walked in order. A rule that matches some channel `name`
    /// can match ([`pattern::overlaps`]) may decide that channel, so its
    /// access must allow the operation; a rule that matches every such
    /// channel ([`pattern::contains`]) decides all that are left, and the
    /// walk stops. Past the rules, the claims decide for a token, and
    /// everything is allowed otherwise (today's behaviour). For a
    /// concrete channel this is exactly "first match wins"; for a pattern
    /// it may refuse a pattern whose channels a later rule would all have
    /// allowed, never the reverse.
    pub fn permits(&self, namespaces: &Namespaces, op: Op, name: &str) -> bool {
        for ns in &namespaces.0 {
            if !pattern::overlaps(&ns.pattern, name) {
                continue;
            }
            let access = match op {
                Op::Subscribe | Op::History => ns.subscribe,
                Op::Publish => ns.publish,
            };
            let ok = match access {
                Access::Anyone => true,
                Access::Nobody => false,
                Access::Token => self.claims_allow(op, name),
            };
            if !ok {
                return false;
            }
            if pattern::contains(&ns.pattern, name) {
                return true;
            }
        }
        match self {
            Grant::Token(_) => self.claims_allow(op, name),
            Grant::Anonymous | Grant::Static => true,
        }
    }

    /// Whether this connection may broadcast to everyone.
    pub fn may_broadcast(&self) -> bool {
        match self {
            Grant::Token(c) => c.broadcast,
            Grant::Anonymous | Grant::Static => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(sub: &[&str], publish: &[&str], history: &[&str]) -> Grant {
        let b = |l: &[&str]| l.iter().map(|s| Box::from(*s)).collect();
        Grant::Token(Box::new(Claims {
            user: "u".into(),
            expires_at: None,
            subscribe: b(sub),
            publish: b(publish),
            history: b(history),
            broadcast: false,
        }))
    }

    fn ns(pattern: &str, subscribe: Access, publish: Access) -> Namespace {
        Namespace {
            pattern: pattern.into(),
            subscribe,
            publish,
            history_size: None,
            history_ttl_secs: None,
        }
    }

    #[test]
    fn claims_decide_without_namespaces() {
        let none = Namespaces::default();
        let g = token(&["chat.public.*"], &["chat.public.room1"], &[]);
        assert!(g.permits(&none, Op::Subscribe, "chat.public.room1"));
        assert!(g.permits(&none, Op::Subscribe, "chat.public.*"));
        assert!(!g.permits(&none, Op::Subscribe, "chat.>"));
        assert!(!g.permits(&none, Op::Subscribe, "chat.public.>"));
        assert!(g.permits(&none, Op::Publish, "chat.public.room1"));
        assert!(!g.permits(&none, Op::Publish, "chat.public.room2"));
        assert!(!g.permits(&none, Op::History, "chat.public.room1"));
        assert!(!g.may_broadcast());
        assert!(Grant::Static.permits(&none, Op::Publish, "x") && Grant::Static.may_broadcast());
        assert!(Grant::Anonymous.permits(&none, Op::Subscribe, ">"));
    }

    #[test]
    fn first_matching_namespace_wins() {
        let rules = Namespaces(vec![
            ns("public.>", Access::Anyone, Access::Token),
            ns("admin.>", Access::Nobody, Access::Nobody),
            ns(">", Access::Token, Access::Token),
        ]);
        let g = token(&[], &["public.news"], &[]);
        assert!(g.permits(&rules, Op::Subscribe, "public.news"));
        assert!(g.permits(&rules, Op::History, "public.news"));
        assert!(g.permits(&rules, Op::Subscribe, "public.>"));
        assert!(g.permits(&rules, Op::Publish, "public.news"));
        assert!(!g.permits(&rules, Op::Publish, "public.other"));
        assert!(!Grant::Static.permits(&rules, Op::Subscribe, "admin.x"));
        assert!(!g.permits(&rules, Op::Subscribe, "private.x"));
        assert!(Grant::Anonymous.permits(&rules, Op::Subscribe, "public.x"));
        assert!(!Grant::Anonymous.permits(&rules, Op::Subscribe, "private.x"));
        // A pattern reaching into a `nobody` namespace is refused whole.
        assert!(!Grant::Static.permits(&rules, Op::Subscribe, "*.x"));
    }
}

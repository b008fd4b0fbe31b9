//! Channel-name patterns, NATS style, shared by subscriptions (routing) and
//! permissions (token claims, namespaces).
//!
//! A channel name is a list of tokens separated by `.`. In a pattern, a
//! token `*` matches exactly one token and a last token `>` matches one or
//! more. Wildcards are whole tokens only: `a*` or `>b` are refused rather
//! than read as literals, so a name never means one thing to a subscriber
//! and another to a publisher. A name with no wildcard token is concrete;
//! only concrete names can be published to.
//!
//! Every function here is linear in the tokens and allocates nothing:
//! `>` may only be last, so neither matching nor containment backtracks.

use super::message::check_channel;

/// Most tokens in a channel name or pattern. Each token is one level of
/// the shards' pattern trie; 16 levels hold any hierarchy people name
/// (`tenant.app.room.topic.sub`) and bound a match walk.
pub const MAX_TOKENS: usize = 16;

/// The token that matches exactly one token.
pub const ONE: &str = "*";
/// The last token that matches one or more tokens.
pub const REST: &str = ">";

fn is_wildcard(token: &str) -> bool {
    token == ONE || token == REST
}

/// Whether `name` has a wildcard token, so is a pattern and not a channel.
/// Says nothing about validity: see [`check_subscribe`].
pub fn is_pattern(name: &str) -> bool {
    name.split('.').any(is_wildcard)
}

/// Checks a name a client may subscribe to: a concrete channel or a
/// pattern. The limits of [`check_channel`] (1 to 256 bytes, no control
/// characters), at most [`MAX_TOKENS`] tokens, `>` only as the last
/// token, and `*`/`>` only as whole tokens. The error is the message for
/// `invalid_channel`.
pub fn check_subscribe(name: &str) -> Result<(), &'static str> {
    check_channel(name)?;
    let mut tokens = name.split('.').peekable();
    let mut count = 0;
    while let Some(token) = tokens.next() {
        count += 1;
        if count > MAX_TOKENS {
            return Err("a channel name must have at most 16 tokens separated by '.'");
        }
        if token == REST && tokens.peek().is_some() {
            return Err("'>' may only be the last token of a pattern");
        }
        if !is_wildcard(token) && (token.contains('*') || token.contains('>')) {
            return Err("'*' and '>' must be whole tokens between '.'");
        }
    }
    Ok(())
}

/// Checks a name a client may publish to (or read the history of): as
/// [`check_subscribe`], and no wildcard. The error is the message for
/// `invalid_channel`.
pub fn check_concrete(name: &str) -> Result<(), &'static str> {
    check_subscribe(name)?;
    if is_pattern(name) {
        return Err("a pattern (with a '*' or '>' token) names no single channel");
    }
    Ok(())
}

/// Whether `pattern` matches the concrete `channel`. A concrete pattern
/// matches only itself. Both are assumed valid ([`check_subscribe`],
/// [`check_concrete`]); on other input the answer is unspecified but
/// nothing panics.
pub fn matches(pattern: &str, channel: &str) -> bool {
    let mut chan = channel.split('.');
    for token in pattern.split('.') {
        if token == REST {
            return chan.next().is_some();
        }
        match chan.next() {
            None => return false,
            Some(c) if token != ONE && token != c => return false,
            Some(_) => {}
        }
    }
    chan.next().is_none()
}

/// Whether `outer` matches every channel that `inner` matches; `inner`
/// may be a pattern or a concrete channel (then this is [`matches`]).
/// This is how a pattern subscription is checked against the patterns a
/// token allows: `chat.>` is not contained in `chat.public.*`, since
/// `chat.x` is matched by the first and not the second.
///
/// Token by token: `>` in `outer` covers any one-or-more rest of `inner`;
/// `*` in `outer` covers any single token of `inner` (a literal or `*`,
/// not `>`, which may stand for several); a literal covers only itself.
pub fn contains(outer: &str, inner: &str) -> bool {
    let mut inner_tokens = inner.split('.');
    for token in outer.split('.') {
        if token == REST {
            return inner_tokens.next().is_some();
        }
        match inner_tokens.next() {
            None => return false,
            Some(REST) => return false,
            Some(i) if token != ONE && token != i => return false,
            Some(_) => {}
        }
    }
    inner_tokens.next().is_none()
}

/// Whether some channel is matched by both `a` and `b` (patterns or
/// channels). Namespace rules use it: a pattern subscription must satisfy
/// every rule that may decide one of its channels.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            // `>` needs one or more tokens; the other side has one here.
            (Some(REST), Some(_)) | (Some(_), Some(REST)) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) if x != ONE && y != ONE && x != y => return false,
            (Some(_), Some(_)) => {}
        }
    }
}

/// Whether any pattern of `allowed` contains `name` ([`contains`]). A name
/// covered by the union of several patterns but by none alone (`a.*.x`
/// and `a.*.y` do not together allow `a.*.*`, nor should they: `a.b.z`)
/// is refused, which is exact for the patterns people write; see
/// `union_is_not_needed` in the tests.
pub fn allowed_by(allowed: &[impl AsRef<str>], name: &str) -> bool {
    allowed.iter().any(|p| contains(p.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn syntax_is_checked_with_messages() {
        for ok in ["a", "a.b", "*", ">", "a.*", "a.>", "*.*.>", "a..b", "é.*"] {
            assert_eq!(check_subscribe(ok), Ok(()), "{ok}");
        }
        let seventeen = vec!["t"; 17].join(".");
        let sixteen = vec!["t"; 16].join(".");
        assert_eq!(check_subscribe(&sixteen), Ok(()));
        for (bad, why) in [
            (">.a", "'>' may only be the last token"),
            ("a.>.>", "'>' may only be the last token"),
            ("a*", "whole tokens"),
            ("a.b>", "whole tokens"),
            ("a.**", "whole tokens"),
            (seventeen.as_str(), "at most 16 tokens"),
            ("", "must not be empty"),
            ("a\tb.*", "control characters"),
        ] {
            let err = check_subscribe(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(check_concrete("a.*").is_err());
        assert!(check_concrete("a.>").is_err());
        assert_eq!(check_concrete("a.b"), Ok(()));
        assert!(is_pattern("a.*.c") && is_pattern(">") && !is_pattern("a.b*"));
    }

    #[test]
    fn matching_follows_nats() {
        assert!(matches("a.*", "a.b"));
        assert!(!matches("a.*", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(matches(">", "x"));
        assert!(matches("*.b.>", "x.b.c.d"));
        assert!(matches("a.b", "a.b") && !matches("a.b", "a.c"));
    }

    #[test]
    fn the_issue_example_is_refused() {
        assert!(!contains("chat.public.*", "chat.>"));
        assert!(contains("chat.>", "chat.public.*"));
        assert!(contains("chat.public.*", "chat.public.room1"));
        assert!(!contains("chat.public.*", "chat.public.>"));
        assert!(contains("*.*", "*.*") && !contains("*.*", ">"));
    }

    #[test]
    fn union_is_not_needed() {
        let allowed = ["a.*.x", "a.*.y"];
        assert!(!allowed_by(&allowed, "a.*.*"));
        assert!(allowed_by(&allowed, "a.*.x"));
        assert!(allowed_by(&allowed, "a.q.y"));
        assert!(!allowed_by(&[] as &[&str], "a"));
    }

    /// Tokens patterns are built from; channels are enumerated over these
    /// plus one more (`c`), which stands for every token no pattern names.
    const ALPHABET: [&str; 2] = ["a", "b"];
    const CHANNEL_ALPHABET: [&str; 3] = ["a", "b", "c"];
    const MAX_PATTERN_TOKENS: usize = 4;

    /// Every concrete channel of 1 to `MAX_PATTERN_TOKENS + 1` tokens over
    /// `CHANNEL_ALPHABET`: one token longer than any pattern, which is
    /// enough to tell `>` (any length) from a run of `*`.
    fn all_channels() -> Vec<String> {
        let mut out = Vec::new();
        let mut level = vec![String::new()];
        for _ in 0..=MAX_PATTERN_TOKENS {
            let mut next = Vec::new();
            for prefix in &level {
                for t in CHANNEL_ALPHABET {
                    let name = if prefix.is_empty() {
                        t.to_string()
                    } else {
                        format!("{prefix}.{t}")
                    };
                    next.push(name);
                }
            }
            out.extend(next.iter().cloned());
            level = next;
        }
        out
    }

    /// A valid pattern (or channel): literals from `ALPHABET`, `*`, and
    /// possibly a last `>`.
    fn pattern() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just(ALPHABET[0].to_string()),
            Just(ALPHABET[1].to_string()),
            Just(ONE.to_string()),
        ];
        (
            proptest::collection::vec(token, 1..=MAX_PATTERN_TOKENS),
            any::<bool>(),
        )
            .prop_map(|(mut tokens, rest)| {
                if rest {
                    *tokens.last_mut().expect("at least one token") = REST.to_string();
                }
                tokens.join(".")
            })
    }

    /// A concrete channel over `CHANNEL_ALPHABET`.
    fn channel() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(CHANNEL_ALPHABET.to_vec()),
            1..=MAX_PATTERN_TOKENS + 1,
        )
        .prop_map(|t| t.join("."))
    }

    /// `matches` by its definition, with backtracking-free recursion kept
    /// separate from the iterative code under test.
    fn reference_matches(p: &[&str], c: &[&str]) -> bool {
        match (p.first(), c.first()) {
            (None, None) => true,
            (Some(&REST), _) => !c.is_empty(),
            (Some(_), None) | (None, Some(_)) => false,
            (Some(&t), Some(&u)) => (t == ONE || t == u) && reference_matches(&p[1..], &c[1..]),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn generated_patterns_are_valid(p in pattern()) {
            prop_assert_eq!(check_subscribe(&p), Ok(()));
        }

        #[test]
        fn matches_agrees_with_the_definition(p in pattern()) {
            let pt: Vec<&str> = p.split('.').collect();
            for c in all_channels() {
                let ct: Vec<&str> = c.split('.').collect();
                prop_assert_eq!(matches(&p, &c), reference_matches(&pt, &ct), "{} {}", p, c);
            }
        }

        #[test]
        fn contains_agrees_with_enumeration(outer in pattern(), inner in pattern()) {
            let channels = all_channels();
            let brute = channels
                .iter()
                .filter(|c| matches(&inner, c))
                .all(|c| matches(&outer, c));
            prop_assert_eq!(contains(&outer, &inner), brute, "{} ⊇ {}", outer, inner);
        }

        #[test]
        fn overlaps_agrees_with_enumeration(a in pattern(), b in pattern()) {
            let brute = all_channels().iter().any(|c| matches(&a, c) && matches(&b, c));
            prop_assert_eq!(overlaps(&a, &b), brute, "{} ∩ {}", a, b);
        }

        #[test]
        fn contains_a_channel_is_matches(p in pattern(), c in channel()) {
            prop_assert_eq!(contains(&p, &c), matches(&p, &c));
        }
    }
}

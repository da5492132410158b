//! Room allow-lists from a token's `rooms` claim: names with `*` wildcards.

/// A room-name pattern: literal text with `*` matching any run of characters
/// (including none). `*` alone allows every room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from claim text.
    pub fn new(p: impl Into<String>) -> Pattern {
        Pattern(p.into())
    }

    /// Whether `room` matches. Linear in `room.len() × stars` with the classic
    /// backtracking-to-the-last-star algorithm: no regex, no blow-up on hostile patterns.
    pub fn matches(&self, room: &str) -> bool {
        let (p, s) = (self.0.as_bytes(), room.as_bytes());
        let (mut pi, mut si) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while si < s.len() {
            if pi < p.len() && p[pi] == b'*' {
                star = Some((pi, si));
                pi += 1;
            } else if pi < p.len() && p[pi] == s[si] {
                pi += 1;
                si += 1;
            } else if let Some((sp, ss)) = star {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            } else {
                return false;
            }
        }
        p[pi..].iter().all(|c| *c == b'*')
    }
}

/// Whether any pattern in `allowed` matches `room`.
pub fn allows(allowed: &[Pattern], room: &str) -> bool {
    allowed.iter().any(|p| p.matches(room))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn wildcards() {
        let m = |p: &str, r: &str| Pattern::new(p).matches(r);
        assert!(m("*", "anything") && m("*", ""));
        assert!(m("team-*", "team-red") && m("team-*", "team-") && !m("team-*", "teams"));
        assert!(m("*-ops", "eu-ops") && !m("*-ops", "eu-ops2"));
        assert!(m("a*b*c", "axxbyyc") && m("a*b*c", "abc") && !m("a*b*c", "acb"));
        assert!(m("lobby", "lobby") && !m("lobby", "lobby2") && !m("lobby", "lob"));
        assert!(m("**", "x") && m("café*", "café-au-lait"));
        assert!(allows(&[Pattern::new("a"), Pattern::new("b*")], "bee"));
        assert!(!allows(&[], "a"));
    }

    /// A reference matcher (exponential, fine for short inputs) to check against.
    fn reference(p: &[u8], s: &[u8]) -> bool {
        match (p.first(), s.first()) {
            (None, _) => s.is_empty(),
            (Some(b'*'), _) => reference(&p[1..], s) || (!s.is_empty() && reference(p, &s[1..])),
            (Some(c), Some(d)) if c == d => reference(&p[1..], &s[1..]),
            _ => false,
        }
    }

    proptest! {
        #[test]
        fn matches_the_reference(p in "[ab*]{0,8}", s in "[ab]{0,10}") {
            prop_assert_eq!(Pattern::new(p.clone()).matches(&s), reference(p.as_bytes(), s.as_bytes()));
        }
    }
}

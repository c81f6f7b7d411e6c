//! Does a publication target us? (`salt/matchers/glob_match.py`, `pcre_match.py`,
//! `list_match.py`.) Other target types (grain, pillar, compound, ...) do not match: the
//! sidecar has no grains or pillar, so a minion in its place would not match them either.

use salt_proto::msgpack;
use salt_proto::Value;

pub fn matches(id: &str, tgt: &Value, tgt_type: &str) -> bool {
    match tgt_type {
        "glob" => msgpack::str_of(tgt).is_some_and(|t| glob(t.as_bytes(), id.as_bytes())),
        "pcre" => msgpack::str_of(tgt).is_some_and(|t| pcre(t, id)),
        "list" => match tgt {
            Value::Array(items) => items.iter().any(|i| msgpack::str_of(i) == Some(id)),
            other => msgpack::str_of(other).is_some_and(|t| t.split(',').any(|x| x.trim() == id)),
        },
        _ => false,
    }
}

/// Python's `re.match(tgt, id)`: anchored at the start only. Untrusted patterns are bounded.
fn pcre(pattern: &str, id: &str) -> bool {
    regex::RegexBuilder::new(&format!("^(?:{pattern})"))
        .size_limit(1 << 20)
        .build()
        .is_ok_and(|re| re.is_match(id))
}

/// `fnmatch.fnmatch` on POSIX: `*`, `?`, `[seq]`, `[!seq]`, case-sensitive.
pub fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    backtrack = Some((p, i));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some((hit, next)) = class(&pat[p..], s[i]) {
                        if hit {
                            p += next;
                            i += 1;
                            continue;
                        }
                    } else if s[i] == b'[' {
                        // An unclosed `[` is a literal.
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
                c if c == s[i] => {
                    p += 1;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        match backtrack {
            Some((bp, bi)) => {
                p = bp + 1;
                i = bi + 1;
                backtrack = Some((bp, bi + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class at the start of `pat` (`[...]`); returns whether it hit and
/// the class length, or None if the class is not closed.
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut j = 1;
    let negate = matches!(pat.get(j), Some(b'!'));
    if negate {
        j += 1;
    }
    let start = j;
    let mut hit = false;
    while j < pat.len() && (pat[j] != b']' || j == start) {
        if j + 2 < pat.len() && pat[j + 1] == b'-' && pat[j + 2] != b']' {
            hit |= pat[j] <= c && c <= pat[j + 2];
            j += 3;
        } else {
            hit |= pat[j] == c;
            j += 1;
        }
    }
    (j < pat.len()).then_some((hit != negate, j + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use salt_proto::msgpack::text;

    #[test]
    fn glob_like_fnmatch() {
        for (p, s, want) in [
            ("*", "virtseed", true),
            ("virt*", "virtseed", true),
            ("v?rtseed", "virtseed", true),
            ("*seed", "virtseed", true),
            ("web*", "virtseed", false),
            ("virtseed", "virtseed", true),
            ("virtsee", "virtseed", false),
            ("[uv]irtseed", "virtseed", true),
            ("[!v]irtseed", "virtseed", false),
            ("[a-z]*", "virtseed", true),
            ("*e*d", "virtseed", true),
            ("[", "[", true),
            ("Virtseed", "virtseed", false),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} vs {s}");
        }
    }

    #[test]
    fn target_types() {
        assert!(matches("virtseed", &text("virt.*"), "pcre"));
        assert!(!matches("virtseed", &text("seed"), "pcre"));
        assert!(!matches("virtseed", &text("("), "pcre"));
        assert!(matches("virtseed", &text("a,virtseed"), "list"));
        assert!(matches(
            "virtseed",
            &Value::Array(vec![text("virtseed")]),
            "list"
        ));
        assert!(!matches("virtseed", &text("os:Debian"), "grain"));
        assert!(!matches("virtseed", &Value::Array(vec![text("*")]), "glob"));
    }
}

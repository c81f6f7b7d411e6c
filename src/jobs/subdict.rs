//! `salt/utils/data.py:subdict_match` and `traverse_dict_and_list`, which Salt's master runs
//! over the grains and pillar it cached for a minion to resolve grain and pillar targets
//! (`salt -G`, `-I`, `G@`/`I@` in compound targets). Ported line for line, Python's
//! `str(value).lower()` included, so that the sidecar counts itself in exactly when the
//! master does. The vectors in `tests` were printed by Salt's own function.

use super::target::glob;
use serde_json::{Map, Value};

/// How a value's text is compared with the pattern.
#[derive(Clone, Copy)]
pub enum Mode {
    Glob,
    Regex,
    Exact,
}

/// `subdict_match(data, expr, delimiter, regex_match, exact_match)`.
pub fn subdict_match(data: &Value, expr: &str, delimiter: &str, mode: Mode) -> bool {
    if delimiter.is_empty() {
        // Python's str.split("") raises: the master logs it and matches nobody.
        return false;
    }
    let splits: Vec<&str> = expr.split(delimiter).collect();
    if splits.len() == 1 {
        return false;
    }
    for idx in (1..splits.len()).rev() {
        let key = splits[..idx].join(delimiter);
        let (matchstr, found) = if key == "*" {
            (expr.to_string(), Some(data))
        } else {
            (
                splits[idx..].join(delimiter),
                traverse(data, &key, delimiter),
            )
        };
        let Some(m) = found else { continue };
        if m.as_object().is_some_and(Map::is_empty) {
            continue;
        }
        match m {
            Value::Object(d) => {
                if dict_match(d, &matchstr, mode) {
                    return true;
                }
            }
            Value::Array(items) => {
                for member in items {
                    if let Value::Object(d) = member {
                        if dict_match(d, &matchstr, mode) {
                            return true;
                        }
                    }
                    if text_match(member, &matchstr, mode) {
                        return true;
                    }
                }
            }
            other => {
                if text_match(other, &matchstr, mode) {
                    return true;
                }
            }
        }
    }
    false
}

/// `_dict_match`: the pattern names a key, matches a key, or matches below it; with a
/// leading `*:`, any value one level down.
fn dict_match(target: &Map<String, Value>, pattern: &str, mode: Mode) -> bool {
    let (wildcard, pattern) = match pattern.strip_prefix("*:") {
        Some(rest) => (true, rest),
        None => (false, pattern),
    };
    if pattern == "*" || target.contains_key(pattern) {
        return true;
    }
    if target
        .keys()
        .any(|k| text_match(&Value::String(k.clone()), pattern, mode))
    {
        return true;
    }
    // Salt recurses with the default delimiter here, whatever the caller's.
    if subdict_match(&Value::Object(target.clone()), pattern, ":", mode) {
        return true;
    }
    if wildcard {
        for v in target.values() {
            let hit = match v {
                Value::Object(d) => dict_match(d, pattern, mode),
                Value::Array(items) => items.iter().any(|i| text_match(i, pattern, mode)),
                other => text_match(other, pattern, mode),
            };
            if hit {
                return true;
            }
        }
    }
    false
}

/// `_match`: `str(target).lower()` against `str(pattern).lower()`, by `re.match`,
/// equality, or `fnmatch`.
fn text_match(target: &Value, pattern: &str, mode: Mode) -> bool {
    let target = py_str(target).to_lowercase();
    let pattern = pattern.to_lowercase();
    match mode {
        Mode::Regex => super::target::re_match(&pattern, &target),
        Mode::Exact => target == pattern,
        Mode::Glob => glob(pattern.as_bytes(), target.as_bytes()),
    }
}

/// `traverse_dict_and_list(data, key, {}, delimiter)`; None where Salt returns the default.
pub(super) fn traverse<'a>(data: &'a Value, key: &str, delimiter: &str) -> Option<&'a Value> {
    let mut ptr = data;
    for each in key.split(delimiter) {
        ptr = match ptr {
            Value::Array(items) => match each.parse::<i64>() {
                // A number indexes the list (from the end if negative).
                Ok(i) => {
                    let at = if i < 0 { items.len() as i64 + i } else { i };
                    items.get(usize::try_from(at).ok()?)?
                }
                // Otherwise the first embedded dict that holds the key.
                Err(_) => items
                    .iter()
                    .filter_map(Value::as_object)
                    .find_map(|d| d.get(each))?,
            },
            Value::Object(d) => d.get(each)?,
            _ => return None,
        };
    }
    Some(ptr)
}

/// Python's `str()` of a value decoded from msgpack.
fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 => {
                format!("{f:.1}")
            }
            _ => n.to_string(),
        },
        Value::String(s) => {
            if s.contains('\'') && !s.contains('"') {
                format!("\"{s}\"")
            } else {
                format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
            }
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(py_repr).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(d) => format!(
            "{{{}}}",
            d.iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Printed by `salt.utils.data.subdict_match` (Salt 3007.17) for this data:
    /// scripts/subdict-vectors.py > src/jobs/vectors/subdict.json.
    #[test]
    fn as_salt_matches() {
        let vectors: Value =
            serde_json::from_str(include_str!("vectors/subdict.json")).expect("vectors");
        let data = &vectors["data"];
        let mut n = 0;
        for case in vectors["cases"].as_array().unwrap() {
            let expr = case["expr"].as_str().unwrap();
            let delim = case["delimiter"].as_str().unwrap();
            for (mode, key) in [
                (Mode::Glob, "glob"),
                (Mode::Regex, "regex"),
                (Mode::Exact, "exact"),
            ] {
                assert_eq!(
                    subdict_match(data, expr, delim, mode),
                    case[key].as_bool().unwrap(),
                    "{expr:?} delimiter {delim:?} {key}"
                );
                n += 1;
            }
        }
        assert!(n > 100, "{n} checks");
    }

    #[test]
    fn odd_input_matches_nothing() {
        let d = json!({"a": "b"});
        assert!(!subdict_match(&d, "a:b", "", Mode::Glob));
        assert!(!subdict_match(&d, "ab", ":", Mode::Glob));
        assert!(!subdict_match(&Value::Null, "a:b", ":", Mode::Glob));
        assert!(!subdict_match(&d, "a:(", ":", Mode::Regex));
    }
}

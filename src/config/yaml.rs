//! Reading Salt's YAML files the way Salt's loader sees them.
//!
//! yaml_serde follows YAML 1.2, Salt's loader YAML 1.1: `yes`/`no`/`on`/`off` are booleans to
//! Salt, and `0644` or `1_000` are numbers. The coercions below close that gap where a value
//! is read, so operators' existing files mean what they meant to Salt.

use super::ConfigError;
use std::path::Path;
use yaml_serde::Value;

/// Reads a YAML file into a value (an empty file is an empty map), merge keys applied.
pub fn load_file(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses YAML text; `path` is only for the error message.
pub fn parse(path: &Path, text: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Default::default()));
    }
    let mut v: Value = yaml_serde::from_str(text).map_err(|e| ConfigError::Yaml {
        path: path.to_path_buf(),
        line: e.location().map(|l| l.line()),
        msg: e.to_string(),
    })?;
    v.apply_merge().map_err(|e| ConfigError::Yaml {
        path: path.to_path_buf(),
        line: None,
        msg: e.to_string(),
    })?;
    match v {
        Value::Null => Ok(Value::Mapping(Default::default())),
        Value::Mapping(_) => Ok(v),
        other => Err(ConfigError::Yaml {
            path: path.to_path_buf(),
            line: None,
            msg: format!("expected a mapping at the top, found {}", kind(&other)),
        }),
    }
}

/// Salt's booleans: YAML 1.1 words, case-insensitive, plus 0/1.
pub fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_i64().map(|i| i != 0),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "yes" | "y" | "true" | "on" | "1" => Some(true),
            "no" | "n" | "false" | "off" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Salt's integers: also `1_000` and strings of digits.
pub fn as_i64(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.replace('_', "").trim().parse().ok(),
        _ => None,
    }
}

/// Text of a scalar (numbers and booleans too, as Salt would print them).
pub fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Merges `over` into `base` key by key (top level only), as Salt layers `master.d/*.conf`.
pub fn merge_top(base: &mut Value, over: Value) {
    if let (Value::Mapping(b), Value::Mapping(o)) = (base, over) {
        for (k, v) in o {
            b.insert(k, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salt_coercions() {
        let v = parse(Path::new("t"), "a: yes\nb: Off\nc: 1_000\nd: '42'\ne: 3").unwrap();
        assert_eq!(as_bool(&v["a"]), Some(true));
        assert_eq!(as_bool(&v["b"]), Some(false));
        assert_eq!(as_i64(&v["c"]), Some(1000));
        assert_eq!(as_i64(&v["d"]), Some(42));
        assert_eq!(as_text(&v["e"]).as_deref(), Some("3"));
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse(Path::new("/etc/salt/virtseed"), "a: 1\nb: [unclosed\n").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("/etc/salt/virtseed line "), "{msg}");
        assert!(parse(Path::new("x"), "- a list").is_err());
        assert!(parse(Path::new("x"), "").unwrap().is_mapping());
    }

    #[test]
    fn merge_keys_apply() {
        let v = parse(
            Path::new("x"),
            "base: &b {x: 1}\nother:\n  <<: *b\n  y: 2\n",
        )
        .unwrap();
        assert_eq!(as_i64(&v["other"]["x"]), Some(1));
    }
}

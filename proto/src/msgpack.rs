//! Salt's msgpack dialect (`salt/payload.py`).
//!
//! On the network the master packs with `use_bin_type=False`: every `str` **and** `bytes` value
//! arrives in the str family, so a "string" may hold ciphertext that is not UTF-8. Readers here
//! therefore treat str values as bytes and only ask for UTF-8 where a field is text by contract.
//! On input the master cannot tell str from bin (`decode_embedded_strs`), so we write text as
//! str and binary as bin, which is also what the event bus requires (`body` must be bin).

use crate::error::{Error, Result};
use rmpv::Value;

/// Salt's datetime extension (`salt/utils/msgpack.py`): ASCII `%Y%m%dT%H:%M:%S.%f`.
pub const EXT_DATETIME: i8 = 78;
/// Salt's `_Constant` extension: a packed `[name, value]`.
pub const EXT_CONSTANT: i8 = 79;

/// Recursion limit for untrusted input: deep enough for any real Salt payload, shallow enough
/// for a tokio worker's stack.
const MAX_DEPTH: usize = 128;

/// Packs a value as `salt.payload.dumps` does on the network (`use_bin_type=False`): strings
/// of 32..=255 bytes take str16, never str8, so our bytes match Salt's exactly.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write(&mut out, value, false);
    out
}

/// Packs a value as msgpack-python's defaults (`use_bin_type=True`) do, for event data and
/// transport frames: str8 allowed.
pub fn encode_standard(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write(&mut out, value, true);
    out
}

fn write(out: &mut Vec<u8>, value: &Value, str8: bool) {
    use rmp::encode as e;
    // Writing to a Vec cannot fail; the Results below are infallible.
    match value {
        Value::String(s) => {
            let b = s.as_bytes();
            let len = b.len();
            if (32..=255).contains(&len) && !str8 {
                out.push(0xda);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                let _ = e::write_str_len(out, len as u32);
            }
            out.extend_from_slice(b);
        }
        Value::Array(items) => {
            let _ = e::write_array_len(out, items.len() as u32);
            for i in items {
                write(out, i, str8);
            }
        }
        Value::Map(pairs) => {
            let _ = e::write_map_len(out, pairs.len() as u32);
            for (k, v) in pairs {
                write(out, k, str8);
                write(out, v, str8);
            }
        }
        other => {
            let _ = rmpv::encode::write_value(out, other);
        }
    }
}

/// Unpacks exactly one value; trailing bytes are an error, as in `msgpack.unpackb`.
pub fn decode(bytes: &[u8]) -> Result<Value> {
    let mut rd = bytes;
    let value = rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH)
        .map_err(|e| Error::Msgpack(e.to_string()))?;
    if !rd.is_empty() {
        return Err(Error::TrailingBytes(rd.len()));
    }
    Ok(value)
}

/// Unpacks one value from the front of `bytes`, for streams. `Ok(None)` means the buffer ends
/// inside the value; otherwise returns the value and how many bytes it took.
pub fn decode_prefix(bytes: &[u8]) -> Result<Option<(Value, usize)>> {
    let mut rd = bytes;
    match rmpv::decode::read_value_with_max_depth(&mut rd, MAX_DEPTH) {
        Ok(v) => Ok(Some((v, bytes.len() - rd.len()))),
        Err(e) if is_eof(&e) => Ok(None),
        Err(e) => Err(Error::Msgpack(e.to_string())),
    }
}

fn is_eof(e: &rmpv::decode::Error) -> bool {
    use rmpv::decode::Error as E;
    match e {
        E::InvalidMarkerRead(io) | E::InvalidDataRead(io) => {
            io.kind() == std::io::ErrorKind::UnexpectedEof
        }
        _ => false,
    }
}

/// Builds a map with string keys, in the given order.
pub fn map<K: Into<String>>(pairs: impl IntoIterator<Item = (K, Value)>) -> Value {
    Value::Map(
        pairs
            .into_iter()
            .map(|(k, v)| (Value::String(k.into().into()), v))
            .collect(),
    )
}

/// A str-family value from text.
pub fn text(s: impl Into<String>) -> Value {
    Value::String(s.into().into())
}

/// A bin value from bytes.
pub fn bin(b: impl Into<Vec<u8>>) -> Value {
    Value::Binary(b.into())
}

/// The bytes of a str or bin value (str values may be invalid UTF-8).
pub fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::String(s) => Some(s.as_bytes()),
        Value::Binary(b) => Some(b),
        _ => None,
    }
}

/// Text of a str or bin value, if it is UTF-8.
pub fn str_of(v: &Value) -> Option<&str> {
    bytes_of(v).and_then(|b| std::str::from_utf8(b).ok())
}

/// Looks up `key` in a map whose keys may be str or bin (Salt sends both).
pub fn get<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
    match map {
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| bytes_of(k) == Some(key.as_bytes()))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Mutable lookup, same key rules as [`get`].
pub fn get_mut<'a>(map: &'a mut Value, key: &str) -> Option<&'a mut Value> {
    match map {
        Value::Map(pairs) => pairs
            .iter_mut()
            .find(|(k, _)| bytes_of(k) == Some(key.as_bytes()))
            .map(|(_, v)| v),
        _ => None,
    }
}

/// Sets `key` in a map, replacing an existing entry. Does nothing on a non-map.
pub fn set(map: &mut Value, key: &str, value: Value) {
    if let Some(slot) = get_mut(map, key) {
        *slot = value;
    } else if let Value::Map(pairs) = map {
        pairs.push((text(key), value));
    }
}

/// Removes `key` from a map and returns its value.
pub fn remove(map: &mut Value, key: &str) -> Option<Value> {
    match map {
        Value::Map(pairs) => {
            let i = pairs
                .iter()
                .position(|(k, _)| bytes_of(k) == Some(key.as_bytes()))?;
            Some(pairs.remove(i).1)
        }
        _ => None,
    }
}

/// A short description of a value's kind, for error messages.
pub fn kind(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => format!("bool {b}"),
        Value::Integer(_) => "an integer".into(),
        Value::F32(_) | Value::F64(_) => "a float".into(),
        Value::String(s) => match s.as_str() {
            Some(t) if t.len() <= 60 => format!("string {t:?}"),
            _ => format!("a string of {} bytes", s.as_bytes().len()),
        },
        Value::Binary(b) => format!("{} bytes of binary", b.len()),
        Value::Array(a) => format!("a list of {}", a.len()),
        Value::Map(m) => format!("a map of {}", m.len()),
        Value::Ext(t, _) => format!("extension type {t}"),
    }
}

/// Required field of a map, as bytes.
pub fn req_bytes<'a>(map: &'a Value, field: &'static str) -> Result<&'a [u8]> {
    let v = get(map, field).ok_or(Error::Missing(field))?;
    bytes_of(v).ok_or_else(|| Error::Shape {
        field,
        expected: "a string",
        found: kind(v),
    })
}

/// Required field of a map, as UTF-8 text.
pub fn req_str<'a>(map: &'a Value, field: &'static str) -> Result<&'a str> {
    let v = get(map, field).ok_or(Error::Missing(field))?;
    str_of(v).ok_or_else(|| Error::Shape {
        field,
        expected: "UTF-8 text",
        found: kind(v),
    })
}

/// Converts a Salt datetime extension to its text, if `v` is one.
pub fn datetime_text(v: &Value) -> Option<&str> {
    match v {
        Value::Ext(EXT_DATETIME, data) => std::str::from_utf8(data).ok(),
        _ => None,
    }
}

/// Renders a value as JSON for logs, job returns and the CLI. Binary that is not UTF-8 is
/// shown as a length, never as its bytes (it may be key material).
pub fn to_json(v: &Value) -> String {
    let mut out = String::new();
    write_json(v, &mut out);
    out
}

fn write_json(v: &Value, out: &mut String) {
    use std::fmt::Write;
    match v {
        Value::Nil => out.push_str("null"),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        Value::F32(f) => write_float(f64::from(*f), out),
        Value::F64(f) => write_float(*f, out),
        Value::String(_) | Value::Binary(_) => match str_of(v) {
            Some(s) => write_json_str(s, out),
            None => write_json_str(
                &format!("<{} bytes>", bytes_of(v).map_or(0, <[u8]>::len)),
                out,
            ),
        },
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Map(pairs) => {
            out.push('{');
            for (i, (k, val)) in pairs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                // JSON keys are strings. Scalars keep their text; a container as a key (legal in
                // msgpack) is only described, since rendering it escaped would double its size
                // at every level of nesting.
                match (str_of(k), k) {
                    (Some(s), _) => write_json_str(s, out),
                    (
                        None,
                        Value::Array(_)
                        | Value::Map(_)
                        | Value::Binary(_)
                        | Value::String(_)
                        | Value::Ext(..),
                    ) => write_json_str(&format!("<{}>", kind(k)), out),
                    (None, scalar) => write_json_str(&to_json(scalar), out),
                }
                out.push(':');
                write_json(val, out);
            }
            out.push('}');
        }
        Value::Ext(t, data) => match datetime_text(v) {
            Some(s) => write_json_str(s, out),
            None => write_json_str(&format!("<ext {t}, {} bytes>", data.len()), out),
        },
    }
}

fn write_float(f: f64, out: &mut String) {
    use std::fmt::Write;
    if f.is_finite() {
        let _ = write!(out, "{f}");
    } else {
        out.push_str("null");
    }
}

fn write_json_str(s: &str, out: &mut String) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn str_with_invalid_utf8_survives() {
        // fixstr of 3 bytes that are not UTF-8, as the master sends ciphertext.
        let v = decode(&[0xa3, 0xff, 0x00, 0x80]).unwrap();
        assert_eq!(bytes_of(&v), Some(&[0xff, 0x00, 0x80][..]));
        assert_eq!(str_of(&v), None);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        assert_eq!(decode(&[0xc0, 0xc0]), Err(Error::TrailingBytes(1)));
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        assert!(decode(&[0xda, 0x00, 0x20, b'a']).is_err());
        assert_eq!(decode_prefix(&[0xda, 0x00, 0x20, b'a']), Ok(None));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let bytes = vec![0x91; 10_000];
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn keys_match_str_or_bin() {
        let m = Value::Map(vec![
            (bin(b"load".to_vec()), Value::from(1)),
            (text("enc"), text("aes")),
        ]);
        assert_eq!(get(&m, "load"), Some(&Value::from(1)));
        assert_eq!(req_str(&m, "enc").unwrap(), "aes");
        assert_eq!(req_str(&m, "x"), Err(Error::Missing("x")));
    }

    #[test]
    fn json_of_nested_container_keys_stays_small() {
        // Found by fuzzing: each level used to double the output.
        let mut v = Value::Nil;
        for _ in 0..100 {
            v = Value::Map(vec![(v, Value::Nil)]);
        }
        assert!(to_json(&v).len() < 100);
        let int_key = Value::Map(vec![(Value::from(7), Value::Nil)]);
        assert_eq!(to_json(&int_key), r#"{"7":null}"#);
    }

    #[test]
    fn json_hides_binary() {
        let m = map([("a", bin(vec![0xff, 0xfe])), ("b", text("x\"y"))]);
        assert_eq!(to_json(&m), r#"{"a":"<2 bytes>","b":"x\"y"}"#);
    }
}

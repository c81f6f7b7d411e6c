//! Names from outside, checked once at the edge.

/// Salt's `salt/utils/verify.py:valid_id`: no path separators or NUL, and a path that stays
/// inside pki_dir. We also refuse empty, `.`/`..`, whitespace, control characters and over
/// 255 bytes (a file name).
pub fn valid_minion_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id != "."
        && id != ".."
        && !id
            .chars()
            .any(|c| matches!(c, '/' | '\\' | '\0') || c.is_control() || c.is_whitespace())
}

/// A validated minion id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MinionId(String);

impl MinionId {
    pub fn new(id: &str) -> Result<Self, String> {
        if valid_minion_id(id) {
            Ok(Self(id.to_string()))
        } else {
            Err(format!("{id:?} is not a valid minion id"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for MinionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for good in ["virtseed", "web1.example.com", "a_b-c"] {
            assert!(valid_minion_id(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "..\\x",
            "a\0b",
            "a b",
            &"x".repeat(256),
        ] {
            assert!(!valid_minion_id(bad), "{bad:?}");
        }
    }
}

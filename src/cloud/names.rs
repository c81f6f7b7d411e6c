//! Instance names: they become libvirt domain names, volume names, minion ids (file names
//! in the master's pki_dir) and host names, so they are checked before anything is made.

/// Checks one instance name: 1 to 63 characters (a host name label, and libvirt and volume
/// names built from it stay short), ASCII letters, digits, `.`, `-` and `_`, starting with a
/// letter or digit. Refuses path separators, globs, spaces and anything non-ASCII.
pub fn check(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an instance name must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "instance name {:?}... is {} characters; at most 63",
            &name.chars().take(20).collect::<String>(),
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "instance name {name:?} must start with a letter or digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "instance name {name:?} contains {c:?}; use letters, digits, '.', '-' and '_' (it becomes a minion id, a host name and file names)"
        ));
    }
    if name.ends_with('.') || name.contains("..") {
        return Err(format!("instance name {name:?} has an empty label"));
    }
    Ok(())
}

/// Checks every name and refuses duplicates, before anything is made.
pub fn check_all(names: &[String]) -> Result<(), String> {
    if names.is_empty() {
        return Err("no instance names given".into());
    }
    let mut seen = std::collections::HashSet::new();
    for n in names {
        check(n)?;
        if !seen.insert(n) {
            return Err(format!("instance name {n:?} is given twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["web1", "web1.example.com", "a_b-c", "0db"] {
            check(good).unwrap();
        }
        let long = "x".repeat(300);
        for bad in [
            "",
            "../x",
            "a/b",
            "web*",
            "web?",
            "[ab]",
            "wéb",
            "a b",
            ".hidden",
            "-x",
            "a..b",
            "x.",
            long.as_str(),
            "a\\b",
            "a\0b",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check_all(&["a".into(), "a".into()])
            .unwrap_err()
            .contains("twice"));
        assert!(check_all(&[]).is_err());
    }
}

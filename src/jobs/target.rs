//! Does the master count the sidecar among a job's minions? The master decides whom it
//! waits for (`salt/utils/minions.py:CkMinions.check_minions`, over accepted keys and the
//! grains and pillar it cached for each minion); the sidecar answers exactly those jobs, so
//! no target ever waits on it and it never answers one that did not count it. This is the
//! master's side of Salt's matchers for one id, ours, line for line: glob, pcre and list on
//! the id; grain, grain_pcre, pillar, pillar_pcre and pillar_exact over the data the master
//! cached for us (what [`super::facts`] reported) or, with `minion_data_cache: False`, every
//! minion (Salt's greedy matching); ipcidr; compound with `and`/`or`/`not` and parentheses
//! and nodegroups expanded by the master's own rules; range only through a range server,
//! which the master reaches and we do not (no match, as where `seco.range` is missing).

use super::subdict::{subdict_match, Mode};
use salt_proto::msgpack;
use salt_proto::Value;
use serde_json::{Map, Value as Json};

/// What the master knows of the sidecar when it resolves a target.
pub struct Seen<'a> {
    pub id: &'a str,
    /// The master's `minion_data_cache`.
    pub cache: bool,
    /// Our grains and pillar as the master cached them; None until it holds them.
    pub data: Option<(&'a Json, &'a Json)>,
    /// The master's `nodegroups`.
    pub nodegroups: &'a Map<String, Json>,
    /// Salt 3008 evaluates compounds only with the cache on (without it, they match nobody);
    /// earlier lines count every minion then.
    pub salt_3008: bool,
}

/// Where the master's matching fails (bad expression, unknown engine): Salt logs it and
/// matches no minion.
struct Invalid;

impl Seen<'_> {
    /// Whether the master expects our return for a job published with this target.
    pub fn expects(&self, tgt: &Value, tgt_type: &str, delimiter: &str) -> bool {
        let s = msgpack::str_of(tgt);
        match tgt_type {
            "glob" => s.is_some_and(|t| self.glob(t)),
            "pcre" => s.is_some_and(|t| re_match(t, self.id)),
            "list" => self.list(tgt),
            "grain" | "grain_pcre" | "pillar" | "pillar_pcre" | "pillar_exact" => {
                s.is_some_and(|t| self.cached(tgt_type, t, delimiter))
            }
            "ipcidr" => s.is_some_and(|t| self.ipcidr(t)),
            "compound" => self.compound(tgt, false).unwrap_or(false),
            "compound_pillar_exact" => self.compound(tgt, true).unwrap_or(false),
            "nodegroup" => s.is_some_and(|t| {
                self.compound_words(nodegroup_comp(t, self.nodegroups), false)
                    .unwrap_or(false)
            }),
            // range needs the master's range server; anything else has no matcher.
            _ => false,
        }
    }

    fn glob(&self, pattern: &str) -> bool {
        glob(pattern.as_bytes(), self.id.as_bytes())
    }

    /// `_check_list_minions`: a list, or a comma-separated string, holding our id.
    fn list(&self, tgt: &Value) -> bool {
        match tgt {
            Value::Array(items) => items.iter().any(|i| msgpack::str_of(i) == Some(self.id)),
            other => msgpack::str_of(other).is_some_and(|t| t.split(',').any(|x| x == self.id)),
        }
    }

    /// `_check_cache_minions`: with the cache on, only what it holds for us; with it off,
    /// every accepted minion (greedy).
    fn cached(&self, tgt_type: &str, expr: &str, delimiter: &str) -> bool {
        if !self.cache {
            return true;
        }
        let Some((grains, pillar)) = self.data else {
            return false;
        };
        let (data, mode) = match tgt_type {
            "grain" => (grains, Mode::Glob),
            "grain_pcre" => (grains, Mode::Regex),
            "pillar" => (pillar, Mode::Glob),
            "pillar_pcre" => (pillar, Mode::Regex),
            _ => (pillar, Mode::Exact),
        };
        subdict_match(data, expr, delimiter, mode)
    }

    /// `_check_ipcidr_minions`: a minion the cache does not hold stays in (greedy); one it
    /// holds matches on its `ipv4`/`ipv6` grains.
    fn ipcidr(&self, expr: &str) -> bool {
        if !self.cache {
            return true;
        }
        let Some(net) = Cidr::parse(expr) else {
            return false;
        };
        let Some((grains, _)) = self.data else {
            return true;
        };
        let proto = if net.v6 { "ipv6" } else { "ipv4" };
        grains[proto].as_array().is_some_and(|addrs| {
            addrs
                .iter()
                .filter_map(Json::as_str)
                .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
                .any(|ip| net.contains(ip))
        })
    }

    /// `_check_compound_minions`.
    fn compound(&self, tgt: &Value, pillar_exact: bool) -> Result<bool, Invalid> {
        let words = match tgt {
            Value::Array(items) => items
                .iter()
                .map(|w| msgpack::str_of(w).map(str::to_string).ok_or(Invalid))
                .collect::<Result<Vec<_>, _>>()?,
            other => msgpack::str_of(other)
                .ok_or(Invalid)?
                .split_whitespace()
                .map(str::to_string)
                .collect(),
        };
        self.compound_words(words, pillar_exact)
    }

    fn compound_words(&self, words: Vec<String>, pillar_exact: bool) -> Result<bool, Invalid> {
        if !self.cache {
            // Without the cache the master does not evaluate compounds: up to 3007 every
            // minion counts, 3008 counts none.
            return Ok(!self.salt_3008);
        }
        // The master rewrites the expression into set operations over minion ids and
        // evaluates it (`not X` becomes `(ALL - X)`); for one id, sets are booleans.
        let mut out: Vec<Tok> = Vec::new();
        let mut unmatched: Vec<Tok> = Vec::new();
        let mut words: std::collections::VecDeque<String> = words.into();
        let close_not = |out: &mut Vec<Tok>, unmatched: &mut Vec<Tok>| {
            if unmatched.last() == Some(&Tok::Minus) {
                out.push(Tok::Close);
                unmatched.pop();
            }
        };
        while let Some(word) = words.pop_front() {
            match word.as_str() {
                "and" | "or" | "not" | "(" | ")" => {
                    let first = out.is_empty();
                    if !first
                        && out.last() == Some(&Tok::Open)
                        && matches!(word.as_str(), "and" | "or")
                    {
                        return Err(Invalid);
                    }
                    match word.as_str() {
                        "not" => {
                            if !first && !matches!(out.last(), Some(Tok::And | Tok::Or | Tok::Open))
                            {
                                out.push(Tok::And);
                            }
                            out.extend([Tok::Open, Tok::Val(true), Tok::Minus]);
                            unmatched.push(Tok::Minus);
                        }
                        "(" => {
                            out.push(Tok::Open);
                            unmatched.push(Tok::Open);
                        }
                        _ if first => return Err(Invalid),
                        "and" => out.push(Tok::And),
                        "or" => out.push(Tok::Or),
                        _ => {
                            if unmatched.last() != Some(&Tok::Open) {
                                return Err(Invalid);
                            }
                            out.push(Tok::Close);
                            unmatched.pop();
                            close_not(&mut out, &mut unmatched);
                        }
                    }
                }
                _ => {
                    let hit = match parse_target(&word, self.salt_3008) {
                        Some((engine, delim, pattern)) => {
                            let delim = delim.unwrap_or(":");
                            let s = |t: &str| Ok(self.cached(t, pattern, delim));
                            match engine {
                                'N' => {
                                    for x in
                                        nodegroup_comp(pattern, self.nodegroups).into_iter().rev()
                                    {
                                        words.push_front(x);
                                    }
                                    continue;
                                }
                                'G' => s("grain")?,
                                'P' => s("grain_pcre")?,
                                'I' if pillar_exact => s("pillar_exact")?,
                                'J' if pillar_exact => s("pillar_exact")?,
                                'I' => s("pillar")?,
                                'J' => s("pillar_pcre")?,
                                'L' => self.list(&Value::from(pattern)),
                                'S' => self.ipcidr(pattern),
                                'E' => re_match(pattern, self.id),
                                'T' | 'M' => false,
                                // `R@` calls `_all_minions` with one argument too many.
                                _ => return Err(Invalid),
                            }
                        }
                        None => self.glob(&word),
                    };
                    out.push(Tok::Val(hit));
                    close_not(&mut out, &mut unmatched);
                }
            }
        }
        out.extend(unmatched.iter().map(|_| Tok::Close));
        let mut p = Parser {
            toks: &out,
            at: 0,
            depth: 0,
        };
        let v = p.or()?;
        if p.at != out.len() {
            return Err(Invalid);
        }
        Ok(v)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Val(bool),
    And,
    Or,
    Minus,
    Open,
    Close,
}

/// Python's grammar for `|`, `&`, `-` and parentheses over sets (`-` binds tightest).
struct Parser<'a> {
    toks: &'a [Tok],
    at: usize,
    depth: usize,
}

/// Python refuses deeper nesting ("too many nested parentheses").
const MAX_DEPTH: usize = 200;

impl Parser<'_> {
    fn eat(&mut self, t: Tok) -> bool {
        let hit = self.toks.get(self.at) == Some(&t);
        self.at += usize::from(hit);
        hit
    }
    fn or(&mut self) -> Result<bool, Invalid> {
        let mut v = self.and()?;
        while self.eat(Tok::Or) {
            v |= self.and()?;
        }
        Ok(v)
    }
    fn and(&mut self) -> Result<bool, Invalid> {
        let mut v = self.minus()?;
        while self.eat(Tok::And) {
            v &= self.minus()?;
        }
        Ok(v)
    }
    fn minus(&mut self) -> Result<bool, Invalid> {
        let mut v = self.atom()?;
        while self.eat(Tok::Minus) {
            v &= !self.atom()?;
        }
        Ok(v)
    }
    fn atom(&mut self) -> Result<bool, Invalid> {
        match self.toks.get(self.at) {
            Some(Tok::Val(v)) => {
                self.at += 1;
                Ok(*v)
            }
            Some(Tok::Open) => {
                self.at += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(Invalid);
                }
                let v = self.or()?;
                self.depth -= 1;
                if !self.eat(Tok::Close) {
                    return Err(Invalid);
                }
                Ok(v)
            }
            _ => Err(Invalid),
        }
    }
}

/// `parse_target`: `E@pattern`, or `G;@pattern` with a delimiter for G/P/I/J; None for a
/// bare glob.
fn parse_target(word: &str, salt_3008: bool) -> Option<(char, Option<&str>, &str)> {
    let mut chars = word.char_indices();
    let (_, engine) = chars.next()?;
    // T@ and M@ (3008's resources) name resource ids and the minions managing them.
    let engines = if salt_3008 {
        "GPIJLNSERTM"
    } else {
        "GPIJLNSER"
    };
    if !engines.contains(engine) {
        return None;
    }
    let (i1, c1) = chars.next()?;
    if c1 == '@' {
        let pattern = &word[i1 + 1..];
        return (!pattern.is_empty() && !pattern.contains('\n')).then_some((engine, None, pattern));
    }
    if "GPIJ".contains(engine) && c1 != '\n' {
        let (i2, c2) = chars.next()?;
        if c2 == '@' {
            let pattern = &word[i2 + 1..];
            if !pattern.is_empty() && !pattern.contains('\n') {
                return Some((engine, Some(&word[i1..i2]), pattern));
            }
        }
    }
    None
}

/// `ipaddress.ip_address(t)` or, failing that, `ipaddress.ip_network(t)` (strict: no host
/// bits set).
struct Cidr {
    v6: bool,
    bits: u128,
    prefix: u32,
}

impl Cidr {
    fn parse(t: &str) -> Option<Cidr> {
        let (addr, prefix) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u32>().ok()?)),
            None => (t, None),
        };
        let ip: std::net::IpAddr = addr.parse().ok()?;
        let (v6, bits, width) = match ip {
            std::net::IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            std::net::IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        let prefix = prefix.unwrap_or(width);
        if prefix > width {
            return None;
        }
        let c = Cidr { v6, bits, prefix };
        (bits & !c.mask(width) == 0).then_some(c)
    }

    fn mask(&self, width: u32) -> u128 {
        let all = if width == 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        if self.prefix == 0 {
            0
        } else {
            all & !((1u128 << (width - self.prefix)) - 1)
        }
    }

    fn contains(&self, ip: std::net::IpAddr) -> bool {
        let (v6, bits, width) = match ip {
            std::net::IpAddr::V4(a) => (false, u128::from(u32::from(a)), 32),
            std::net::IpAddr::V6(a) => (true, u128::from(a), 128),
        };
        v6 == self.v6 && bits & self.mask(width) == self.bits
    }
}

const OPERS: [&str; 5] = ["and", "or", "not", "(", ")"];

/// `nodegroup_comp`: a nodegroup's words, nested groups expanded in parentheses; a group of
/// bare names becomes one `L@`/`E@` word. An unknown or self-nesting group gives nothing.
fn nodegroup_comp(group: &str, groups: &Map<String, Json>) -> Vec<String> {
    expand(group, groups, &mut Vec::new(), true)
}

fn expand(
    group: &str,
    groups: &Map<String, Json>,
    skip: &mut Vec<String>,
    first: bool,
) -> Vec<String> {
    if skip.iter().any(|s| s == group) {
        return Vec::new();
    }
    let words: Vec<String> = match groups.get(group) {
        Some(Json::String(s)) => s.split_whitespace().map(str::to_string).collect(),
        Some(Json::Array(items)) => items.iter().map(py_word).collect(),
        _ => return Vec::new(),
    };
    skip.push(group.to_string());
    let mut ret = Vec::new();
    let mut expanded = false;
    for w in &words {
        if w.len() >= 3 && w.starts_with("N@") && !OPERS.contains(&w.as_str()) {
            expanded = true;
            ret.extend(expand(&w[2..], groups, skip, false));
        } else {
            ret.push(w.clone());
        }
    }
    if !ret.is_empty() {
        ret.insert(0, "(".into());
        ret.push(")".into());
    }
    skip.retain(|s| s != group);
    if let Some(j) = (!first || !expanded)
        .then(|| nodegroup_regex(&words))
        .flatten()
    {
        return vec![j];
    }
    if expanded || !first {
        ret
    } else {
        words
    }
}

/// `_nodegroup_regex`: a group of bare names (no operators, no `X@`, no `*`) becomes one
/// `L@a,b` target, or `E@...` if a name holds regex characters.
fn nodegroup_regex(words: &[String]) -> Option<String> {
    if words.iter().any(|w| OPERS.contains(&w.as_str())) {
        return None;
    }
    let typed = |w: &str| {
        let b = w.as_bytes();
        b.len() >= 2 && b[0].is_ascii_uppercase() && b[1] == b'@'
    };
    if words.iter().any(|w| w.contains('*') || typed(w)) {
        return None;
    }
    let regexy = words.iter().any(|w| {
        ["(", "[", "{", "\\", "?", "}", "]", ")"]
            .iter()
            .any(|c| w.contains(c))
    });
    Some(format!(
        "{}@{}",
        if regexy { "E" } else { "L" },
        words.join(",")
    ))
}

/// `str(word)` for a nodegroup list entry.
fn py_word(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Python's `re.match(pattern, text)`: anchored at the start only. Untrusted patterns are
/// bounded; a pattern Rust's regex cannot read matches nothing.
pub fn re_match(pattern: &str, text: &str) -> bool {
    regex::RegexBuilder::new(&format!("^(?:{pattern})"))
        .size_limit(1 << 20)
        .build()
        .is_ok_and(|re| re.is_match(text))
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
    use serde_json::json;

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

    /// What Salt's master itself (`CkMinions.check_minions`) answered for the minion
    /// `virtseed`, on each Salt line, with the cache holding its grains and pillar, with the
    /// cache not holding them yet, and with `minion_data_cache: False`
    /// (scripts/target-vectors.py).
    #[test]
    fn counts_us_in_as_the_master_does() {
        for (version, vectors) in [
            ("3006.30", include_str!("vectors/target-3006.30.json")),
            ("3007.17", include_str!("vectors/target-3007.17.json")),
            ("3008.5", include_str!("vectors/target-3008.5.json")),
        ] {
            let v: Json = serde_json::from_str(vectors).unwrap();
            let nodegroups = v["nodegroups"].as_object().unwrap().clone();
            let (grains, pillar) = (&v["grains"], &v["pillar"]);
            for (cache, data, key) in [
                (true, Some((grains, pillar)), "cache_cached"),
                (true, None, "cache_uncached"),
                (false, None, "no_cache"),
            ] {
                let seen = Seen {
                    id: "virtseed",
                    cache,
                    data,
                    nodegroups: &nodegroups,
                    salt_3008: version.starts_with("3008"),
                };
                for case in v["cases"].as_array().unwrap() {
                    let tgt = crate::bus::from_json(&case["tgt"]);
                    let tgt_type = case["tgt_type"].as_str().unwrap();
                    assert_eq!(
                        seen.expects(&tgt, tgt_type, ":"),
                        case[key].as_bool().unwrap(),
                        "Salt {version}, {key}: {tgt_type} {}",
                        case["tgt"]
                    );
                }
            }
        }
    }

    #[test]
    fn hostile_targets_match_nothing() {
        let groups = Map::new();
        let seen = Seen {
            id: "virtseed",
            cache: true,
            data: Some((&json!({}), &json!({}))),
            nodegroups: &groups,
            salt_3008: false,
        };
        let deep = "( ".repeat(10_000) + "virtseed";
        for (tgt, tgt_type) in [
            ("(", "pcre"),
            ("a{99999}{99999}", "pcre"),
            ("", "compound"),
            (")", "compound"),
            (deep.as_str(), "compound"),
            ("G@", "compound"),
        ] {
            let _ = seen.expects(&Value::from(tgt), tgt_type, ":");
        }
        assert!(!seen.expects(&Value::from("G{\u{fffd}s:Windows"), "compound", ":"));
        assert!(!seen.expects(&Value::from(1), "compound", ":"));
        assert!(!seen.expects(&Value::Array(vec![Value::from(1)]), "compound", ":"));
        assert!(!seen.expects(&Value::Array(vec![Value::from("*")]), "glob", ":"));
    }
}

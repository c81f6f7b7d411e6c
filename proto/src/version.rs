//! Which Salt release a master runs, and the wire differences that follow from it.

use crate::error::{Error, Result};

/// A Salt release, `major.minor` (e.g. 3007.17). Suffixes like `rc1` are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SaltVersion {
    pub major: u32,
    pub minor: u32,
}

/// How a stream on the master's event bus is cut into frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// msgpack values back to back.
    Bare,
    /// each frame preceded by its length as a u32, big-endian.
    LengthPrefixed,
}

impl SaltVersion {
    pub const fn new(major: u32, minor: u32) -> Self {
        Self { major, minor }
    }

    /// Framing of what we write to `master_event_pull.ipc` (spec §8): the length prefix came
    /// with 3006.26, 3007.15 and 3008.2.
    pub fn fire_framing(self) -> Framing {
        let prefixed = match self.major {
            0..=3005 => false,
            3006 => self.minor >= 26,
            3007 => self.minor >= 15,
            3008 => self.minor >= 2,
            _ => true,
        };
        if prefixed {
            Framing::LengthPrefixed
        } else {
            Framing::Bare
        }
    }

    /// Framing of what `master_event_pub.ipc` sends us: only 3006.26+ prefixes it; 3007+
    /// moved the bus to the TCP transport, whose publisher streams bare maps.
    pub fn subscribe_framing(self) -> Framing {
        if self.major == 3006 && self.minor >= 26 {
            Framing::LengthPrefixed
        } else {
            Framing::Bare
        }
    }

    /// The `act` of a `salt/key` event for an accepted key: 3008 says `accepted`.
    pub fn key_act_accept(self) -> &'static str {
        if self.major >= 3008 {
            "accepted"
        } else {
            "accept"
        }
    }

    /// The `act` of a `salt/key` event for a rejected key: 3008 says `rejected`.
    pub fn key_act_reject(self) -> &'static str {
        if self.major >= 3008 {
            "rejected"
        } else {
            "reject"
        }
    }

    /// Whether `_stamp` carries a `+00:00` offset (3008) or is naive UTC (3006/3007).
    pub fn stamp_has_offset(self) -> bool {
        self.major >= 3008
    }
}

impl std::str::FromStr for SaltVersion {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Version(s.to_string());
        let (maj, rest) = s.trim().split_once('.').ok_or_else(bad)?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        Ok(Self {
            major: maj.parse().map_err(|_| bad())?,
            minor: digits.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for SaltVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> SaltVersion {
        s.parse().unwrap()
    }

    #[test]
    fn framing_table_of_the_spec() {
        use Framing::*;
        for (ver, fire, sub) in [
            ("3006.25", Bare, Bare),
            ("3006.26", LengthPrefixed, LengthPrefixed),
            ("3006.30", LengthPrefixed, LengthPrefixed),
            ("3007.14", Bare, Bare),
            ("3007.15", LengthPrefixed, Bare),
            ("3007.17", LengthPrefixed, Bare),
            ("3008.1", Bare, Bare),
            ("3008.2", LengthPrefixed, Bare),
            ("3008.5", LengthPrefixed, Bare),
        ] {
            assert_eq!(v(ver).fire_framing(), fire, "{ver} fire");
            assert_eq!(v(ver).subscribe_framing(), sub, "{ver} subscribe");
        }
    }

    #[test]
    fn parse() {
        assert_eq!(v("3007.17"), SaltVersion::new(3007, 17));
        assert_eq!(v("3008.0rc1"), SaltVersion::new(3008, 0));
        assert!("3007".parse::<SaltVersion>().is_err());
        assert!("x.1".parse::<SaltVersion>().is_err());
        assert_eq!(v("3008.5").key_act_accept(), "accepted");
        assert_eq!(v("3006.30").key_act_accept(), "accept");
    }
}

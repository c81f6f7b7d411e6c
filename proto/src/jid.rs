//! Salt job ids: 20 digits, `%Y%m%d%H%M%S%f` in UTC (`salt/utils/jid.py:gen_jid`).

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Jid(String);

impl Jid {
    /// Validates a jid from the wire.
    pub fn parse(s: &str) -> Result<Self> {
        if s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(s.to_string()))
        } else {
            Err(Error::Jid(s.chars().take(40).collect()))
        }
    }

    /// The jid for a moment given as microseconds since the Unix epoch.
    pub fn from_unix_micros(micros: u64) -> Self {
        let (date, time, us) = civil(micros);
        Self(format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}{:06}",
            date.0, date.1, date.2, time.0, time.1, time.2, us
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Jid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits Unix microseconds into a proleptic Gregorian UTC date, time of day and microseconds
/// (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil(micros: u64) -> ((i64, u32, u32), (u32, u32, u32), u32) {
    let secs = micros / 1_000_000;
    let us = (micros % 1_000_000) as u32;
    let days = (secs / 86_400) as i64;
    let rem = (secs % 86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    ((y, m, d), (rem / 3600, rem / 60 % 60, rem % 60), us)
}

/// Python's `datetime.isoformat()` for a UTC moment, as Salt writes `_stamp`
/// (`2026-11-24T04:08:24.123456`, plus `+00:00` where the version does).
pub fn iso_stamp(micros: u64, with_offset: bool) -> String {
    let ((y, mo, d), (h, mi, s), us) = civil(micros);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}{}",
        if with_offset { "+00:00" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_gen_jid() {
        // 2024-01-01T00:00:00.000001Z
        assert_eq!(
            Jid::from_unix_micros(1_704_067_200_000_001).as_str(),
            "20240101000000000001"
        );
        // 2000-02-29T23:59:59.999999Z, a leap day
        assert_eq!(
            Jid::from_unix_micros(951_868_799_999_999).as_str(),
            "20000229235959999999"
        );
        assert_eq!(
            iso_stamp(951_868_799_999_999, true),
            "2000-02-29T23:59:59.999999+00:00"
        );
    }

    #[test]
    fn parse_checks_shape() {
        assert!(Jid::parse("20240101000000000001").is_ok());
        assert!(Jid::parse("req").is_err());
        assert!(Jid::parse("2024010100000000000a").is_err());
    }
}

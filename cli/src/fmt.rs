//! How figures look to a person, in every view of ctl (tables, lines, `top`): times,
//! durations, sizes and numbers. Every function is total: a NaN, an infinity or a
//! figure far out of range from a hostile peer gives a short text, never a panic.

use std::fmt::Write as _;

/// A Unix time as RFC 3339 in UTC with milliseconds; a time that is not one (NaN,
/// negative, past the year 9999) is shown as such instead.
pub fn timestamp(t: f64) -> String {
    // 10000-01-01T00:00:00Z, which RFC 3339 cannot write.
    const YEAR_10000: f64 = 253_402_300_800.0;
    if !(0.0..YEAR_10000).contains(&t) {
        return format!("(bad time {})", number(t));
    }
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(t);
    let mut s = String::new();
    match write!(s, "{}", humantime::format_rfc3339_millis(at)) {
        Ok(()) => s,
        Err(_) => format!("(bad time {})", number(t)),
    }
}

/// A figure with one decimal, bounded in width: `12.5`, `3.1e12`, `NaN`, `inf`.
pub fn number(v: f64) -> String {
    if v.is_finite() && v.abs() < 1e9 {
        format!("{v:.1}")
    } else if v.is_finite() {
        format!("{v:.1e}")
    } else {
        v.to_string()
    }
}

/// "3s", "5m", "2h", "4d": an age in one unit, for the tables of one-shot commands.
pub fn age(secs: f64) -> String {
    // `as` saturates: NaN is 0, 1e300 is u64::MAX.
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Bytes in binary units, short: `512B`, `1.5K`, `12M`, `3.2G`. One decimal below 10
/// of a unit, none from 10 to 1023; past 1023T the whole figure in T, one decimal.
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else if v < 9.95 {
        format!("{v:.1}{}", UNITS[u])
    } else if v < 1024.0 {
        format!("{:.0}{}", v.min(1023.0), UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// A duration in its two largest units: `42s`, `3m05s`, `2h07m`, `4d03h`; for the
/// live view (`top`), where a figure that moves every second is wanted.
pub fn age_fine(secs: f64) -> String {
    let s = if secs.is_finite() && secs > 0.0 {
        secs as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ages_and_bytes() {
        assert_eq!(age(5.0), "5s");
        assert_eq!(age(600.0), "10m");
        assert_eq!(age(10_000.0), "2h");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5K");
    }

    #[test]
    fn formats_bytes_and_ages() {
        let bytes = [
            (0, "0B"),
            (1023, "1023B"),
            (1024, "1.0K"),
            (1536, "1.5K"),
            (10 * 1024, "10K"),
            (3 << 20, "3.0M"),
            (200 << 20, "200M"),
            (5 << 30, "5.0G"),
        ];
        for (n, want) in bytes {
            assert_eq!(super::bytes(n), want, "{n}");
        }
        let ages = [
            (0.0, "0s"),
            (-3.0, "0s"),
            (f64::NAN, "0s"),
            (59.9, "59s"),
            (185.0, "3m05s"),
            (7_620.0, "2h07m"),
            (356_400.0, "4d03h"),
        ];
        for (s, want) in ages {
            assert_eq!(age_fine(s), want, "{s}");
        }
    }
}

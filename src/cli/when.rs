//! Times as `git log --since` takes them, the forms people type: an age (`2.weeks`,
//! `3 days ago`, `1.hour.ago`, `2 weeks 3 days`), `now`, `today` and `midnight` (the last local
//! midnight), `yesterday` (24 hours ago, as git has it), a date (`2026-11-01`: local midnight),
//! a local date and time (`2026-11-01 14:00`, seconds optional), an RFC 3339 time
//! (`2026-11-01T14:00:00Z`, `...+01:00`, fractions of a second allowed) and `@<unix seconds>`.
//! A month counts 30 days, a year 365. Anything else is an error that says what is taken:
//! never a guess.

/// What `--since` was given cannot be read as a time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "cannot read {0:?} as a time (give e.g. 2.weeks, \"3 days ago\", yesterday, 2026-11-01, \"2026-11-01 14:00\", \
     2026-11-01T14:00:00Z or @1793491200)"
)]
pub struct BadTime(String);

/// Parses a `--since` value (for clap): Unix milliseconds.
pub fn since_arg(spec: &str) -> Result<u64, BadTime> {
    let now_ms = crate::clock::unix_now_ms();
    parse(spec, now_ms, &Zone { to_unix: local_to_unix, date_of: |secs| local_date_of(secs).0 })
}

/// Local time: a wall-clock time (year, month, day, hour, minute, second) as Unix seconds, and
/// the date at Unix seconds.
struct Zone {
    to_unix: fn([i64; 6]) -> Option<i64>,
    date_of: fn(u64) -> [i64; 3],
}

type Local<'a> = &'a Zone;

/// `spec` as Unix ms, `now_ms` being now, local times read in `zone`.
fn parse(spec: &str, now_ms: u64, zone: &Zone) -> Result<u64, BadTime> {
    let bad = || BadTime(spec.to_string());
    let text = spec.trim();
    let now = now_ms as i64;
    let midnight = || {
        let date = (zone.date_of)(now_ms / 1000);
        (zone.to_unix)([date[0], date[1], date[2], 0, 0, 0])
    };
    let ms = match text.to_ascii_lowercase().as_str() {
        "" => return Err(bad()),
        "now" => Some(now),
        "today" | "midnight" => midnight().map(|s| s * 1000),
        "yesterday" => Some(now - 86_400_000),
        t if t.starts_with('@') => t[1..].parse::<i64>().ok().map(|s| s.saturating_mul(1000)),
        t if t.starts_with(|c: char| c.is_ascii_digit()) && t.len() >= 10 && t.as_bytes().get(4) == Some(&b'-') => {
            absolute(text, zone)
        }
        t => age(t).map(|ago| now - ago),
    };
    ms.filter(|ms| *ms >= 0).map(|ms| ms as u64).ok_or_else(bad)
}

/// Milliseconds in an age: (number unit)+ [ago], the parts separated by spaces, dots or
/// underscores, a number and its unit with or without a space between.
fn age(text: &str) -> Option<i64> {
    let mut tokens: Vec<String> = Vec::new();
    for word in text.split([' ', '.', '_']).filter(|w| !w.is_empty()) {
        // "2weeks" is "2 weeks".
        let digits = word.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && digits < word.len() {
            tokens.push(word[..digits].to_string());
            tokens.push(word[digits..].to_string());
        } else {
            tokens.push(word.to_string());
        }
    }
    if tokens.last().is_some_and(|t| t == "ago") {
        tokens.pop();
    }
    if tokens.is_empty() || !tokens.len().is_multiple_of(2) {
        return None;
    }
    let mut total: i64 = 0;
    for pair in tokens.chunks(2) {
        let n = i64::try_from(pair[0].parse::<u64>().ok()?).ok()?;
        let unit = match pair[1].trim_end_matches('s') {
            "second" | "sec" => 1,
            "minute" | "min" => 60,
            "hour" => 3600,
            "day" => 86_400,
            "week" => 7 * 86_400,
            "month" => 30 * 86_400,
            "year" => 365 * 86_400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?.checked_mul(1000)?)?;
    }
    Some(total)
}

/// `YYYY-MM-DD`, then optionally `HH:MM[:SS[.frac]]` (after a space or a `T`), then optionally a
/// zone (`Z` or `±HH:MM`): without a zone the time is local.
fn absolute(text: &str, zone: Local) -> Option<i64> {
    let local = zone.to_unix;
    let (date, rest) = (text.get(..10)?, text.get(10..)?);
    let [y, m, d] = numbers(date, '-')?;
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let rest = rest.strip_prefix([' ', 'T', 't']).unwrap_or(rest);
    if rest.is_empty() {
        return local([y, m, d, 0, 0, 0]).map(|s| s * 1000);
    }
    // The zone: Z, or a sign after the time (a time has no sign of its own).
    let (clock, zone) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], Some(&rest[i..])),
        None => (rest, None),
    };
    let clock = clock.trim();
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let parts: Vec<&str> = hms.split(':').collect();
    let (h, min, s) = match parts.as_slice() {
        [h, m] => (num(h)?, num(m)?, 0),
        [h, m, s] => (num(h)?, num(m)?, num(s)?),
        _ => return None,
    };
    if h > 23 || min > 59 || s > 60 {
        return None;
    }
    let millis = frac.get(..frac.len().min(3)).map_or(0, |f| format!("{f:0<3}").parse::<i64>().unwrap_or(0));
    let secs = match zone {
        None => local([y, m, d, h, min, s])?,
        Some("Z" | "z") => utc_seconds(y, m, d, h, min, s),
        Some(z) => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let [zh, zm] = numbers(&z[1..], ':')?;
            if zh > 23 || zm > 59 {
                return None;
            }
            utc_seconds(y, m, d, h, min, s) - sign * (zh * 3600 + zm * 60)
        }
    };
    Some(secs * 1000 + millis)
}

fn num(s: &str) -> Option<i64> {
    (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn numbers<const N: usize>(s: &str, sep: char) -> Option<[i64; N]> {
    let parts: Vec<i64> = s.split(sep).map(num).collect::<Option<_>>()?;
    parts.try_into().ok()
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Unix seconds of a UTC date and time (days from the civil date: Howard Hinnant's algorithm).
fn utc_seconds(y: i64, m: i64, d: i64, h: i64, min: i64, s: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + h * 3600 + min * 60 + s
}

/// Today's local date (year, month, day) at Unix `secs`, and the zone's offset.
fn local_date_of(secs: u64) -> ([i64; 3], i64) {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r writes into the tm we own and reads only `t`; both live for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return ([1970, 1, 1], 0);
    }
    ([i64::from(tm.tm_year) + 1900, i64::from(tm.tm_mon) + 1, i64::from(tm.tm_mday)], tm.tm_gmtoff)
}

/// A local wall-clock time as Unix seconds (the zone's rules, summer time included).
fn local_to_unix([y, m, d, h, min, s]: [i64; 6]) -> Option<i64> {
    // SAFETY: mktime reads and normalises the tm we own; nothing else is touched.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    tm.tm_year = i32::try_from(y - 1900).ok()?;
    tm.tm_mon = i32::try_from(m - 1).ok()?;
    tm.tm_mday = i32::try_from(d).ok()?;
    tm.tm_hour = i32::try_from(h).ok()?;
    tm.tm_min = i32::try_from(min).ok()?;
    tm.tm_sec = i32::try_from(s).ok()?;
    tm.tm_isdst = -1;
    let t = unsafe { libc::mktime(&mut tm) };
    (t != -1).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-10 12:00:00 UTC.
    const NOW: u64 = 1_794_312_000_000;
    const DAY: u64 = 86_400_000;

    /// Local time is UTC in these tests (the real zone is tested through `local_to_unix`).
    const UTC: Zone = Zone {
        to_unix: |t| Some(utc_seconds(t[0], t[1], t[2], t[3], t[4], t[5])),
        date_of: |secs| {
            let days = (secs / 86_400) as i64;
            let mut d = [1970, 1, 1];
            // Count up from the epoch: enough for a test.
            while utc_seconds(d[0] + 1, 1, 1, 0, 0, 0) / 86_400 <= days {
                d[0] += 1;
            }
            while d[1] < 12 && utc_seconds(d[0], d[1] + 1, 1, 0, 0, 0) / 86_400 <= days {
                d[1] += 1;
            }
            d[2] = days - utc_seconds(d[0], d[1], 1, 0, 0, 0) / 86_400 + 1;
            d
        },
    };

    fn at(spec: &str) -> Result<u64, BadTime> {
        parse(spec, NOW, &UTC)
    }

    #[test]
    fn ages_as_git_spells_them() {
        for (spec, ago) in [
            ("2.weeks", 14 * DAY),
            ("2.weeks.ago", 14 * DAY),
            ("3 days ago", 3 * DAY),
            ("3 days", 3 * DAY),
            ("1 hour", 3_600_000),
            ("90.minutes.ago", 5_400_000),
            ("45 seconds ago", 45_000),
            ("2weeks", 14 * DAY),
            ("1 week 2 days ago", 9 * DAY),
            ("1 month", 30 * DAY),
            ("1.year", 365 * DAY),
            ("yesterday", DAY),
            ("now", 0),
            ("  3 Days Ago ", 3 * DAY),
        ] {
            assert_eq!(at(spec), Ok(NOW - ago), "{spec}");
        }
    }

    #[test]
    fn dates_times_and_zones() {
        assert_eq!(utc_seconds(1970, 1, 1, 0, 0, 0), 0);
        assert_eq!(utc_seconds(2000, 2, 29, 0, 0, 0), 951_782_400);
        assert_eq!(utc_seconds(2026, 11, 10, 12, 0, 0) as u64 * 1000, NOW);
        let nov1 = utc_seconds(2026, 11, 1, 0, 0, 0) as u64 * 1000;
        for (spec, ms) in [
            ("2026-11-01", nov1),
            ("2026-11-01 14:00", nov1 + 14 * 3_600_000),
            ("2026-11-01T14:00:05", nov1 + 14 * 3_600_000 + 5000),
            ("2026-11-01T14:00:00Z", nov1 + 14 * 3_600_000),
            ("2026-11-01T14:00:00.25Z", nov1 + 14 * 3_600_000 + 250),
            ("2026-11-01T14:00:00+01:00", nov1 + 13 * 3_600_000),
            ("2026-11-01 14:00:00-02:30", nov1 + 16 * 3_600_000 + 1_800_000),
            ("today", NOW - NOW % DAY),
            ("@1794312000", NOW),
        ] {
            assert_eq!(at(spec), Ok(ms), "{spec}");
        }
    }

    #[test]
    fn anything_else_is_an_error_that_says_what_is_taken() {
        for spec in [
            "",
            "last tuesday",
            "3 fortnights",
            "2026-13-01",
            "2026-02-30",
            "2026-11-01 25:00",
            "2026-11-01T14",
            "2026-11-01T14:00:00+1",
            "weeks",
            "2.weeks.later",
            "@x",
            "-3 days",
            "99999999999999999999 days",
            "2026-1\u{e9}-01",
        ] {
            let e = at(spec).unwrap_err().to_string();
            assert!(e.contains("cannot read") && e.contains("2.weeks") && !e.contains('\n'), "{spec}: {e}");
        }
    }

    #[test]
    fn local_times_follow_the_machines_zone() {
        // Whatever the zone, a local wall-clock time and its Unix time differ by its offset.
        let t = local_to_unix([2026, 11, 1, 12, 0, 0]).unwrap();
        let (date, offset) = local_date_of(t as u64);
        assert_eq!(date, [2026, 11, 1]);
        assert_eq!(t + offset, utc_seconds(2026, 11, 1, 12, 0, 0));
        assert!(since_arg("2026-11-01").is_ok());
    }
}

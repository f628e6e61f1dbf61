//! Small formatting helpers shared by commands: times as people read them.

/// "YYYY-MM-DD HH:MM:SS +ZZZZ" in the local time zone (as `git log --date=iso` shows times), for
/// Unix seconds.
pub fn local_time(secs: u64) -> String {
    let (local, offset_secs) = to_local(secs);
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let off = offset_secs.unsigned_abs() / 60;
    format!("{} {sign}{:02}{:02}", utc_time(local), off / 60, off % 60)
}

/// "HH:MM" in the local time zone.
pub fn local_hhmm(secs: u64) -> String {
    let t = utc_time(to_local(secs).0);
    t.get(11..16).unwrap_or("--:--").to_string()
}

/// The local wall-clock seconds for Unix `secs`, and the zone's offset from UTC.
fn to_local(secs: u64) -> (u64, i64) {
    let t = secs as libc::time_t;
    // SAFETY: localtime_r writes into the tm we own and reads only `t`; both live for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let offset = if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() { 0 } else { tm.tm_gmtoff };
    (secs.saturating_add_signed(offset), offset)
}

/// "YYYY-MM-DD HH:MM:SS" (UTC) for Unix seconds, without a date library.
fn utc_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times() {
        for (secs, expected) in [
            (0, "1970-01-01 00:00:00"),
            (951_782_400, "2000-02-29 00:00:00"),
            (1_700_000_000, "2023-11-14 22:13:20"),
            (4_102_444_799, "2099-12-31 23:59:59"),
        ] {
            assert_eq!(super::utc_time(secs), expected);
        }
    }

    #[test]
    fn local_times_say_their_zone() {
        // The tests run with the machine's zone; the offset is there and consistent.
        let t = super::local_time(1_700_000_000);
        let (stamp, zone) = t.rsplit_once(' ').unwrap();
        assert_eq!(stamp.len(), "2023-11-14 22:13:20".len());
        assert!(zone.len() == 5 && zone.starts_with(['+', '-']), "{t}");
        assert_eq!(super::local_hhmm(1_700_000_000), &stamp[11..16]);
    }
}

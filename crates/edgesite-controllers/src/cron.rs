//! CronJob schedules: the standard five-field cron syntax (minute, hour, day of month, month,
//! day of week, with `*`, `?`, lists, ranges, steps and month/day names) and the descriptors
//! upstream accepts (`@yearly`/`@annually`, `@monthly`, `@weekly`, `@daily`/`@midnight`,
//! `@hourly`, `@every <duration>`), evaluated in a CronJob's `timeZone`.
//!
//! Time zones: `UTC` and its aliases, and the fixed-offset `Etc/GMT±N` zones. Named zones
//! with daylight-saving rules (`Europe/Paris`, ...) need the tz database, which the
//! controllers do not carry; [`TimeZone::parse`] refuses them.
//!
//! Pure calendar arithmetic on Unix seconds, no IO: the CronJob controller reads the time
//! from its clock and asks [`Schedule::next_after`].

use edgesite_api::time::{civil_from_days, days_from_civil};

/// Why a schedule or time zone is not accepted (robfig/cron's wording, which upstream shows).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// The schedule does not parse.
    #[error("{0}")]
    Schedule(String),
    /// The time zone is not one this controller can evaluate.
    #[error("unknown time zone {0}")]
    TimeZone(String),
}

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Bit sets of the allowed values of each field.
    Fields {
        minute: u64,
        hour: u64,
        dom: u64,
        month: u64,
        dow: u64,
        /// The day-of-month or day-of-week field was `*` or `?`: then both day fields must
        /// match, otherwise either one (cron's rule).
        day_star: bool,
    },
    /// `@every`: a fixed delay in whole seconds after the previous time.
    Every(i64),
}

/// A time zone a schedule is evaluated in: a fixed offset from UTC, in seconds east.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeZone {
    offset: i32,
}

impl TimeZone {
    /// UTC.
    pub const UTC: TimeZone = TimeZone { offset: 0 };

    /// The zone named by a CronJob's `spec.timeZone` (`None`: UTC, the controller's zone).
    pub fn parse(name: Option<&str>) -> Result<TimeZone, CronError> {
        let Some(name) = name else {
            return Ok(Self::UTC);
        };
        let bare = name.strip_prefix("Etc/").unwrap_or(name);
        match bare {
            "UTC" | "UCT" | "GMT" | "Zulu" | "Universal" | "Greenwich" | "GMT0" | "GMT+0"
            | "GMT-0" => return Ok(Self::UTC),
            _ => {}
        }
        // POSIX-style signs: `Etc/GMT+5` is five hours *behind* UTC.
        if name.starts_with("Etc/GMT")
            && let Some(rest) = bare.strip_prefix("GMT")
            && let Some((sign, hours)) = rest
                .strip_prefix('+')
                .map(|h| (-1, h))
                .or_else(|| rest.strip_prefix('-').map(|h| (1, h)))
            && !hours.starts_with('0')
            && let Ok(h) = hours.parse::<i32>()
            && ((sign == -1 && h <= 12) || (sign == 1 && h <= 14))
        {
            return Ok(TimeZone {
                offset: sign * h * 3600,
            });
        }
        Err(CronError::TimeZone(name.to_owned()))
    }

    /// Seconds east of UTC.
    pub fn offset_seconds(self) -> i32 {
        self.offset
    }

    /// `unix` as RFC 3339 in this zone (`2026-11-26T12:00:00Z`, `...T07:00:00-05:00`), as
    /// upstream writes the scheduled-timestamp annotation.
    pub fn format_rfc3339(self, unix: i64) -> String {
        let local = unix + i64::from(self.offset);
        let mut s = edgesite_api::time::format_rfc3339(local);
        if self.offset != 0 {
            s.pop();
            let sign = if self.offset < 0 { '-' } else { '+' };
            let abs = self.offset.unsigned_abs();
            s.push_str(&format!("{sign}{:02}:{:02}", abs / 3600, (abs % 3600) / 60));
        }
        s
    }
}

/// How far ahead [`Schedule::next_after`] looks before deciding a schedule never fires
/// (`0 0 30 2 *`): robfig/cron gives up after five years too.
const SEARCH_YEARS: i64 = 5;

impl Schedule {
    /// Parses a CronJob `spec.schedule`.
    pub fn parse(spec: &str) -> Result<Schedule, CronError> {
        let err = |m: String| CronError::Schedule(m);
        let spec = spec.trim();
        if let Some(d) = spec.strip_prefix('@') {
            let fields = |m: &str, h: &str, dom: &str, mon: &str, dow: &str| {
                Schedule::parse(&format!("{m} {h} {dom} {mon} {dow}"))
            };
            return match d {
                "yearly" | "annually" => fields("0", "0", "1", "1", "*"),
                "monthly" => fields("0", "0", "1", "*", "*"),
                "weekly" => fields("0", "0", "*", "*", "0"),
                "daily" | "midnight" => fields("0", "0", "*", "*", "*"),
                "hourly" => fields("0", "*", "*", "*", "*"),
                _ => {
                    match d.strip_prefix("every ") {
                        Some(dur) => {
                            let nanos = parse_go_duration(dur.trim()).ok_or_else(|| {
                            err(format!("failed to parse duration {spec}: time: invalid duration \"{}\"", dur.trim()))
                        })?;
                            // Whole seconds, at least one (robfig's `Every`).
                            Ok(Schedule(Kind::Every((nanos / 1_000_000_000).max(1))))
                        }
                        None => Err(err(format!("unrecognized descriptor: {spec}"))),
                    }
                }
            };
        }
        let fields: Vec<&str> = spec.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(err(format!(
                "expected exactly 5 fields, found {}: {spec}",
                fields.len()
            )));
        }
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let (minute, _) = parse_field(fields[0], 0, 59, &[], 0).map_err(err)?;
        let (hour, _) = parse_field(fields[1], 0, 23, &[], 0).map_err(err)?;
        let (dom, dom_star) = parse_field(fields[2], 1, 31, &[], 0).map_err(err)?;
        let (month, _) = parse_field(fields[3], 1, 12, MONTHS, 1).map_err(err)?;
        let (dow, dow_star) = parse_field(fields[4], 0, 6, DAYS, 0).map_err(err)?;
        Ok(Schedule(Kind::Fields {
            minute,
            hour,
            dom,
            month,
            dow,
            day_star: dom_star || dow_star,
        }))
    }

    /// The first time strictly after `after` (Unix seconds) that the schedule fires in `tz`,
    /// or `None` if it never does.
    pub fn next_after(&self, after: i64, tz: TimeZone) -> Option<i64> {
        let (minute, hour, dom, month, dow, day_star) = match self.0 {
            Kind::Every(secs) => return after.checked_add(secs),
            Kind::Fields {
                minute,
                hour,
                dom,
                month,
                dow,
                day_star,
            } => (minute, hour, dom, month, dow, day_star),
        };
        let off = i64::from(tz.offset);
        // Work in local seconds, starting at the next whole minute.
        let mut t = (after + off).div_euclid(60) * 60 + 60;
        let limit = t + SEARCH_YEARS * 366 * 86_400;
        let bit = |set: u64, v: i64| set & (1u64 << v) != 0;
        while t <= limit {
            let days = t.div_euclid(86_400);
            let (y, m, d) = civil_from_days(days);
            if !bit(month, m) {
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                t = days_from_civil(ny, nm, 1) * 86_400;
                continue;
            }
            let wd = (days + 4).rem_euclid(7); // 1970-01-01 was a Thursday.
            let day_ok = if day_star {
                bit(dom, d) && bit(dow, wd)
            } else {
                bit(dom, d) || bit(dow, wd)
            };
            if !day_ok {
                t = (days + 1) * 86_400;
                continue;
            }
            let secs = t.rem_euclid(86_400);
            let (h, mi) = (secs / 3600, (secs % 3600) / 60);
            if !bit(hour, h) {
                t = days * 86_400 + (h + 1) * 3600;
                continue;
            }
            if !bit(minute, mi) {
                t += 60;
                continue;
            }
            return Some(t - off);
        }
        None
    }
}

/// One cron field: its set of values, and whether it was a bare `*`/`?` (cron's "star").
fn parse_field(
    field: &str,
    min: u32,
    max: u32,
    names: &[&str],
    base: u32,
) -> Result<(u64, bool), String> {
    let mut set = 0u64;
    let mut star = false;
    for part in field.split(',') {
        let (bits, s) = parse_range(part, min, max, names, base)?;
        set |= bits;
        star |= s;
    }
    Ok((set, star))
}

fn parse_range(
    expr: &str,
    min: u32,
    max: u32,
    names: &[&str],
    base: u32,
) -> Result<(u64, bool), String> {
    let num = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + base);
        }
        s.parse::<u32>().map_err(|_| {
            format!("failed to parse int from {s}: strconv.Atoi: parsing \"{s}\": invalid syntax")
        })
    };
    let (range, step) = match expr.split_once('/') {
        Some((r, s)) => (r, Some(num(s)?)),
        None => (expr, None),
    };
    let mut star = false;
    let (lo, hi) = match range {
        "*" | "?" => {
            star = step.is_none_or(|s| s == 1);
            (min, max)
        }
        r => match r.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let v = num(r)?;
                (v, if step.is_some() { max } else { v })
            }
        },
    };
    if lo < min {
        return Err(format!(
            "beginning of range ({lo}) below minimum ({min}): {expr}"
        ));
    }
    if hi > max {
        return Err(format!("end of range ({hi}) above maximum ({max}): {expr}"));
    }
    if lo > hi {
        return Err(format!(
            "beginning of range ({lo}) beyond end of range ({hi}): {expr}"
        ));
    }
    let step = step.unwrap_or(1);
    if step == 0 {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    let mut bits = 0u64;
    let mut v = lo;
    while v <= hi {
        bits |= 1 << v;
        v += step;
    }
    Ok((bits, star))
}

/// A Go `time.Duration` string (`90s`, `1h30m`, `1.5h`, `500ms`) in nanoseconds; positive only.
fn parse_go_duration(s: &str) -> Option<i64> {
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let value: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    (total.is_finite() && total > 0.0 && total < i64::MAX as f64).then_some(total as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgesite_api::table::parse_rfc3339;

    fn t(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    fn next(spec: &str, after: &str) -> String {
        next_in(spec, after, TimeZone::UTC)
    }

    fn next_in(spec: &str, after: &str, tz: TimeZone) -> String {
        let s = Schedule::parse(spec).unwrap();
        edgesite_api::time::format_rfc3339(s.next_after(t(after), tz).unwrap())
    }

    #[test]
    fn standard_fields() {
        assert_eq!(
            next("* * * * *", "2026-11-26T12:00:00Z"),
            "2026-11-26T12:01:00Z"
        );
        assert_eq!(
            next("* * * * *", "2026-11-26T12:00:59Z"),
            "2026-11-26T12:01:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "2026-11-26T12:01:00Z"),
            "2026-11-26T12:15:00Z"
        );
        assert_eq!(
            next("5 4 * * *", "2026-11-26T12:00:00Z"),
            "2026-11-27T04:05:00Z"
        );
        assert_eq!(
            next("0 0 1 1 *", "2026-11-26T12:00:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("30 9-17/4 * * *", "2026-11-26T10:00:00Z"),
            "2026-11-26T13:30:00Z"
        );
        assert_eq!(
            next("0 22 * * 1-5", "2026-11-27T23:00:00Z"),
            "2026-11-30T22:00:00Z"
        );
        assert_eq!(
            next("0 0 * jan,JUL *", "2026-02-01T00:00:00Z"),
            "2026-07-01T00:00:00Z"
        );
        assert_eq!(
            next("0 12 * * sun", "2026-11-26T00:00:00Z"),
            "2026-11-29T12:00:00Z"
        );
        assert_eq!(
            next("0 0 ? * *", "2026-12-31T23:59:00Z"),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(
            next("1,2,59 * * * *", "2026-11-26T12:02:00Z"),
            "2026-11-26T12:59:00Z"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // Both restricted: either matches (the 1st, or any Monday).
        assert_eq!(
            next("0 0 1 * mon", "2026-11-26T00:00:00Z"),
            "2026-11-30T00:00:00Z"
        );
        assert_eq!(
            next("0 0 1 * mon", "2026-11-30T00:00:00Z"),
            "2026-12-01T00:00:00Z"
        );
        // One is a star: both must match.
        assert_eq!(
            next("0 0 * * mon", "2026-11-30T00:00:00Z"),
            "2026-12-07T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * *", "2026-11-26T00:00:00Z"),
            "2026-12-13T00:00:00Z"
        );
    }

    #[test]
    fn descriptors() {
        let at = "2026-11-26T12:34:56Z";
        assert_eq!(next("@hourly", at), "2026-11-26T13:00:00Z");
        assert_eq!(next("@daily", at), "2026-11-27T00:00:00Z");
        assert_eq!(next("@midnight", at), "2026-11-27T00:00:00Z");
        assert_eq!(next("@weekly", at), "2026-11-29T00:00:00Z");
        assert_eq!(next("@monthly", at), "2026-12-01T00:00:00Z");
        assert_eq!(next("@yearly", at), "2027-01-01T00:00:00Z");
        assert_eq!(next("@annually", at), "2027-01-01T00:00:00Z");
        assert_eq!(next("@every 90s", at), "2026-11-26T12:36:26Z");
        assert_eq!(next("@every 1h30m", at), "2026-11-26T14:04:56Z");
        assert_eq!(next("@every 1.5h", at), "2026-11-26T14:04:56Z");
        assert_eq!(next("@every 10ms", at), "2026-11-26T12:34:57Z");
    }

    #[test]
    fn never_firing_schedule() {
        let s = Schedule::parse("0 0 30 2 *").unwrap();
        assert_eq!(s.next_after(t("2026-01-01T00:00:00Z"), TimeZone::UTC), None);
    }

    #[test]
    fn errors_as_upstream_words_them() {
        let e = |s: &str| Schedule::parse(s).unwrap_err().to_string();
        assert_eq!(e("* * * *"), "expected exactly 5 fields, found 4: * * * *");
        assert_eq!(e("60 * * * *"), "end of range (60) above maximum (59): 60");
        assert_eq!(e("* * * * 7"), "end of range (7) above maximum (6): 7");
        assert_eq!(
            e("* * 0 * *"),
            "beginning of range (0) below minimum (1): 0"
        );
        assert_eq!(
            e("5-1 * * * *"),
            "beginning of range (5) beyond end of range (1): 5-1"
        );
        assert_eq!(
            e("*/0 * * * *"),
            "step of range should be a positive number: */0"
        );
        assert_eq!(
            e("x * * * *"),
            "failed to parse int from x: strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(e("@fortnightly"), "unrecognized descriptor: @fortnightly");
        assert!(e("@every soon").starts_with("failed to parse duration"));
    }

    #[test]
    fn time_zones() {
        assert_eq!(TimeZone::parse(None), Ok(TimeZone::UTC));
        assert_eq!(TimeZone::parse(Some("Etc/UTC")), Ok(TimeZone::UTC));
        assert_eq!(TimeZone::parse(Some("UTC")), Ok(TimeZone::UTC));
        let minus5 = TimeZone::parse(Some("Etc/GMT+5")).unwrap();
        assert_eq!(minus5.offset_seconds(), -5 * 3600);
        let plus14 = TimeZone::parse(Some("Etc/GMT-14")).unwrap();
        assert_eq!(plus14.offset_seconds(), 14 * 3600);
        assert!(TimeZone::parse(Some("Etc/GMT+13")).is_err());
        assert!(TimeZone::parse(Some("Europe/Paris")).is_err());
        assert!(TimeZone::parse(Some("GMT+5")).is_err());
        // 09:00 at UTC-5 is 14:00 UTC.
        assert_eq!(
            next_in("0 9 * * *", "2026-11-26T12:00:00Z", minus5),
            "2026-11-26T14:00:00Z"
        );
        assert_eq!(
            next_in("0 9 * * *", "2026-11-26T15:00:00Z", minus5),
            "2026-11-27T14:00:00Z"
        );
        assert_eq!(
            minus5.format_rfc3339(t("2026-11-26T14:00:00Z")),
            "2026-11-26T09:00:00-05:00"
        );
        assert_eq!(
            TimeZone::UTC.format_rfc3339(t("2026-11-26T14:00:00Z")),
            "2026-11-26T14:00:00Z"
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1h2m3s"), Some(3_723_000_000_000));
        assert_eq!(parse_go_duration("500ms"), Some(500_000_000));
        assert_eq!(parse_go_duration("5"), None);
        assert_eq!(parse_go_duration("-5s"), None);
        assert_eq!(parse_go_duration(""), None);
    }
}

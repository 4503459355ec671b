//! Parser for the date and time strings SQLite's date functions accept, into Postgres'
//! binary representation (days and microseconds since 2000-01-01).

/// Microseconds in a day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01 (the Postgres epoch).
pub const UNIX_TO_PG_DAYS: i64 = 10_957;

/// A parsed date, time, or both, with an optional UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed {
    /// Days since 2000-01-01 (present when the string had a date).
    pub days: Option<i32>,
    /// Microseconds since midnight (0 when the string had no time).
    pub micros: i64,
    /// Whether the string had a time part.
    pub has_time: bool,
    /// Offset east of UTC in seconds, when the string had `Z` or `+HH:MM`.
    pub offset_secs: Option<i32>,
}

/// Why a date or time string was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DateError {
    /// Not in any format SQLite accepts.
    Format,
    /// A field is out of range (month 13, February 30, hour 25, year 0).
    Range(&'static str),
    /// More than microsecond precision, which Postgres would round.
    Precision,
}

impl std::fmt::Display for DateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DateError::Format => f.write_str(
                "not a date/time in a format SQLite accepts (YYYY-MM-DD[ HH:MM[:SS[.ffffff]]][+HH:MM|Z])",
            ),
            DateError::Range(what) => write!(f, "{what} is out of range"),
            DateError::Precision => f.write_str("has more than microsecond precision"),
        }
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let end = self.pos.checked_add(n)?;
        let part = self.s.get(self.pos..end)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos = end;
        Some(
            part.iter()
                .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0')),
        )
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    fn skip_spaces(&mut self) {
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
    }
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.f...]]` (space or `T`), or `HH:MM[:SS[.f...]]`,
/// each optionally followed by `Z` or `[+-]HH:MM`.
pub fn parse(text: &str) -> Result<Parsed, DateError> {
    let mut c = Cursor {
        s: text.trim().as_bytes(),
        pos: 0,
    };
    let is_date = c.s.len() >= 10 && c.s.get(4) == Some(&b'-');
    let mut days = None;
    let mut has_time = false;
    let mut micros = 0;
    if is_date {
        let y = c.digits(4).ok_or(DateError::Format)?;
        if !c.eat(b'-') {
            return Err(DateError::Format);
        }
        let m = c.digits(2).ok_or(DateError::Format)?;
        if !c.eat(b'-') {
            return Err(DateError::Format);
        }
        let d = c.digits(2).ok_or(DateError::Format)?;
        days = Some(days_from_date(y, m, d)?);
        if c.eat(b'T')
            || (c.peek() == Some(b' ') && c.s.get(c.pos + 1).is_some_and(u8::is_ascii_digit))
        {
            c.skip_spaces();
            micros = parse_time(&mut c)?;
            has_time = true;
        }
    } else {
        micros = parse_time(&mut c)?;
        has_time = true;
    }
    c.skip_spaces();
    let offset_secs = match c.peek() {
        None => None,
        Some(b'Z') | Some(b'z') => {
            c.pos += 1;
            Some(0)
        }
        Some(sign @ (b'+' | b'-')) => {
            c.pos += 1;
            let h = c.digits(2).ok_or(DateError::Format)?;
            if !c.eat(b':') {
                return Err(DateError::Format);
            }
            let m = c.digits(2).ok_or(DateError::Format)?;
            if h > 14 || m > 59 {
                return Err(DateError::Range("UTC offset"));
            }
            let secs = (h * 3600 + m * 60) as i32;
            Some(if sign == b'-' { -secs } else { secs })
        }
        Some(_) => return Err(DateError::Format),
    };
    if c.pos != c.s.len() {
        return Err(DateError::Format);
    }
    Ok(Parsed {
        days,
        micros,
        has_time,
        offset_secs,
    })
}

fn parse_time(c: &mut Cursor<'_>) -> Result<i64, DateError> {
    let h = c.digits(2).ok_or(DateError::Format)?;
    if !c.eat(b':') {
        return Err(DateError::Format);
    }
    let m = c.digits(2).ok_or(DateError::Format)?;
    let mut s = 0;
    let mut frac: i64 = 0;
    if c.eat(b':') {
        s = c.digits(2).ok_or(DateError::Format)?;
        if c.eat(b'.') {
            let start = c.pos;
            while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                let d = i64::from(c.s[c.pos] - b'0');
                let place = c.pos - start;
                if place < 6 {
                    frac += d * 10i64.pow(5 - place as u32);
                } else if d != 0 {
                    return Err(DateError::Precision);
                }
                c.pos += 1;
            }
            if c.pos == start {
                return Err(DateError::Format);
            }
        }
    }
    if h > 23 {
        return Err(DateError::Range("hour"));
    }
    if m > 59 {
        return Err(DateError::Range("minute"));
    }
    if s > 59 {
        return Err(DateError::Range("second"));
    }
    Ok((i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s)) * 1_000_000 + frac)
}

fn is_leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

fn days_from_date(y: u32, m: u32, d: u32) -> Result<i32, DateError> {
    if y == 0 {
        return Err(DateError::Range("year 0"));
    }
    if !(1..=12).contains(&m) {
        return Err(DateError::Range("month"));
    }
    let month_len = match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if d == 0 || d > month_len {
        return Err(DateError::Range("day of month"));
    }
    Ok((days_from_civil(i64::from(y), m, d) - UNIX_TO_PG_DAYS) as i32)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sqlalchemy_formats() {
        let p = parse("2024-02-29 13:45:01.123456").unwrap();
        assert_eq!(p.days, Some(days_from_date(2024, 2, 29).unwrap()));
        assert_eq!(p.micros, (13 * 3600 + 45 * 60 + 1) * 1_000_000 + 123_456);
        assert_eq!(parse("2000-01-01").unwrap().days, Some(0));
        assert!(!parse("2000-01-01").unwrap().has_time);
        assert_eq!(parse("2000-01-01T00:00:00Z").unwrap().offset_secs, Some(0));
        assert_eq!(
            parse("2000-01-01 10:00:00+03:00").unwrap().offset_secs,
            Some(10_800)
        );
        assert_eq!(
            parse("2000-01-01 10:00:00.5-01:30").unwrap().offset_secs,
            Some(-5400)
        );
        assert_eq!(parse("12:30").unwrap().micros, 45_000_000_000);
        assert_eq!(parse("2000-01-01 10:00").unwrap().micros, 36_000_000_000);
    }

    #[test]
    fn rejects_what_postgres_rejects() {
        for bad in [
            "",
            "abc",
            "2023-02-30",
            "2023-13-01",
            "0000-00-00 00:00:00",
            "2023-01-01 24:00:00",
            "2023-1-1",
            "2023-01-01 10:00:00.",
            "1700000000",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse("2023-01-01 10:00:00.1234567"),
            Err(DateError::Precision)
        );
        assert!(parse("2023-01-01 10:00:00.1234560").is_ok());
    }

    #[test]
    fn civil_round_trip() {
        for z in [-800_000, -1, 0, 1, 10_957, 19_000, 2_000_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }
}

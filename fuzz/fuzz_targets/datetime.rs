#![no_main]
//! Date/time strings: never panic; what parses is within Postgres' range and a real time of day.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(p) = sqlite2pg::datetime::parse(data) {
        assert!((0..sqlite2pg::datetime::MICROS_PER_DAY).contains(&p.micros));
        if let Some(d) = p.days {
            let (y, _, _) = sqlite2pg::datetime::civil_from_days(i64::from(d) + sqlite2pg::datetime::UNIX_TO_PG_DAYS);
            assert!((1..=9999).contains(&y));
        }
    }
});

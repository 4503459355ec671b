//! How SQLite holds a column's values: storage class, the text form of dates, booleans and
//! UUIDs. `sqlite::form` learns them from a file; `pg::decode` writes Postgres values back in
//! them.

/// A SQLite storage class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// INTEGER
    Integer,
    /// REAL
    Real,
    /// TEXT
    Text,
    /// BLOB
    Blob,
}

/// Digits after the seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fraction {
    /// Always this many (0: none), more only when a value needs them.
    Fixed(u8),
    /// Six, or none at all when they are zero (Python's `isoformat`).
    SixOrNone,
}

/// What follows the time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suffix {
    /// Nothing.
    None,
    /// `Z`.
    Z,
    /// `+00:00` (values come back in UTC; an original other offset is not kept).
    Offset,
}

/// The text form of a column's dates and times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTemplate {
    /// `T` or a space between date and time.
    pub separator: char,
    /// Seconds are written (`HH:MM:SS`, else `HH:MM`).
    pub seconds: bool,
    /// Digits after the seconds.
    pub fraction: Fraction,
    /// After the time.
    pub suffix: Suffix,
}

impl Default for DateTemplate {
    /// SQLAlchemy's form (`2024-05-01 09:30:00.000000`), the writer this tool meets most.
    fn default() -> Self {
        DateTemplate {
            separator: ' ',
            seconds: true,
            fraction: Fraction::Fixed(6),
            suffix: Suffix::None,
        }
    }
}

impl DateTemplate {
    /// `HH:MM[:SS[.f]]` plus the suffix, for microseconds since midnight.
    pub fn time(&self, micros: i64) -> String {
        let (secs, frac) = (micros / 1_000_000, micros % 1_000_000);
        let mut out = format!("{:02}:{:02}", secs / 3600, secs / 60 % 60);
        if self.seconds || secs % 60 != 0 || frac != 0 {
            out.push_str(&format!(":{:02}", secs % 60));
        }
        let digits = match self.fraction {
            Fraction::SixOrNone if frac == 0 => 0,
            Fraction::SixOrNone => 6,
            // Widened when the value has more than the column's digits: exact over pretty.
            Fraction::Fixed(n) => {
                let n = usize::from(n.min(6));
                let kept = frac / 10_i64.pow(6 - n as u32) * 10_i64.pow(6 - n as u32);
                if kept == frac { n } else { 6 }
            }
        };
        if digits > 0 {
            let six = format!("{frac:06}");
            out.push('.');
            out.push_str(&six[..digits]);
        }
        out.push_str(match self.suffix {
            Suffix::None => "",
            Suffix::Z => "Z",
            Suffix::Offset => "+00:00",
        });
        out
    }
}

/// How one column's values look in SQLite.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColumnForm {
    /// The storage class most of its values have; `None` when it has none.
    pub class: Option<Class>,
    /// The form of its date/time text.
    pub date: DateTemplate,
    /// `(true, false)` spellings of booleans kept as text.
    pub bool_words: Option<(String, String)>,
    /// UUID text in capitals.
    pub uuid_upper: bool,
    /// UUID text without hyphens.
    pub uuid_bare: bool,
    /// Date/time text in more than one form (a separator, seconds or suffix that varies):
    /// values come back in the first.
    pub mixed_date_forms: bool,
    /// Date/time text with an offset other than UTC: it comes back in UTC.
    pub local_offsets: bool,
    /// How its JSON text is written (`None`: no JSON seen; jsonb comes back as Postgres
    /// writes it).
    pub json: Option<crate::jsontext::JsonForm>,
}

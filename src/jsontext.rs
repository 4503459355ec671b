//! JSON as text: a parser that keeps what `jsonb` forgets (key order, number spelling, the
//! writer's spacing and escapes) and a writer in a learned [`JsonForm`]. The reverse stream
//! writes `jsonb` back into SQLite as the app's own serializer wrote it, because an app on
//! SQLite compares JSON as text (a lookup by `json.dumps(key)`, a UNIQUE index).

/// A parsed JSON value; numbers keep their spelling, objects their order.
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    /// `null`
    Null,
    /// `true` or `false`
    Bool(bool),
    /// A number, as written.
    Number(String),
    /// A string, unescaped.
    String(String),
    /// An array.
    Array(Vec<Node>),
    /// An object, in its order.
    Object(Vec<(String, Node)>),
}

/// How one column's JSON text is written, learned from the values SQLite holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonForm {
    /// `", "` and `": "` (Python's `json.dumps`, Postgres' `jsonb`), not `","` and `":"`
    /// (`JSON.stringify`, serde_json).
    pub spaced: bool,
    /// Characters outside ASCII as `\uXXXX` (Python's default `ensure_ascii`).
    pub ascii_only: bool,
    /// Object keys in the order the app writes them, first seen first.
    pub key_order: Vec<String>,
}

/// What the text of some JSON values shows of its writer.
#[derive(Debug, Clone, Default)]
pub struct Learned {
    spaced: usize,
    compact: usize,
    escaped_wide: usize,
    raw_wide: usize,
    keys: Vec<String>,
}

/// Keys remembered per column at most.
const MAX_KEYS: usize = 1_000;
/// Nesting parsed at most (deeper text is left as it is).
const MAX_DEPTH: usize = 256;

impl Learned {
    /// Reads one value's text; text that is not JSON teaches nothing.
    pub fn read(&mut self, text: &str) {
        let mut p = Parser::new(text, Some(self));
        if p.value(0).is_some() {
            p.ws();
        }
    }

    /// The form learned, `None` when no value showed any.
    pub fn form(self) -> Option<JsonForm> {
        let seen = self.spaced + self.compact + self.escaped_wide + self.raw_wide;
        if seen == 0 && self.keys.is_empty() {
            return None;
        }
        Some(JsonForm {
            spaced: self.spaced >= self.compact,
            ascii_only: self.escaped_wide > 0 && self.raw_wide == 0,
            key_order: self.keys,
        })
    }
}

/// Parses JSON text; `None` when it is not JSON (or nests deeper than 256).
pub fn parse(text: &str) -> Option<Node> {
    let mut p = Parser::new(text, None);
    let v = p.value(0)?;
    p.ws();
    (p.pos == p.b.len()).then_some(v)
}

/// Writes `node` as the form says: known keys in the app's order (others after them, in the
/// order given), its separators and escapes.
pub fn render(node: &Node, form: &JsonForm) -> String {
    let mut out = String::new();
    write(node, form, &mut out);
    out
}

fn write(node: &Node, form: &JsonForm, out: &mut String) {
    let (comma, colon) = if form.spaced {
        (", ", ": ")
    } else {
        (",", ":")
    };
    match node {
        Node::Null => out.push_str("null"),
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Number(n) => out.push_str(n),
        Node::String(s) => write_string(s, form.ascii_only, out),
        Node::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                write(v, form, out);
            }
            out.push(']');
        }
        Node::Object(entries) => {
            let rank = |k: &str| {
                form.key_order
                    .iter()
                    .position(|x| x == k)
                    .unwrap_or(usize::MAX)
            };
            let mut sorted: Vec<&(String, Node)> = entries.iter().collect();
            sorted.sort_by_key(|(k, _)| rank(k));
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                write_string(k, form.ascii_only, out);
                out.push_str(colon);
                write(v, form, out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, ascii_only: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ascii_only && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a, 'l> {
    b: &'a [u8],
    s: &'a str,
    pos: usize,
    learn: Option<&'l mut Learned>,
}

impl<'a, 'l> Parser<'a, 'l> {
    fn new(s: &'a str, learn: Option<&'l mut Learned>) -> Self {
        Parser {
            b: s.as_bytes(),
            s,
            pos: 0,
            learn,
        }
    }

    fn ws(&mut self) {
        while matches!(self.b.get(self.pos), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// After `,` or `:`: notes whether the writer put a space there.
    fn separator(&mut self) {
        let spaced = self.b.get(self.pos) == Some(&b' ');
        if let Some(l) = self.learn.as_deref_mut() {
            if spaced {
                l.spaced += 1;
            } else {
                l.compact += 1;
            }
        }
        self.ws();
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn value(&mut self, depth: usize) -> Option<Node> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        match *self.b.get(self.pos)? {
            b'{' => {
                self.pos += 1;
                let mut entries = Vec::new();
                self.ws();
                if self.eat(b'}') {
                    return Some(Node::Object(entries));
                }
                loop {
                    self.ws();
                    let key = self.string()?;
                    if let Some(l) = self.learn.as_deref_mut()
                        && l.keys.len() < MAX_KEYS
                        && !l.keys.contains(&key)
                    {
                        l.keys.push(key.clone());
                    }
                    self.ws();
                    if !self.eat(b':') {
                        return None;
                    }
                    self.separator();
                    entries.push((key, self.value(depth + 1)?));
                    self.ws();
                    if self.eat(b'}') {
                        return Some(Node::Object(entries));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                    self.separator();
                }
            }
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                self.ws();
                if self.eat(b']') {
                    return Some(Node::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    if self.eat(b']') {
                        return Some(Node::Array(items));
                    }
                    if !self.eat(b',') {
                        return None;
                    }
                    self.separator();
                }
            }
            b'"' => self.string().map(Node::String),
            b't' => self.word("true", Node::Bool(true)),
            b'f' => self.word("false", Node::Bool(false)),
            b'n' => self.word("null", Node::Null),
            _ => self.number(),
        }
    }

    fn word(&mut self, w: &str, node: Node) -> Option<Node> {
        if self.b[self.pos..].starts_with(w.as_bytes()) {
            self.pos += w.len();
            Some(node)
        } else {
            None
        }
    }

    fn number(&mut self) -> Option<Node> {
        let start = self.pos;
        self.eat(b'-');
        let digits = |p: &mut Self| {
            let from = p.pos;
            while p.b.get(p.pos).is_some_and(u8::is_ascii_digit) {
                p.pos += 1;
            }
            p.pos > from
        };
        if !digits(self) {
            return None;
        }
        if self.eat(b'.') && !digits(self) {
            return None;
        }
        if self.eat(b'e') || self.eat(b'E') {
            let _ = self.eat(b'+') || self.eat(b'-');
            if !digits(self) {
                return None;
            }
        }
        Some(Node::Number(self.s[start..self.pos].to_string()))
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.pos..self.pos + 4)?;
        let v = u32::from_str_radix(h, 16).ok()?;
        self.pos += 4;
        Some(v)
    }

    fn string(&mut self) -> Option<String> {
        if !self.eat(b'"') {
            return None;
        }
        let mut out = String::new();
        loop {
            let rest = self.s.get(self.pos..)?;
            let c = rest.chars().next()?;
            self.pos += c.len_utf8();
            match c {
                '"' => return Some(out),
                '\\' => {
                    let e = *self.b.get(self.pos)?;
                    self.pos += 1;
                    out.push(match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if !(self.eat(b'\\') && self.eat(b'u')) {
                                    return None;
                                }
                                let lo = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else {
                                hi
                            };
                            if code > 0x7e
                                && let Some(l) = self.learn.as_deref_mut()
                            {
                                l.escaped_wide += 1;
                            }
                            char::from_u32(code)?
                        }
                        _ => return None,
                    });
                }
                c if (c as u32) < 0x20 => return None,
                c => {
                    if !c.is_ascii()
                        && let Some(l) = self.learn.as_deref_mut()
                    {
                        l.raw_wide += 1;
                    }
                    out.push(c);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learned(texts: &[&str]) -> JsonForm {
        let mut l = Learned::default();
        for t in texts {
            l.read(t);
        }
        l.form().expect("a form")
    }

    #[test]
    fn jsonb_text_comes_back_as_pythons_json_dumps_wrote_it() {
        let form = learned(&[r#"{"flow": "flow-0", "n": 0}"#, r#"{"env": "caf\u00e9"}"#]);
        assert!(form.spaced && form.ascii_only);
        // Postgres' jsonb orders keys by length, and keeps the characters as they are.
        let from_pg = parse(r#"{"n": 3, "env": "café", "flow": "flow-2"}"#).unwrap();
        assert_eq!(
            render(&from_pg, &form),
            r#"{"flow": "flow-2", "n": 3, "env": "caf\u00e9"}"#
        );
    }

    #[test]
    fn compact_writers_stay_compact() {
        let form = learned(&[r#"{"b":[1,2.50],"a":"é"}"#]);
        assert!(!form.spaced && !form.ascii_only);
        let v = parse(r#"{"a": "é", "b": [1, 2.50], "new": null}"#).unwrap();
        assert_eq!(render(&v, &form), r#"{"b":[1,2.50],"a":"é","new":null}"#);
    }

    #[test]
    fn escapes_and_surrogates_round_trip() {
        let text = r#"["a\"b\\c\n\u0001", "\ud83d\ude00"]"#;
        let v = parse(text).unwrap();
        assert_eq!(
            v,
            Node::Array(vec![
                Node::String("a\"b\\c\n\u{1}".into()),
                Node::String("😀".into())
            ])
        );
        let form = JsonForm {
            spaced: true,
            ascii_only: true,
            key_order: Vec::new(),
        };
        assert_eq!(render(&v, &form), text);
    }

    #[test]
    fn text_that_is_not_json_is_refused() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01x",
            "\"\u{1}\"",
            "[1] 2",
            "tru",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let deep = "[".repeat(300) + &"]".repeat(300);
        assert_eq!(parse(&deep), None);
    }

    proptest::proptest! {
        /// Whatever serde_json writes, this reads to the same value, and writes it back to
        /// text serde_json reads as the same value.
        #[test]
        fn any_json_value_round_trips(v in json_value()) {
            let text = v.to_string();
            let node = parse(&text).expect("serde_json's text parses");
            // Numbers keep their spelling: compared as serde_json reads that spelling.
            let v: serde_json::Value = serde_json::from_str(&text).expect("serde_json's text");
            for spaced in [true, false] {
                for ascii_only in [true, false] {
                    let form = JsonForm { spaced, ascii_only, key_order: vec!["b".into(), "a".into()] };
                    let back: serde_json::Value = serde_json::from_str(&render(&node, &form)).expect("rendered text is JSON");
                    proptest::prop_assert_eq!(&back, &v);
                }
            }
        }

        /// Any text: parsed or refused, never a panic.
        #[test]
        fn any_text_is_parsed_or_refused(s in "\\PC{0,60}") {
            let _ = parse(&s);
            Learned::default().read(&s);
        }
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            (-1e9f64..1e9).prop_map(|f| serde_json::json!(f)),
            "\\PC{0,12}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z]{1,3}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}

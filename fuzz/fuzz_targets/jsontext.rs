#![no_main]
//! JSON text: never panics; what parses, written back in any form, parses to the same value.
use libfuzzer_sys::fuzz_target;
use sqlite2pg::jsontext::{JsonForm, Learned, parse, render};

fuzz_target!(|data: &str| {
    let mut learned = Learned::default();
    learned.read(data);
    let learned = learned.form();
    if let Some(node) = parse(data) {
        let forms = [
            learned,
            Some(JsonForm { spaced: false, ascii_only: true, key_order: Vec::new() }),
        ];
        for form in forms.into_iter().flatten() {
            let text = render(&node, &form);
            let again = parse(&text).expect("rendered JSON parses");
            assert_eq!(render(&again, &form), text);
        }
    }
});

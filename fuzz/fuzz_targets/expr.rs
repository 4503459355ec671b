#![no_main]
//! SQLite expressions, views and triggers: any text parses or is refused, and translation never
//! panics; what translates is never empty.
use libfuzzer_sys::fuzz_target;
use sqlite2pg::expr::{self, Column, Scope};
use sqlite2pg::model::Collation;
use sqlite2pg::model::PgType;

fuzz_target!(|data: &str| {
    let scope = Scope::table(
        "t",
        vec![
            Column::new("i", "INTEGER", PgType::Int8, Collation::Binary),
            Column::new("r", "REAL", PgType::Float8, Collation::Binary),
            Column::new("s", "TEXT", PgType::Text, Collation::Nocase),
            Column::new("d", "DATETIME", PgType::Timestamp { precision: None }, Collation::Binary),
        ],
    );
    if let Ok(e) = expr::parse(data) {
        if let Ok(t) = expr::translate(&e, &scope) {
            assert!(!t.sql.is_empty());
        }
        let _ = expr::condition(&e, &scope);
        let _ = expr::value_for(&e, &Scope::default(), &PgType::Text);
    }
    let _ = expr::view::reads(data);
    let lookup = |name: &str| {
        (name == "t").then(|| ("\"public\".\"t\"".to_string(), scope.relations[0].columns.clone()))
    };
    let _ = expr::view::translate(data, &["a".to_string()], &lookup);
    let table = |name: &str| {
        (name == "t").then(|| expr::trigger::Table {
            name: "\"public\".\"t\"".to_string(),
            columns: scope.relations[0].columns.clone(),
            key: vec!["i".to_string()],
            rowid_alias: Some("i".to_string()),
            lost_defaults: Vec::new(),
        })
    };
    if let Ok(p) = expr::trigger::translate_trigger(data, "\"public\".\"f\"", &table) {
        assert!(p.function.starts_with("CREATE FUNCTION") && p.trigger.starts_with("CREATE TRIGGER"));
    }
});

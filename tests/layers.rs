//! The layer rule of docs/design.md, read from the source: no module imports from a layer
//! above its own, and sqlite/ and pg/ never use each other. Test code (after `#[cfg(test)]`)
//! may reach anywhere.

use std::collections::BTreeMap;
use std::path::Path;

/// Each top-level module and its layer; a module may use its own layer and those below.
const LAYERS: &[(&str, u8)] = &[
    ("model", 0),
    ("conninfo", 0),
    ("fleet", 0),
    ("form", 0),
    ("jsontext", 0),
    ("typemap", 0),
    ("datetime", 0),
    ("expr", 0),
    ("framework", 0),
    ("phase", 0),
    ("window", 0),
    ("shutdown", 0),
    ("error", 0),
    ("sql", 0),
    ("config", 0),
    ("metrics", 0),
    ("sqlite", 1),
    ("pg", 1),
    ("plan", 2),
    ("replicate", 3),
    ("verify", 4),
    ("report", 5),
    ("switch", 6),
    ("cli", 7),
    ("main", 8),
    ("lib", 8),
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules that `crate::NAME` and `crate::{A, B::C}` name in `text`.
fn crate_paths(text: &str) -> Vec<String> {
    let word = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + 7..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let inner = &group[..group.find('}').unwrap_or(group.len())];
                out.extend(inner.split(',').map(word).filter(|w| !w.is_empty()));
            }
            None => out.push(word(rest)),
        }
    }
    out
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward = Vec::new();
    let mut unknown = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().to_string();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let Some(&own) = layer.get(top.as_str()) else {
            unknown.push(rel);
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for used in crate_paths(code) {
            let Some(&theirs) = layer.get(used.as_str()) else {
                continue;
            };
            let sides = ["sqlite", "pg"];
            if theirs > own
                || (sides.contains(&top.as_str()) && sides.contains(&used.as_str()) && used != top)
            {
                upward.push(format!("{rel} uses crate::{used}"));
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules without a layer (add them to LAYERS and to docs/design.md's module map): {unknown:?}"
    );
    upward.sort();
    upward.dedup();
    assert!(
        upward.is_empty(),
        "imports against the layer rule:\n{}",
        upward.join("\n")
    );
}

#[test]
fn the_rule_reads_every_form_of_a_crate_path() {
    // A path, and a group of paths: each is found with its first segment.
    assert_eq!(
        crate_paths(
            "use crate::switch::cutover; use crate::{pg, sqlite::capture}; crate::model::x"
        ),
        vec!["switch", "pg", "sqlite", "model"]
    );
}

#![no_main]
//! SQLite declared types: any text parses, and mapping is case-insensitive.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    let a = sqlite2pg::typemap::map_decltype(data);
    assert_eq!(a, sqlite2pg::typemap::map_decltype(&data.to_ascii_uppercase()));
    let _ = sqlite2pg::typemap::parse_pg_type_name(data);
});

//! The `sqlite2pg` command: cap the allocator's arenas, parse, set up logging, hand over to
//! `cli`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    sqlite2pg::cli::limit_malloc_arenas();
    let args = sqlite2pg::cli::Args::parse();
    sqlite2pg::cli::init_tracing(&args);
    match sqlite2pg::cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", sqlite2pg::cli::describe_error(&e));
            ExitCode::from(2)
        }
    }
}

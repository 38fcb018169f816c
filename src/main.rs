//! The `pushbridge` command.
#![forbid(unsafe_code)]

mod cli;

use std::process::ExitCode;

/// jemalloc (the default `jemalloc` feature): fewer CPU cycles per
/// notification than the system allocator; its settings are compiled in
/// (`.cargo/config.toml`) and can be overridden at run time with
/// `_RJEM_MALLOC_CONF`. Only this binary uses it, not the library's tests.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    cli::main()
}

//! Progress on long phases, only when stderr is a terminal (scripts and `--json` consumers get
//! clean streams) and logs are not silenced with `-q`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns progress lines on when stderr is a terminal and `quiet` is false.
pub fn init(quiet: bool) {
    ENABLED.store(!quiet && std::io::stderr().is_terminal(), Ordering::Relaxed);
}

/// Announces a phase ("scanning the store", "deleting 1234 entries", ...).
pub fn phase(what: impl std::fmt::Display) {
    if ENABLED.load(Ordering::Relaxed) {
        eprintln!("regclean: {what}…");
    }
}

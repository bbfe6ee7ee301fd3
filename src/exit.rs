//! Exit codes: the contract scripts branch on (documented in README.md and `--help`).

/// How a run ended. `std::process::exit` is called with [`Exit::code`] in one place, `main`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    /// 0: everything asked for was done (or there was nothing to do).
    Done = 0,
    /// 1: something failed, or a named target did not exist (see `--ignore-missing`).
    Failed = 1,
    /// 2: invalid usage or input; nothing was changed.
    Usage = 2,
    /// 3: refused as unsafe; nothing was changed (lock held, serving registry, other driver).
    Unsafe = 3,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }
}

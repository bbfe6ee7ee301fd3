//! One error type for the whole pipeline. Every variant knows its exit code, and I/O errors
//! always carry the path they happened on (as walkdir's do): "permission denied" alone helps
//! nobody at 3 a.m.

use crate::exit::Exit;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// An error that ends the run.
#[derive(Debug)]
pub enum Error {
    /// Invalid usage or input (exit 2). Nothing has been changed when this is returned.
    Usage(String),
    /// Refused because going on could lose data (exit 3). Nothing has been changed.
    Unsafe(String),
    /// An operating-system error on a path (exit 1).
    Io {
        /// What regclean was doing, e.g. "reading tag link".
        op: &'static str,
        /// The path it was doing it on.
        path: PathBuf,
        /// The underlying cause.
        source: io::Error,
    },
    /// Any other failure (exit 1).
    Failed(String),
    /// Not an error: the run found nothing to work on (`--skip-missing-store` on a fresh
    /// volume) and said so; exit 0.
    NothingToDo,
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Builds an [`Error::Io`].
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// The exit code this error maps to.
    pub fn exit(&self) -> Exit {
        match self {
            Error::Usage(_) => Exit::Usage,
            Error::Unsafe(_) => Exit::Unsafe,
            Error::Io { .. } | Error::Failed(_) => Exit::Failed,
            Error::NothingToDo => Exit::Done,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Unsafe(m) | Error::Failed(m) => f.write_str(m),
            Error::NothingToDo => f.write_str("nothing to do"),
            Error::Io { op, path, source } => {
                write!(f, "{op} {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Converts a nix errno into an `io::Error` (so messages read the same everywhere).
pub fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

//! What the user asked: arguments, the registry's config, names and patterns, policy files.
pub mod cli;
pub mod config;
pub mod names;
pub mod policy;
pub mod target;

//! regclean: the safe, fast, filesystem-native cleaner for the CNCF Distribution registry.
//!
//! Pipeline: [`cli`] → [`config`] → [`scan`] → [`plan`] → [`apply`] → [`report`], run by
//! [`app`]. Policy is pure ([`plan`]); everything that touches the disk goes through
//! [`fsx`] directory handles.

pub mod app;
pub mod apply;
pub mod cli;
pub mod config;
pub mod digest;
pub mod error;
pub mod exit;
pub mod fsx;
pub mod lock;
pub mod names;
pub mod plan;
pub mod report;
pub mod scan;
pub mod target;
pub mod trash;

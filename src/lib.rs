//! regclean: the safe, fast, filesystem-native cleaner for the CNCF Distribution registry.
//!
//! Pipeline: [`cli`] → [`config`] → [`scan`] → [`plan`] → [`apply`] → [`collect`] →
//! [`report`], run by [`app`]. Policy is pure ([`plan`], [`reach`]); everything that touches
//! the disk goes through [`fsx`] directory handles.

pub mod activity;
pub mod app;
pub mod apply;
pub mod attach;
pub mod blobs;
pub mod check;
pub mod cli;
pub mod collect;
pub mod config;
pub mod digest;
pub mod error;
pub mod exit;
pub mod fsx;
pub mod gc;
pub mod hazard;
pub mod live;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod reach;
pub mod report;
pub mod retention;
pub mod scan;
pub mod supervise;
pub mod target;
pub mod timing;
pub mod trash;

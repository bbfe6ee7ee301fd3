//! Telling what happened: the report, `--check`, metrics, timings, progress lines.
pub mod check;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod timing;

//! regclean: the safe, fast, filesystem-native cleaner for the CNCF Distribution registry.
//!
//! The tree is the pipeline, one folder a stage, run by [`app`]:
//!
//! | stage | folder | modules |
//! | --- | --- | --- |
//! | what the user asked | `input/` | [`cli`] (arguments → settings), [`config`] (root and registry config), [`names`] and [`target`] (grammar, patterns), [`policy`] (policy files) |
//! | what the store holds | `inventory/` | [`scan`] (parallel inventory), [`blobs`], [`manifest`] (read as Go reads them), [`digest`] |
//! | what to do (pure) | `decide/` | [`plan`], [`retention`], [`attach`] (attachments), [`reach`] (reachability, pruning, predicted sweep), [`hazard`] |
//! | changing the store | `change/` | [`apply`] (removal), [`trash`] (atomic, crash-safe), [`lock`], [`fsx`] (directory handles) |
//! | freeing the disk | `collection/` | [`collect`] (the gc stage), [`gc`] (the registry's collector), [`live`] (serving registries), [`activity`] (pull times) |
//! | telling what happened | `output/` | [`report`], [`check`], [`metrics`], [`timing`], [`progress`] |
//! | the registry that cleans itself | `supervise/` | [`supervise`] (PID 1, proxy, control socket, events) |
//! | where the store lives | `storage/` | [`storage`] (the `Storage` trait: filesystem, and `s3` object storage with its own change stage) |
//!
//! Policy is pure ([`plan`], [`reach`]); everything that touches the disk goes through [`fsx`]
//! directory handles. The stage folders are re-exported flat (`crate::plan`, not
//! `crate::decide::plan`), so a module's path does not depend on where it sits.

pub mod app;
pub mod change;
pub mod collection;
pub mod decide;
pub mod error;
pub mod exit;
pub mod input;
pub mod inventory;
pub mod output;
pub mod storage;
pub mod supervise;

pub use change::{apply, fsx, lock, trash};
pub use collection::{activity, collect, gc, live};
pub use decide::{attach, hazard, plan, reach, retention};
pub use input::{cli, config, names, policy, target};
pub use inventory::{blobs, digest, manifest, scan};
pub use output::{check, metrics, progress, report, timing};

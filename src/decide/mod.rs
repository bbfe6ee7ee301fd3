//! What to do, as pure functions of the inventory: the plan, retention, attachments,
//! reachability and pruning, hazards.
pub mod attach;
pub mod hazard;
pub mod plan;
pub mod reach;
pub mod retention;

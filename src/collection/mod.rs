//! Freeing the disk: the gc stage, the registry's collector, the live guard, pull activity.
pub mod activity;
pub mod collect;
pub mod gc;
pub mod live;

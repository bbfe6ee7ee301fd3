//! Changing the store: removal through the trash, the lock, directory handles.
pub mod apply;
pub mod fsx;
pub mod lock;
pub mod trash;

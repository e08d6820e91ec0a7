//! The coordinator: the snapshot catalog and the planner that splits disks into block
//! ranges for workers, and the job runner that turns range results into a snapshot.

pub mod backup;
pub mod catalog;
mod fsutil;
pub mod inventory;
pub mod planner;

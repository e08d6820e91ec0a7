//! The QEMU host adapter: VMs behind QMP sockets, and the agentless point-in-time freeze
//! of their disks for backup (the sequence libvirt's pull-mode backup uses).
//!
//! Names Bora gives QEMU objects (all start with `bora-`, so leftovers of a killed backup
//! are recognised and removed on the next contact, see [`recover`]):
//! - dirty bitmaps `bora-<snapshot id>`: persistent, created at that snapshot's freeze,
//!   record every guest write after it; the next incremental reads what it marks;
//! - fleecing nodes `bora-fl-<job>-<n>` (qcow2) and `bora-fl-<job>-<n>-f` (file), backup
//!   jobs `bora-bk-<job>-<n>`, exports `bora-ex-<job>-<n>`, where `<job>` is the first 8
//!   characters of the new snapshot's id.

mod error;
pub mod freeze;
pub mod host;
pub mod recover;

pub use error::QemuError;

/// The dirty bitmap created at the freeze of snapshot `snapshot_id`.
pub fn bitmap_name(snapshot_id: &str) -> String {
    format!("bora-{snapshot_id}")
}

/// Whether a bitmap name is one of Bora's.
pub fn is_bora_bitmap(name: &str) -> bool {
    name.starts_with("bora-")
}

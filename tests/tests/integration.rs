//! One integration-test binary (keeps link times down); one module per area.

mod integration {
    pub mod backup_restore;
    pub mod bad_input;
    pub mod cluster;
    pub mod cluster_members;
    pub mod cluster_raft;
    pub mod cluster_vm;
    pub mod crash;
    pub mod dedup;
    pub mod files;
    pub mod live_vm;
    pub mod nbd_source;
    pub mod quickstart;
    pub mod replicate;
    pub mod replicate_raft;
    pub mod serve;
}

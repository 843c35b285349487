//! The control channel's host side: everything between a gateway's socket
//! and the job queue.
//!
//! - [`socket`]: bind the Unix socket (never stealing a live host's).
//! - [`server`]: accept gateways; [`connection`]: handshake, then read a
//!   message, dispatch, reply, per gateway; [`session`]: what each
//!   message does to that gateway's state (no I/O); [`leases`]: its
//!   slots; [`context`]: what all connections share; [`peer_auth`]: who
//!   may connect (SO_PEERCRED).
//! - [`shm_sweep`]: segments left by a host that died, removed at start.

pub(crate) mod connection;
pub(crate) mod context;
pub(crate) mod job_calls;
pub(crate) mod leases;
pub mod peer_auth;
pub(crate) mod server;
pub(crate) mod session;
pub(crate) mod shm_sweep;
pub mod socket;

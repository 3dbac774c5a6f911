//! raftwire moves Raft messages between cluster members over TCP, on plain
//! threads, with no async runtime.
#![warn(missing_docs)]

pub mod config;
pub mod error;
mod io;
pub mod message;
mod peer;
pub mod reporter;
pub mod stats;
mod transport;
pub mod wire;

pub use config::Config;
pub use error::{CloseReason, ConfigError, DropReason, Error, ProtocolViolation, SendError};
pub use message::{DecodeError, Envelope, Message, MessageClass};
pub use reporter::{ChannelReporter, NoopReporter, ReportEvent, Reporter, SnapshotStatus};
pub use stats::{LaneStats, PeerStats, Stats};
pub use transport::Transport;
pub use wire::{Lane, RejectReason};

//! The threads, and what they share. The event loop (`event_loop`) owns
//! every socket and drives the connection core (`crate::conn`); a writer
//! per peer lane (`writer`) batches and encodes; the reader (`reader`)
//! judges hellos, decodes frames and delivers; the notifier (`notify`) is
//! the one caller of the reporter's `report_unreachable` and
//! `report_rejected`; a sender per outgoing snapshot (`snapshot_send`)
//! streams it. `runtime` starts and stops them; `peers` is the per-peer
//! state they share, `account` the one place that counts, logs and
//! reports, `channels` what they send each other.
//!
//! The path of a message, in module names: `runtime` (queue) → `writer` →
//! `event_loop` → socket → `event_loop` → `reader` → receive channel.

pub(crate) mod account;
pub(crate) mod channels;
pub(crate) mod delivery;
pub(crate) mod event_loop;
pub(crate) mod notify;
pub(crate) mod peers;
pub(crate) mod reader;
pub(crate) mod runtime;
pub(crate) mod shared;
pub(crate) mod snapshot_recv;
pub(crate) mod snapshot_send;
pub(crate) mod stream;
pub(crate) mod writer;

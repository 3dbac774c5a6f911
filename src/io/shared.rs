//! What the reader and sending threads share about the transport: its
//! configuration, its peers and its accounts.

use super::account::Accounts;
use super::peers::PeerTable;
use crate::config::Config;
use std::sync::Arc;

pub(crate) struct Shared<M> {
    pub config: Config,
    pub peers: PeerTable<M>,
    pub accounts: Arc<Accounts>,
}

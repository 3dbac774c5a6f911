//! raft-rs support (cargo feature `raft-rs`): the [`Message`] trait for
//! `raft::eraftpb::Message`, and the link between the transport's
//! [`ReportEvent`]s and a `RawNode`.
//!
//! With the feature on, a `Transport<raft::eraftpb::Message>` moves raft-rs
//! messages as they are: no wrapper type, no conversion.
//!
//! | `MessageType` | [`MessageClass`] | travels on | delivered on |
//! |---|---|---|---|
//! | `MsgAppend` | [`Append`](MessageClass::Append) | append lane | [`messages()`](crate::Transport::messages) |
//! | `MsgSnapshot` | [`Snapshot`](MessageClass::Snapshot) | a snapshot connection of its own | `messages()`, once complete |
//! | `MsgPropose` | [`Proposal`](MessageClass::Proposal) | message lane | [`proposals()`](crate::Transport::proposals) |
//! | everything else | [`Other`](MessageClass::Other) | message lane | `messages()` |
//!
//! The local-only types, `MsgHup`, `MsgBeat`, `MsgUnreachable`,
//! `MsgSnapStatus` and `MsgCheckQuorum` (raft-rs's own
//! `raft::raw_node::is_local_msg`), never cross the network:
//! [`Transport::send`](crate::Transport::send) refuses them
//! ([`SendError::LocalOnly`](crate::SendError::LocalOnly) from `try_send`,
//! counted in [`Stats::dropped_local_only`](crate::Stats::dropped_local_only)),
//! and a receiver drops any that arrive and counts them in
//! [`PeerStats::received_local_only`](crate::PeerStats::received_local_only).
//! raft-rs never puts them in a `Ready`, so a correct node never sees either
//! counter move. The other types that look local are not:
//! `MsgTransferLeader` and `MsgReadIndex` are forwarded by a follower to
//! its leader, and `MsgTimeoutNow` goes from the leader to the transferee.
//!
//! The encoding is rust-protobuf's (the `protobuf-codec` that raft 0.7 uses
//! by default): [`encode`](Message::encode) writes exactly the bytes of
//! `protobuf::Message::write_to_bytes` (straight into the batch buffer,
//! without an intermediate `Vec`), and [`decode`](Message::decode) merges
//! into a default message with `merge_from_bytes`. Decoding never panics:
//! malformed bytes are a [`DecodeError`], which closes that one connection.
//! A message type this version of raft-rs does not know is a decode error;
//! a message without a type decodes as type 0, `MsgHup`, which is
//! local-only and so is dropped and counted, never stepped.
//!
//! A `MsgSnapshot` passed to [`send`](crate::Transport::send) carries the
//! snapshot's data inline and takes the transport's snapshot path (crate
//! docs, section 6): it never waits behind appends or delays heartbeats,
//! and the sender's reporter gets exactly one `report_snapshot(to, Finish
//! or Failure)` for it, which [`apply_report`] hands to raft. Its size is
//! bounded by [`Config::max_inline_snapshot_len`](crate::Config::max_inline_snapshot_len)
//! (a larger one fails, and is reported so). raft-rs's `MemStorage` puts
//! no data in its snapshots: a node serves them from a `Storage` that
//! holds its state machine (see `examples/cluster.rs`).
//!
//! The crate-level tutorial (section 10) shows the whole `RawNode` loop;
//! [`apply_report`] is where the transport's reports reach raft.

use crate::message::{DecodeError, Message, MessageClass};
use crate::reporter::{ReportEvent, SnapshotStatus};
use crate::wire::RejectReason;
use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{self, MessageType};

/// The class of a raft-rs message type: which lane it travels on and which
/// receive channel it is delivered on.
///
/// ```
/// use raft::eraftpb::MessageType;
/// use raftwire::MessageClass;
/// use raftwire::raft_rs::class_of;
///
/// assert_eq!(class_of(MessageType::MsgAppend), MessageClass::Append);
/// assert_eq!(class_of(MessageType::MsgHeartbeat), MessageClass::Other);
/// ```
pub fn class_of(msg_type: MessageType) -> MessageClass {
    match msg_type {
        MessageType::MsgAppend => MessageClass::Append,
        MessageType::MsgSnapshot => MessageClass::Snapshot,
        MessageType::MsgPropose => MessageClass::Proposal,
        _ => MessageClass::Other,
    }
}

/// Whether a raft-rs message type is local to a node and must never be
/// sent: exactly raft-rs's `raft::raw_node::is_local_msg` (`MsgHup`,
/// `MsgBeat`, `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`), which
/// `RawNode::step` also refuses.
pub fn is_local_only(msg_type: MessageType) -> bool {
    raft::raw_node::is_local_msg(msg_type)
}

impl Message for eraftpb::Message {
    fn to(&self) -> u64 {
        self.to
    }

    fn from(&self) -> u64 {
        self.from
    }

    fn class(&self) -> MessageClass {
        class_of(self.get_msg_type())
    }

    fn encoded_len(&self) -> usize {
        self.compute_size() as usize
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        // Appends what write_to_bytes would return. Writing a proto3
        // message into a Vec cannot fail (no required fields, no I/O); if
        // it ever did, leave `out` as it was rather than send half a message.
        if let Err(e) = self.write_to_vec(out) {
            out.truncate(start);
            log::error!(
                "raft message to {} ({:?}) could not be encoded: {e}",
                self.to,
                self.get_msg_type()
            );
        }
    }

    fn decode(bytes: Bytes) -> Result<Self, DecodeError> {
        // Parsed from the Bytes themselves: entry data, snapshot data and
        // contexts (typed bytes::Bytes by raft-proto) are slices of the
        // frame, not copies. Merged into a default message, checked to end
        // where the frame does.
        let mut m = eraftpb::Message::default();
        let mut input = protobuf::CodedInputStream::from_carllerche_bytes(&bytes);
        m.merge_from(&mut input)
            .and_then(|()| input.check_eof())
            .map_err(|e| DecodeError(format!("raft message: {e}")))?;
        Ok(m)
    }

    fn is_local_only(&self) -> bool {
        is_local_only(self.get_msg_type())
    }
}

impl From<SnapshotStatus> for raft::SnapshotStatus {
    fn from(s: SnapshotStatus) -> raft::SnapshotStatus {
        match s {
            SnapshotStatus::Finish => raft::SnapshotStatus::Finish,
            SnapshotStatus::Failure => raft::SnapshotStatus::Failure,
        }
    }
}

/// Applies one [`ReportEvent`] from a [`ChannelReporter`](crate::ChannelReporter)
/// to the `RawNode` that owns the transport, on the node's own thread:
///
/// | event | call |
/// |---|---|
/// | [`Unreachable(id)`](ReportEvent::Unreachable) | `node.report_unreachable(id)` |
/// | [`Snapshot(id, status)`](ReportEvent::Snapshot) | `node.report_snapshot(id, status.into())` |
/// | [`Rejected(id, reason)`](ReportEvent::Rejected) | `node.report_unreachable(id)`, and the reason is returned |
///
/// A rejection means nothing sent to `id` gets through, so raft is told the
/// peer is unreachable (it stops streaming appends and probes instead). The
/// returned reason says what else to do: [`RejectReason::RemovedMember`]
/// means the cluster has removed *this* node (the peer's
/// [`Reporter::is_id_removed`](crate::Reporter::is_id_removed) says so),
/// and the node should shut down, as an etcd member does; any other reason
/// is a misconfiguration (wrong cluster id, wrong address for that id,
/// incompatible version) for an operator to fix. The transport keeps
/// redialing with backoff either way.
///
/// Call it after stepping received messages and before `ready()`, so that
/// the reports shape the next `Ready`:
///
/// ```no_run
/// # use raft::{RawNode, storage::MemStorage};
/// # use raftwire::RejectReason;
/// # fn f(raw_node: &mut RawNode<MemStorage>, events: crossbeam_channel::Receiver<raftwire::ReportEvent>) {
/// for ev in events.try_iter() {
///     if let Some(RejectReason::RemovedMember) = raftwire::raft_rs::apply_report(raw_node, ev) {
///         // This node was removed from the cluster: stop it.
///     }
/// }
/// # }
/// ```
pub fn apply_report<T: raft::Storage>(
    node: &mut raft::RawNode<T>,
    ev: ReportEvent,
) -> Option<RejectReason> {
    match ev {
        ReportEvent::Unreachable(id) => {
            node.report_unreachable(id);
            None
        }
        ReportEvent::Snapshot(id, status) => {
            node.report_snapshot(id, status.into());
            None
        }
        ReportEvent::Rejected(id, reason) => {
            node.report_unreachable(id);
            Some(reason)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelReporter, Config, SendError, Transport};
    use raft::eraftpb::{ConfState, Entry, EntryType, Snapshot};
    use raft::storage::MemStorage;
    use raft::{ProgressState, RawNode, StateRole};

    const ALL_TYPES: [MessageType; 19] = [
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgPropose,
        MessageType::MsgAppend,
        MessageType::MsgAppendResponse,
        MessageType::MsgRequestVote,
        MessageType::MsgRequestVoteResponse,
        MessageType::MsgSnapshot,
        MessageType::MsgHeartbeat,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgUnreachable,
        MessageType::MsgSnapStatus,
        MessageType::MsgCheckQuorum,
        MessageType::MsgTransferLeader,
        MessageType::MsgTimeoutNow,
        MessageType::MsgReadIndex,
        MessageType::MsgReadIndexResp,
        MessageType::MsgRequestPreVote,
        MessageType::MsgRequestPreVoteResponse,
    ];

    /// A message of type `t` with every field set to something non-default.
    fn full(t: MessageType) -> eraftpb::Message {
        let mut m = eraftpb::Message::default();
        m.set_msg_type(t);
        m.to = 2;
        m.from = 1;
        m.term = 7;
        m.log_term = 6;
        m.index = 100;
        m.commit = 99;
        m.commit_term = 6;
        m.request_snapshot = 3;
        m.reject = true;
        m.reject_hint = 42;
        m.context = b"ctx".to_vec().into();
        m.priority = -5;
        for i in 101..104 {
            let mut e = Entry::default();
            e.set_entry_type(if i == 102 {
                EntryType::EntryConfChange
            } else {
                EntryType::EntryNormal
            });
            e.term = 7;
            e.index = i;
            e.data = format!("put k{i} v{i}").into_bytes().into();
            e.context = vec![i as u8].into();
            m.mut_entries().push(e);
        }
        if t == MessageType::MsgSnapshot {
            let mut s = Snapshot {
                data: vec![0xAB; 1000].into(),
                ..Default::default()
            };
            let md = s.mut_metadata();
            md.index = 90;
            md.term = 5;
            md.set_conf_state(ConfState::from((vec![1, 2, 3], vec![4])));
            m.set_snapshot(s);
        }
        m
    }

    fn encode(m: &eraftpb::Message) -> Vec<u8> {
        let mut out = Vec::new();
        Message::encode(m, &mut out);
        out
    }

    #[test]
    fn every_type_round_trips() {
        for t in ALL_TYPES {
            for m in [full(t), {
                let mut m = eraftpb::Message::default();
                m.set_msg_type(t);
                m.to = 3;
                m.from = 9;
                m
            }] {
                let bytes = encode(&m);
                assert_eq!(bytes.len(), m.encoded_len(), "{t:?}");
                let back = eraftpb::Message::decode(bytes::Bytes::copy_from_slice(&bytes)).unwrap();
                assert_eq!(back, m, "{t:?}");
                assert_eq!(Message::to(&back), m.to);
                assert_eq!(Message::from(&back), m.from);
            }
        }
    }

    #[test]
    fn encoding_is_write_to_bytes_appended() {
        let m = full(MessageType::MsgAppend);
        let mut out = b"prefix".to_vec();
        Message::encode(&m, &mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(out[6..], m.write_to_bytes().unwrap()[..]);
    }

    #[test]
    fn classes() {
        for t in ALL_TYPES {
            let want = match t {
                MessageType::MsgAppend => MessageClass::Append,
                MessageType::MsgSnapshot => MessageClass::Snapshot,
                MessageType::MsgPropose => MessageClass::Proposal,
                _ => MessageClass::Other,
            };
            assert_eq!(full(t).class(), want, "{t:?}");
        }
    }

    #[test]
    fn local_only_types() {
        let local = [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ];
        for t in ALL_TYPES {
            assert_eq!(full(t).is_local_only(), local.contains(&t), "{t:?}");
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let good = encode(&full(MessageType::MsgSnapshot));
        // Every truncation: an error or a shorter message, never a panic.
        for cut in 0..good.len() {
            let _ = eraftpb::Message::decode(bytes::Bytes::copy_from_slice(&good[..cut]));
        }
        // Truncation inside the snapshot's data field is an error.
        assert!(
            eraftpb::Message::decode(bytes::Bytes::copy_from_slice(&good[..good.len() - 10]))
                .is_err()
        );
        // Single-byte corruptions everywhere.
        for i in 0..good.len() {
            for b in [0x00, 0xFF, 0x80, 0x7F] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = eraftpb::Message::decode(bytes::Bytes::copy_from_slice(&bad));
            }
        }
        // Known-bad shapes.
        let cases: &[&[u8]] = &[
            &[0xFF],                                           // truncated varint key
            &[0x08, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF], // truncated varint
            &[0x08; 11],
            &[0x32, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F], // entries with a 4 GiB length
            &[0x0F],                               // wire type 7
            &[0x00],                               // field number 0
            &[0x0C],                               // end group without a start
        ];
        for c in cases {
            assert!(
                eraftpb::Message::decode(bytes::Bytes::copy_from_slice(c)).is_err(),
                "{c:?}"
            );
        }
        // Random bytes, a deterministic generator.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (x.rotate_left(i as u32 * 8) & 0xFF) as u8)
                .collect();
            let _ = eraftpb::Message::decode(bytes::Bytes::copy_from_slice(&bytes));
        }
    }

    #[test]
    fn unknown_type_is_an_error_and_missing_type_is_local_only() {
        // Field 1 (msg_type) = 99, an unknown enum value; to = 2.
        assert!(
            eraftpb::Message::decode(bytes::Bytes::copy_from_slice(&[0x08, 99, 0x10, 2])).is_err()
        );
        let m = eraftpb::Message::decode(bytes::Bytes::copy_from_slice(&[0x10, 2])).unwrap();
        assert_eq!(m.get_msg_type(), MessageType::MsgHup);
        assert!(m.is_local_only());
    }

    #[test]
    fn send_refuses_local_only_messages() {
        let (reporter, _events) = ChannelReporter::new();
        let t: Transport<eraftpb::Message> =
            Transport::start(Config::new(1, "127.0.0.1:0".parse().unwrap()), reporter).unwrap();
        t.add_peer(2, &["127.0.0.1:1"]).unwrap();
        for ty in [
            MessageType::MsgHup,
            MessageType::MsgBeat,
            MessageType::MsgUnreachable,
            MessageType::MsgSnapStatus,
            MessageType::MsgCheckQuorum,
        ] {
            match t.try_send(full(ty)) {
                Err(SendError::LocalOnly(m)) => assert_eq!(m.get_msg_type(), ty),
                other => panic!("{ty:?}: {other:?}"),
            }
        }
        t.send([full(MessageType::MsgHup), full(MessageType::MsgBeat)]);
        assert_eq!(t.stats().dropped_local_only, 2);
        t.stop();
    }

    #[test]
    fn snapshot_status_converts() {
        assert_eq!(
            raft::SnapshotStatus::from(SnapshotStatus::Finish),
            raft::SnapshotStatus::Finish
        );
        assert_eq!(
            raft::SnapshotStatus::from(SnapshotStatus::Failure),
            raft::SnapshotStatus::Failure
        );
    }

    fn leader_of_three() -> RawNode<MemStorage> {
        let storage = MemStorage::new_with_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        let config = raft::Config {
            id: 1,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut node = RawNode::new(&config, storage, &logger).unwrap();
        node.raft.become_candidate();
        node.raft.become_leader();
        assert_eq!(node.raft.state, StateRole::Leader);
        node
    }

    #[test]
    fn apply_report_drives_the_raw_node() {
        let mut node = leader_of_three();
        let state = |n: &RawNode<MemStorage>, id| n.raft.prs().get(id).unwrap().state;

        // Unreachable: a replicating follower falls back to probing.
        node.raft.mut_prs().get_mut(2).unwrap().become_replicate();
        assert_eq!(apply_report(&mut node, ReportEvent::Unreachable(2)), None);
        assert_eq!(state(&node, 2), ProgressState::Probe);

        // Snapshot: Failure leaves snapshot state and forgets the pending
        // snapshot; Finish does the same and waits for the follower.
        for status in [SnapshotStatus::Failure, SnapshotStatus::Finish] {
            node.raft.mut_prs().get_mut(3).unwrap().become_snapshot(10);
            assert_eq!(state(&node, 3), ProgressState::Snapshot);
            assert_eq!(
                apply_report(&mut node, ReportEvent::Snapshot(3, status)),
                None
            );
            let pr = node.raft.prs().get(3).unwrap();
            assert_eq!(pr.state, ProgressState::Probe, "{status:?}");
            assert_eq!(pr.pending_snapshot, 0, "{status:?}");
        }

        // Rejected: unreachable, and the reason is handed back.
        node.raft.mut_prs().get_mut(2).unwrap().become_replicate();
        assert_eq!(
            apply_report(
                &mut node,
                ReportEvent::Rejected(2, RejectReason::RemovedMember)
            ),
            Some(RejectReason::RemovedMember)
        );
        assert_eq!(state(&node, 2), ProgressState::Probe);
    }
}

//! The wire format, as pure functions of bytes: no sockets, no threads, no
//! clock reads. Everything here is specified byte by byte in
//! `docs/PROTOCOL.md`, and a test decodes the examples printed there.
//!
//! A connection carries a [`handshake`] (hello from the dialer, response from
//! the acceptor) and then a stream of [`frame`]s in both directions.
//!
//! The module is private: tests and fuzz targets reach it as
//! `raftwire::testing::wire` (feature `testing`), and some of its items
//! (names, constants, inspection helpers) exist only for them.
#![cfg_attr(not(feature = "testing"), allow(dead_code, unused_imports))]

pub(crate) mod crc;
pub mod frame;
pub mod handshake;
pub mod snapshot;
pub(crate) mod split;

pub use crc::{Kernel, crc32c, implementation as crc_implementation};
pub use frame::{
    Checksums, Cursor, Deframer, FRAME_HEADER_LEN, Frame, FrameError, FrameKind, encode_frame,
    encode_frame_with, heartbeat_frame,
};
pub use handshake::{
    HELLO_LEN, Hello, HelloError, HelloParse, Lane, MAGIC, PROTOCOL_VERSION, RESPONSE_LEN,
    RejectReason, Response, ResponseError,
};
pub use snapshot::{AckStatus, SnapshotBegin, SnapshotEnd};

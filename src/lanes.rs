//! The two queued lanes of a peer as a type of their own.
//!
//! A peer has a message lane and an append lane, each with a queue, a
//! writer and a long-lived connection; snapshots have a connection each and
//! no queue. [`QueuedLane`] names only the two queued lanes and [`PerLane`]
//! holds one value for each, so per-lane state cannot be looked up for the
//! snapshot lane by mistake: there is no such slot to index.

use crate::wire::Lane;
use std::ops::{Index, IndexMut};

/// A lane with a queue and a writer: [`Lane::Message`] or [`Lane::Append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum QueuedLane {
    Message,
    Append,
}

impl QueuedLane {
    /// Both queued lanes, message lane first.
    pub const BOTH: [QueuedLane; 2] = [QueuedLane::Message, QueuedLane::Append];

    /// The lane on the wire.
    pub fn lane(self) -> Lane {
        match self {
            QueuedLane::Message => Lane::Message,
            QueuedLane::Append => Lane::Append,
        }
    }
}

impl std::fmt::Display for QueuedLane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.lane().fmt(f)
    }
}

impl Lane {
    /// The queued lane this is, or `None` for the snapshot lane.
    pub(crate) fn queued(self) -> Option<QueuedLane> {
        match self {
            Lane::Message => Some(QueuedLane::Message),
            Lane::Append => Some(QueuedLane::Append),
            Lane::Snapshot => None,
        }
    }
}

/// One value per queued lane.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PerLane<T> {
    pub message: T,
    pub append: T,
}

impl<T> PerLane<T> {
    /// A value for each lane, made by `f`.
    pub fn new(mut f: impl FnMut(QueuedLane) -> T) -> PerLane<T> {
        PerLane {
            message: f(QueuedLane::Message),
            append: f(QueuedLane::Append),
        }
    }

    /// Each lane with its value, message lane first.
    pub fn iter(&self) -> impl Iterator<Item = (QueuedLane, &T)> {
        [
            (QueuedLane::Message, &self.message),
            (QueuedLane::Append, &self.append),
        ]
        .into_iter()
    }

    /// Each lane with its value, mutably.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (QueuedLane, &mut T)> {
        [
            (QueuedLane::Message, &mut self.message),
            (QueuedLane::Append, &mut self.append),
        ]
        .into_iter()
    }

    /// The values by lane, transformed.
    pub fn map<U>(&self, mut f: impl FnMut(QueuedLane, &T) -> U) -> PerLane<U> {
        PerLane {
            message: f(QueuedLane::Message, &self.message),
            append: f(QueuedLane::Append, &self.append),
        }
    }
}

impl<T> Index<QueuedLane> for PerLane<T> {
    type Output = T;
    fn index(&self, lane: QueuedLane) -> &T {
        match lane {
            QueuedLane::Message => &self.message,
            QueuedLane::Append => &self.append,
        }
    }
}

impl<T> IndexMut<QueuedLane> for PerLane<T> {
    fn index_mut(&mut self, lane: QueuedLane) -> &mut T {
        match lane {
            QueuedLane::Message => &mut self.message,
            QueuedLane::Append => &mut self.append,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_lanes_map_to_wire_lanes_and_back() {
        for q in QueuedLane::BOTH {
            assert_eq!(q.lane().queued(), Some(q));
        }
        assert_eq!(Lane::Snapshot.queued(), None);
        let mut p = PerLane::new(|l| l.lane().index());
        p[QueuedLane::Append] += 10;
        assert_eq!(p.iter().map(|(_, v)| *v).collect::<Vec<_>>(), vec![0, 11]);
        assert_eq!(p.map(|l, v| (l, *v)).append, (QueuedLane::Append, 11));
    }
}

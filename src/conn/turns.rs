//! Lane priority at the stages every connection shares: the event loop's
//! turns and the reader thread's queue. Urgent traffic (message lanes:
//! heartbeats, votes, responses, proposals; handshakes) goes first; bulk
//! traffic (append lanes, snapshots) after it, in bounded slices, so that a
//! heartbeat never waits behind more than one slice of append work at any
//! stage. Bulk is never starved: the loop serves every bulk connection in
//! every turn (a slice each), and the reader serves a bulk connection at
//! least once every [`URGENT_RUN`] urgent ones while bulk work waits.

use super::ConnId;
use crate::wire::Lane;
use std::collections::{HashMap, VecDeque};

/// How urgent a connection's traffic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Class {
    /// Message lanes and connections whose lane is not known yet (a hello):
    /// served first, drained.
    Urgent,
    /// Append lanes and snapshots: served after the urgent ones, a slice at
    /// a time.
    Bulk,
}

impl Class {
    /// The class of a connection on `lane` (`None`: not known yet).
    pub fn of(lane: Option<Lane>) -> Class {
        match lane {
            Some(Lane::Append | Lane::Snapshot) => Class::Bulk,
            _ => Class::Urgent,
        }
    }
}

/// What a connection is ready for in a turn.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    pub read: bool,
    pub write: bool,
}

impl Ready {
    pub const READ: Ready = Ready {
        read: true,
        write: false,
    };
    pub const WRITE: Ready = Ready {
        read: false,
        write: true,
    };

    fn merge(&mut self, other: Ready) {
        self.read |= other.read;
        self.write |= other.write;
    }
}

/// The connections one turn of the event loop serves, and in what order:
/// urgent ones first, then bulk ones; each connection once per turn with
/// its readiness merged. A bulk connection may read or write at most
/// [`slice`](Turns::slice) bytes per turn; one that stops at its slice with
/// work left is served again next turn ([`again`](Turns::again)) without
/// waiting for readiness, which would not come again for bytes the socket
/// already holds.
#[derive(Debug)]
pub(crate) struct Turns {
    next: Vec<(Class, ConnId, Ready)>,
    /// Where each connection of `next` is.
    at: HashMap<ConnId, usize>,
    slice: usize,
}

impl Turns {
    pub fn new(slice: usize) -> Turns {
        Turns {
            next: Vec::new(),
            at: HashMap::new(),
            slice: slice.max(1),
        }
    }

    /// Connection `id` is ready (readable, writable, or has output queued).
    pub fn push(&mut self, id: ConnId, class: Class, ready: Ready) {
        match self.at.get(&id) {
            Some(&i) => {
                let (cl, _, r) = &mut self.next[i];
                r.merge(ready);
                *cl = (*cl).min(class);
            }
            None => {
                self.at.insert(id, self.next.len());
                self.next.push((class, id, ready));
            }
        }
    }

    /// A bulk connection stopped at its slice with work left.
    pub fn again(&mut self, id: ConnId, ready: Ready) {
        self.push(id, Class::Bulk, ready);
    }

    /// Whether a turn is waiting to be served (the loop must not sleep).
    pub fn is_pending(&self) -> bool {
        !self.next.is_empty()
    }

    /// The bytes a connection of `class` may read or write in one turn.
    pub fn budget(&self, class: Class) -> usize {
        match class {
            Class::Urgent => usize::MAX,
            Class::Bulk => self.slice,
        }
    }

    /// This turn's connections in serving order (urgent first, then bulk,
    /// each in the order they became ready); `out` is cleared and filled.
    pub fn take_turn(&mut self, out: &mut Vec<(ConnId, Class, Ready)>) {
        out.clear();
        self.at.clear();
        // Stable: within a class, the order of readiness.
        self.next.sort_by_key(|(class, _, _)| *class);
        out.extend(self.next.drain(..).map(|(cl, id, r)| (id, cl, r)));
    }
}

/// After this many urgent connections served in a row while bulk work
/// waits, the reader serves one bulk connection.
pub(crate) const URGENT_RUN: u32 = 8;

/// The reader thread's queue of connections with work: urgent ones first,
/// bulk ones after, never starved (one in every [`URGENT_RUN`] + 1 turns
/// while both wait). A connection is in the queue at most once (the caller
/// keeps the flag).
#[derive(Debug, Default)]
pub(crate) struct Lines {
    urgent: VecDeque<ConnId>,
    bulk: VecDeque<ConnId>,
    /// Urgent connections served in a row while bulk work waited.
    run: u32,
}

impl Lines {
    pub fn push(&mut self, id: ConnId, class: Class) {
        match class {
            Class::Urgent => self.urgent.push_back(id),
            Class::Bulk => self.bulk.push_back(id),
        }
    }

    /// The next connection to serve.
    pub fn pop(&mut self) -> Option<ConnId> {
        let bulk_turn = self.run >= URGENT_RUN || self.urgent.is_empty();
        if bulk_turn && let Some(id) = self.bulk.pop_front() {
            self.run = 0;
            return Some(id);
        }
        let id = self.urgent.pop_front()?;
        if !self.bulk.is_empty() {
            self.run += 1;
        }
        Some(id)
    }

    pub fn is_empty(&self) -> bool {
        self.urgent.is_empty() && self.bulk.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_by_lane() {
        assert_eq!(Class::of(Some(Lane::Message)), Class::Urgent);
        assert_eq!(Class::of(None), Class::Urgent);
        assert_eq!(Class::of(Some(Lane::Append)), Class::Bulk);
        assert_eq!(Class::of(Some(Lane::Snapshot)), Class::Bulk);
    }

    #[test]
    fn a_turn_serves_urgent_connections_first_each_once() {
        let mut t = Turns::new(1000);
        t.push(5, Class::Bulk, Ready::READ);
        t.push(3, Class::Urgent, Ready::WRITE);
        t.push(9, Class::Bulk, Ready::WRITE);
        t.push(5, Class::Bulk, Ready::WRITE);
        t.push(1, Class::Urgent, Ready::READ);
        assert!(t.is_pending());
        let mut turn = Vec::new();
        t.take_turn(&mut turn);
        let both = Ready {
            read: true,
            write: true,
        };
        assert_eq!(
            turn,
            vec![
                (3, Class::Urgent, Ready::WRITE),
                (1, Class::Urgent, Ready::READ),
                (5, Class::Bulk, both),
                (9, Class::Bulk, Ready::WRITE),
            ]
        );
        assert!(!t.is_pending());
        assert_eq!(t.budget(Class::Urgent), usize::MAX);
        assert_eq!(t.budget(Class::Bulk), 1000);
        // A bulk connection stopped at its slice comes back next turn,
        // still after the urgent ones that became ready meanwhile.
        t.again(5, Ready::READ);
        t.push(3, Class::Urgent, Ready::READ);
        t.take_turn(&mut turn);
        assert_eq!(
            turn,
            vec![
                (3, Class::Urgent, Ready::READ),
                (5, Class::Bulk, Ready::READ)
            ]
        );
    }

    #[test]
    fn a_heartbeat_waits_behind_at_most_one_slice_of_bulk_work() {
        // A model of the loop: one append connection that always has more
        // bytes than a slice, and a heartbeat that becomes ready at some
        // point of a turn. Count the bulk bytes served between the
        // heartbeat becoming ready and its being served.
        let slice = 256 << 10;
        let mut t = Turns::new(slice);
        let mut turn = Vec::new();
        for ready_after in 0..3 {
            let mut bulk_since_ready = None;
            for n in 0.. {
                t.push(7, Class::Bulk, Ready::READ);
                if n == ready_after {
                    bulk_since_ready = Some(0);
                    t.push(2, Class::Urgent, Ready::READ);
                }
                t.take_turn(&mut turn);
                let mut served = false;
                for &(id, class, _) in &turn {
                    if id == 2 {
                        served = true;
                        break;
                    }
                    if let Some(b) = &mut bulk_since_ready {
                        *b += t.budget(class);
                    }
                }
                if served {
                    break;
                }
            }
            assert_eq!(bulk_since_ready, Some(0), "urgent first in its turn");
        }
        // Readiness that arrives while a turn is being served waits for
        // that turn's remaining slices at most: one per bulk connection.
        t.push(7, Class::Bulk, Ready::READ);
        t.take_turn(&mut turn);
        t.push(2, Class::Urgent, Ready::READ); // arrives during the turn
        let waited: usize = turn.iter().map(|(_, c, _)| t.budget(*c)).sum();
        assert_eq!(waited, slice);
        t.again(7, Ready::READ);
        t.take_turn(&mut turn);
        assert_eq!(turn[0].0, 2);
    }

    #[test]
    fn the_reader_serves_urgent_first_and_never_starves_bulk() {
        let mut l = Lines::default();
        l.push(10, Class::Bulk);
        for id in 0..20 {
            l.push(id, Class::Urgent);
        }
        let order: Vec<ConnId> = std::iter::from_fn(|| l.pop()).collect();
        let at = order.iter().position(|&id| id == 10).unwrap();
        assert_eq!(at, URGENT_RUN as usize, "bulk after {URGENT_RUN} urgent");
        assert_eq!(order.len(), 21);
        assert!(l.is_empty());
        // Urgent work that arrives while bulk waits goes first.
        l.push(1, Class::Bulk);
        l.push(2, Class::Urgent);
        assert_eq!(l.pop(), Some(2));
        assert_eq!(l.pop(), Some(1));
        // Only bulk: served in order.
        l.push(4, Class::Bulk);
        l.push(5, Class::Bulk);
        assert_eq!((l.pop(), l.pop(), l.pop()), (Some(4), Some(5), None));
    }
}

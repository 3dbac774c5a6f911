//! The order in which [`Transport::try_recv`](crate::Transport::try_recv)
//! takes from the three receive channels: a pure rule, tested here.
//!
//! Urgent messages (heartbeats, votes, responses: `messages()`) first, then
//! proposals, then appends, so that a Raft loop steps a heartbeat before
//! the appends queued ahead of it. Strict priority could starve appends
//! while urgent traffic never pauses, so every [`FAIR_EVERY`]th take looks
//! at the channels the other way round: a heartbeat then waits behind at
//! most one append.

/// One take in this many serves the lowest non-empty channel first.
pub(crate) const FAIR_EVERY: u32 = 16;

/// The channel indices (0 messages, 1 proposals, 2 appends) in the order
/// the `turn`th take looks at them.
pub(crate) fn order(turn: u32) -> [usize; 3] {
    if turn % FAIR_EVERY == FAIR_EVERY - 1 {
        [2, 1, 0]
    } else {
        [0, 1, 2]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Takes everything from three queues in the order of [`order`].
    fn drain(mut q: [VecDeque<&'static str>; 3]) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut turn = 0u32;
        loop {
            let Some(i) = order(turn).into_iter().find(|&i| !q[i].is_empty()) else {
                return out;
            };
            out.push(q[i].pop_front().unwrap());
            turn = turn.wrapping_add(1);
        }
    }

    #[test]
    fn urgent_messages_go_first_and_appends_are_never_starved() {
        // Appends queued before a heartbeat: the heartbeat is taken first.
        let q = [
            VecDeque::from(["hb"]),
            VecDeque::from(["prop"]),
            VecDeque::from(["app1", "app2"]),
        ];
        assert_eq!(drain(q), ["hb", "prop", "app1", "app2"]);
        // A stream of urgent messages still lets one append through per
        // FAIR_EVERY takes, and no urgent message waits behind more than one.
        let urgent: VecDeque<&str> = std::iter::repeat_n("u", 60).collect();
        let appends: VecDeque<&str> = std::iter::repeat_n("a", 3).collect();
        let got = drain([urgent, VecDeque::new(), appends]);
        let first_appends: Vec<usize> = got
            .iter()
            .enumerate()
            .filter(|(_, m)| **m == "a")
            .map(|(i, _)| i)
            .collect();
        let every = FAIR_EVERY as usize;
        assert_eq!(first_appends, [every - 1, 2 * every - 1, 3 * every - 1]);
        assert_eq!(got.len(), 63);
    }

    #[test]
    fn the_turn_counter_wraps_without_a_gap() {
        assert_eq!(order(u32::MAX), order(u32::MAX % FAIR_EVERY));
        assert_eq!(order(0), [0, 1, 2]);
    }
}

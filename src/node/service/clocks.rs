//! How far each peer's clock is from ours, read off what they sign: every announcement and room
//! message carries its author's time, so `sent - received` is the author's clock offset minus
//! however long the message took (or waited in an outbox). The latest of a few readings is the
//! best estimate: a message is never early, only late. `git p2p doctor` shows it, because a
//! clock off by more than the time window gets a peer's messages dropped.

use std::collections::{HashMap, VecDeque};

use crate::clock::Now;
use crate::control::api::ClockReading;

/// Readings kept per author: enough that one fresh message outweighs a few held back.
const SAMPLES: usize = 8;
/// Authors tracked at once (a flood of authors must not grow this).
const AUTHORS: usize = 1024;
/// Readings shown in `daemon status`: the most recent authors.
pub const SHOWN: usize = 32;

struct Reading {
    offsets: VecDeque<i64>,
    /// When the last reading was taken (Unix ms, our clock).
    at: u64,
}

#[derive(Default)]
pub struct Clocks {
    authors: HashMap<String, Reading>,
}

impl Clocks {
    /// `author` signed something at `sent` (Unix ms, their clock) that reached us now.
    pub fn observe(&mut self, author: &str, sent: u64, now: Now) {
        let offset = sent as i64 - now.unix_ms as i64;
        if !self.authors.contains_key(author) && self.authors.len() >= AUTHORS {
            // The author heard from longest ago gives way.
            if let Some(oldest) = self.authors.iter().min_by_key(|(_, r)| r.at).map(|(a, _)| a.clone()) {
                self.authors.remove(&oldest);
            }
        }
        let reading =
            self.authors.entry(author.to_string()).or_insert_with(|| Reading { offsets: VecDeque::new(), at: 0 });
        if reading.offsets.len() == SAMPLES {
            reading.offsets.pop_front();
        }
        reading.offsets.push_back(offset);
        reading.at = now.unix_ms;
    }

    /// Each author's offset estimate (positive: their clock is ahead of ours), most recent first.
    pub fn readings(&self) -> Vec<ClockReading> {
        let mut readings: Vec<ClockReading> = self
            .authors
            .iter()
            .filter_map(|(peer, r)| {
                let offset_ms = r.offsets.iter().copied().max()?;
                Some(ClockReading { peer: peer.clone(), offset_ms, samples: r.offsets.len(), at: r.at })
            })
            .collect();
        readings.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.peer.cmp(&b.peer)));
        readings.truncate(SHOWN);
        readings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(unix_ms: u64) -> Now {
        Now { mono: std::time::Instant::now(), unix_ms }
    }

    #[test]
    fn the_freshest_message_sets_the_estimate() {
        let mut clocks = Clocks::default();
        // Their clock is 90 s ahead; one message waited 10 min in their outbox.
        clocks.observe("bob", 1_000_000 + 90_000 - 600_000, at(1_000_000));
        clocks.observe("bob", 1_000_500 + 90_000 - 40, at(1_000_500));
        let readings = clocks.readings();
        assert_eq!(readings.len(), 1);
        assert_eq!(readings[0].offset_ms, 89_960);
        assert_eq!(readings[0].samples, 2);
    }

    #[test]
    fn old_readings_leave_and_authors_are_bounded() {
        let mut clocks = Clocks::default();
        clocks.observe("carol", 2_000_000, at(1_000_000));
        for i in 0..SAMPLES as u64 {
            clocks.observe("carol", 1_000_000 + i, at(1_000_000 + i));
        }
        assert_eq!(clocks.readings()[0].offset_ms, 0, "the reading 1000 s ahead has left");
        for i in 0..AUTHORS as u64 + 10 {
            clocks.observe(&format!("p{i}"), 5_000_000 + i, at(5_000_000 + i));
        }
        assert_eq!(clocks.authors.len(), AUTHORS);
        assert!(!clocks.authors.contains_key("carol"), "the author heard from longest ago gave way");
        assert_eq!(clocks.readings().len(), SHOWN);
    }
}

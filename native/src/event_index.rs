//! Which log records hold an account's events, by hour of event time: `node/event_index.py`'s
//! `EventIndex` in Rust, with the same snapshot lists.
//!
//! Accounts are kept in order of first appearance (the Python dict's order, hence the snapshot's),
//! an account with events in one hour only as that hour and its positions, one with several as
//! a map by hour. An hour's positions are a word of `position_chains.rs`, where every stored
//! event's append touches one cache line. A snapshot needs no copy: accounts are only ever
//! appended and positions only grow past the log's end at capture, so reading the first `n`
//! accounts' positions below that end later gives the index as it was.

use std::collections::BTreeMap;

use crate::int_hash::IntMap;

use crate::position_chains::PositionChains;

pub const HOUR_NS: i64 = 3_600_000_000_000;

/// An account's hours, each with the word of its positions in `EventIndex::chains`.
enum Hours {
    One(i64, u64),
    Many(BTreeMap<i64, u64>),
}

#[derive(Default)]
pub struct EventIndex {
    accounts: Vec<(u64, Hours)>,
    slot_of: IntMap<u64, u32>,
    chains: PositionChains,
}

/// One account's (hour, positions) as a snapshot lists them.
pub type AccountEntry = (u64, Vec<(i64, Vec<u64>)>);

impl EventIndex {
    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }

    /// Note that record `position` holds events of `account` in `hour`.
    pub fn add(&mut self, position: u64, account: u64, hour: i64) {
        let n = self.accounts.len() as u32;
        let slot = *self.slot_of.entry(account).or_insert(n) as usize;
        let chains = &mut self.chains;
        if slot == self.accounts.len() {
            self.accounts.push((account, Hours::One(hour, chains.lone(position))));
            return;
        }
        let hours = &mut self.accounts[slot].1;
        if let Hours::One(only, word) = hours {
            if *only == hour {
                chains.add(word, position);
                return;
            }
            *hours = Hours::Many(BTreeMap::from([(*only, *word)]));
        }
        if let Hours::Many(map) = hours {
            match map.get_mut(&hour) {
                Some(word) => chains.add(word, position),
                None => {
                    map.insert(hour, chains.lone(position));
                }
            }
        }
    }

    /// (hour, positions) of the account's hours from `first` to `last` (inclusive), in hour order.
    pub fn hours(&self, account: u64, first: i64, last: i64) -> Vec<(i64, Vec<u64>)> {
        let Some(&slot) = self.slot_of.get(&account) else { return Vec::new() };
        match &self.accounts[slot as usize].1 {
            Hours::One(hour, word) if first <= *hour && *hour <= last => {
                vec![(*hour, self.chains.get(*word))]
            }
            Hours::One(..) => Vec::new(),
            Hours::Many(map) => map.range(first..=last).map(|(h, w)| (*h, self.chains.get(*w))).collect(),
        }
    }

    /// Accounts `lo` to `hi` with their positions below `below`, hours in order (hours left
    /// without one omitted).
    pub fn entries(&self, lo: usize, hi: usize, below: u64) -> Vec<AccountEntry> {
        let hi = hi.min(self.accounts.len());
        self.accounts[lo.min(hi)..hi]
            .iter()
            .map(|(account, hours)| {
                let listed: Vec<(i64, u64)> = match hours {
                    Hours::One(hour, word) => vec![(*hour, *word)],
                    Hours::Many(map) => map.iter().map(|(h, w)| (*h, *w)).collect(),
                };
                let kept = listed
                    .into_iter()
                    .map(|(hour, word)| (hour, self.below(word, below)))
                    .filter(|(_, kept)| !kept.is_empty())
                    .collect();
                (*account, kept)
            })
            .collect()
    }

    /// The positions of `word`'s list below `below`.
    fn below(&self, word: u64, below: u64) -> Vec<u64> {
        let mut all = self.chains.get(word);
        all.truncate(all.partition_point(|&p| p < below));
        all
    }

    /// Append a snapshot's account (in snapshot order); Err if it is listed twice.
    pub fn load(&mut self, account: u64, hours: Vec<(i64, Vec<u64>)>) -> Result<(), &'static str> {
        if self.slot_of.contains_key(&account) {
            return Err("event index snapshot: an account twice");
        }
        let mut words = Vec::with_capacity(hours.len());
        for (hour, positions) in hours {
            // Neither engine writes an hour without positions; one would hold nothing anyway.
            if let Some(word) = self.chains.word_of(&positions) {
                words.push((hour, word));
            }
        }
        let entry = match <[_; 1]>::try_from(words) {
            Ok([(hour, word)]) => Hours::One(hour, word),
            Err(words) => Hours::Many(words.into_iter().collect()),
        };
        self.slot_of.insert(account, self.accounts.len() as u32);
        self.accounts.push((account, entry));
        Ok(())
    }
}

/// The positions an index hands over for a run (`node/index_run.py`'s columns): keys in (account,
/// hour) order, key `i`'s positions `positions[ends[i - 1]..ends[i]]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AgedColumns {
    pub accounts: Vec<u64>,
    pub hours: Vec<i64>,
    pub ends: Vec<u64>,
    pub positions: Vec<u64>,
}

impl EventIndex {
    /// The positions below `below` of every hour before `before`, as a run's columns. Nothing is
    /// removed: `drop_aged` with the same arguments does that once the run is on disk.
    pub fn aged(&self, before: i64, below: u64) -> AgedColumns {
        let mut keys: Vec<(u64, i64, Vec<u64>)> = Vec::new();
        for (account, hours) in &self.accounts {
            let mut take = |hour: i64, word: u64| {
                let kept = self.below(word, below);
                if !kept.is_empty() {
                    keys.push((*account, hour, kept));
                }
            };
            match hours {
                Hours::One(hour, word) if *hour < before => take(*hour, *word),
                Hours::One(..) => {}
                Hours::Many(map) => map.range(..before).for_each(|(h, w)| take(*h, *w)),
            }
        }
        keys.sort_unstable_by_key(|(account, hour, _)| (*account, *hour));
        let mut columns = AgedColumns::default();
        for (account, hour, positions) in keys {
            columns.accounts.push(account);
            columns.hours.push(hour);
            columns.positions.extend(positions);
            columns.ends.push(columns.positions.len() as u64);
        }
        columns
    }

    /// Forget the positions below `below` of every hour before `before` (what `aged` gave for the
    /// same arguments; positions added since are at or past `below` and stay). An account keeps
    /// its slot, with no hours if none is left, so the snapshot order of accounts is unchanged.
    pub fn drop_aged(&mut self, before: i64, below: u64) {
        let chains = &mut self.chains;
        // The word of the positions at or past `below`, the old list given back.
        let mut rest = |word: u64| {
            let all = chains.get(word);
            chains.release(word);
            let cut = all.partition_point(|&p| p < below);
            chains.word_of(&all[cut..])
        };
        for (_, hours) in &mut self.accounts {
            match hours {
                Hours::One(hour, word) if *hour < before => match rest(*word) {
                    Some(left) => *word = left,
                    None => *hours = Hours::Many(BTreeMap::new()),
                },
                Hours::One(..) => {}
                Hours::Many(map) => {
                    let aged: Vec<i64> = map.range(..before).map(|(h, _)| *h).collect();
                    for hour in aged {
                        match rest(map[&hour]) {
                            Some(left) => {
                                map.insert(hour, left);
                            }
                            None => {
                                map.remove(&hour);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_keep_their_order_and_hours_their_positions() {
        let mut index = EventIndex::default();
        index.add(10, 5, 100);
        index.add(10, 3, 7);
        index.add(20, 5, 100);
        index.add(20, 5, 99);
        index.add(30, 5, 101);
        assert_eq!(index.hours(5, 0, 1000), vec![(99, vec![20]), (100, vec![10, 20]), (101, vec![30])]);
        assert_eq!(index.hours(5, 100, 100), vec![(100, vec![10, 20])]);
        assert_eq!(index.hours(3, 8, 9), vec![]);
        assert_eq!(
            index.entries(0, 9, 25),
            vec![(5, vec![(99, vec![20]), (100, vec![10, 20])]), (3, vec![(7, vec![10])])]
        );
    }

    #[test]
    fn aged_hours_are_handed_over_in_key_order_and_then_dropped() {
        let mut index = EventIndex::default();
        index.add(10, 5, 100);
        index.add(10, 3, 7);
        index.add(20, 5, 99);
        index.add(30, 5, 100);
        index.add(40, 5, 101);
        let aged = index.aged(101, 30);
        assert_eq!(aged.accounts, vec![3, 5, 5]);
        assert_eq!(aged.hours, vec![7, 99, 100]);
        assert_eq!(aged.ends, vec![1, 2, 3]);
        assert_eq!(aged.positions, vec![10, 20, 10]);
        index.drop_aged(101, 30);
        assert_eq!(index.hours(5, 0, 1000), vec![(100, vec![30]), (101, vec![40])]);
        assert_eq!(index.hours(3, 0, 1000), vec![]);
        assert_eq!(index.entries(0, 9, 99), vec![(5, vec![(100, vec![30]), (101, vec![40])]), (3, vec![])]);
        index.add(50, 3, 7); // a late event of an aged hour: in memory again until the next hand-over
        assert_eq!(index.hours(3, 0, 1000), vec![(7, vec![50])]);
        assert_eq!(index.aged(101, 30), AgedColumns::default()); // nothing handed over twice
        let late = index.aged(101, 99);
        assert_eq!(
            (late.accounts, late.hours, late.ends, late.positions),
            (vec![3, 5], vec![7, 100], vec![1, 2], vec![50, 30])
        );
    }
}

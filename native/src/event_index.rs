//! Which log records hold an account's events, by hour of event time: `node/event_index.py`'s
//! `EventIndex` in Rust, with the same snapshot lists.
//!
//! Accounts are kept in order of first appearance (the Python dict's order, hence the snapshot's),
//! an account with events in one hour only as that hour and its positions, one with several as
//! a map by hour. A snapshot needs no copy: accounts are only ever appended and positions only
//! grow past the log's end at capture, so reading the first `n` accounts' positions below that end
//! later gives the index as it was.

use std::collections::BTreeMap;

use crate::int_hash::IntMap;

use crate::positions::Positions;

pub const HOUR_NS: i64 = 3_600_000_000_000;

enum Hours {
    One(i64, Positions),
    Many(BTreeMap<i64, Positions>),
}

#[derive(Default)]
pub struct EventIndex {
    accounts: Vec<(u64, Hours)>,
    slot_of: IntMap<u64, u32>,
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
        if slot == self.accounts.len() {
            self.accounts.push((account, Hours::One(hour, Positions::of(position))));
            return;
        }
        let hours = &mut self.accounts[slot].1;
        if let Hours::One(only, positions) = hours {
            if *only == hour {
                positions.push_new(position);
                return;
            }
            let first = std::mem::replace(positions, Positions::empty());
            *hours = Hours::Many(BTreeMap::from([(*only, first)]));
        }
        if let Hours::Many(map) = hours {
            match map.get_mut(&hour) {
                Some(positions) => positions.push_new(position),
                None => {
                    map.insert(hour, Positions::of(position));
                }
            }
        }
    }

    /// (hour, positions) of the account's hours from `first` to `last` (inclusive), in hour order.
    pub fn hours(&self, account: u64, first: i64, last: i64) -> Vec<(i64, Vec<u64>)> {
        let Some(&slot) = self.slot_of.get(&account) else { return Vec::new() };
        match &self.accounts[slot as usize].1 {
            Hours::One(hour, positions) if first <= *hour && *hour <= last => {
                vec![(*hour, positions.to_vec())]
            }
            Hours::One(..) => Vec::new(),
            Hours::Many(map) => map.range(first..=last).map(|(h, p)| (*h, p.to_vec())).collect(),
        }
    }

    /// Accounts `lo` to `hi` with their positions below `below`, hours in order (hours left
    /// without one omitted).
    pub fn entries(&self, lo: usize, hi: usize, below: u64) -> Vec<AccountEntry> {
        let hi = hi.min(self.accounts.len());
        self.accounts[lo.min(hi)..hi]
            .iter()
            .map(|(account, hours)| {
                let listed: Vec<(i64, &Positions)> = match hours {
                    Hours::One(hour, positions) => vec![(*hour, positions)],
                    Hours::Many(map) => map.iter().map(|(h, p)| (*h, p)).collect(),
                };
                let kept = listed
                    .into_iter()
                    .map(|(hour, positions)| (hour, positions.below(below)))
                    .filter(|(_, kept)| !kept.is_empty())
                    .collect();
                (*account, kept)
            })
            .collect()
    }

    /// Append a snapshot's account (in snapshot order); Err if it is listed twice.
    pub fn load(&mut self, account: u64, hours: Vec<(i64, Vec<u64>)>) -> Result<(), &'static str> {
        if self.slot_of.contains_key(&account) {
            return Err("event index snapshot: an account twice");
        }
        let entry = match <[_; 1]>::try_from(hours) {
            Ok([(hour, positions)]) => Hours::One(hour, Positions::from_sorted(&positions)),
            Err(hours) => {
                Hours::Many(hours.into_iter().map(|(h, p)| (h, Positions::from_sorted(&p))).collect())
            }
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
            let mut take = |hour: i64, positions: &Positions| {
                let kept = positions.below(below);
                if !kept.is_empty() {
                    keys.push((*account, hour, kept));
                }
            };
            match hours {
                Hours::One(hour, positions) if *hour < before => take(*hour, positions),
                Hours::One(..) => {}
                Hours::Many(map) => map.range(..before).for_each(|(h, p)| take(*h, p)),
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
        let rest = |positions: &Positions| {
            let all = positions.to_vec();
            let cut = all.partition_point(|&p| p < below);
            (cut < all.len()).then(|| Positions::from_sorted(&all[cut..]))
        };
        for (_, hours) in &mut self.accounts {
            match hours {
                Hours::One(hour, positions) if *hour < before => match rest(positions) {
                    Some(left) => *positions = left,
                    None => *hours = Hours::Many(BTreeMap::new()),
                },
                Hours::One(..) => {}
                Hours::Many(map) => {
                    let aged: Vec<i64> = map.range(..before).map(|(h, _)| *h).collect();
                    for hour in aged {
                        match rest(&map[&hour]) {
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

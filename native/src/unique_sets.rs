//! COUNT_UNIQUE state of one metric in one partition: `node/aggregation/unique.py`'s `UniqueStore`
//! in Rust, step for step, with the same snapshot entries.
//!
//! Per account: each member's operations `(time, offset, combination << 1 | is_remove)` sorted by
//! (time, offset), members in order of first appearance (the Python dict's order), and per period
//! with events a row `[size, 0, max, last_time, last_offset, last_value]` plus alert state, kept
//! current per event (with carry_over, the set after every event before the period's end).
//! Member ids are uint64, hence the row's own type (the series cell's fields are `i64`).
//! A snapshot is copy-on-write per account: `capture` records the account count, and an account
//! changed while the snapshot packs is saved whole first. The Python face is `py_unique_store`.

use crate::int_hash::IntMap;
use crate::thresholds::{evaluate, state_len, Threshold};

/// A period row's statistics (the sum is always 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetRow {
    pub size: i64,
    pub max: u64,
    pub last_time: i64,
    pub last_offset: i64,
    pub last_value: u64,
}

impl SetRow {
    /// An ADD whose offset is newer than every operation the row has seen.
    fn note_add(&mut self, member: u64, time: i64, offset: i64) {
        self.max = self.max.max(member);
        if time >= self.last_time {
            self.last_time = time;
            self.last_offset = offset;
            self.last_value = member;
        }
    }

    /// An ADD seen in any order.
    fn note_add_any(&mut self, member: u64, time: i64, offset: i64) {
        self.max = self.max.max(member);
        if (time, offset) > (self.last_time, self.last_offset) {
            self.last_time = time;
            self.last_offset = offset;
            self.last_value = member;
        }
    }

    /// `[size, 0, max, last_time, last_offset, last_value]`.
    pub fn stats(&self) -> [i128; 6] {
        [
            i128::from(self.size),
            0,
            i128::from(self.max),
            i128::from(self.last_time),
            i128::from(self.last_offset),
            i128::from(self.last_value),
        ]
    }

    pub fn from_stats(stats: &[i128]) -> Option<Self> {
        Some(Self {
            size: i64::try_from(stats[0]).ok()?,
            max: u64::try_from(stats[2]).ok()?,
            last_time: i64::try_from(stats[3]).ok()?,
            last_offset: i64::try_from(stats[4]).ok()?,
            last_value: u64::try_from(stats[5]).ok()?,
        })
    }
}

/// One operation of a member's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    pub time: i64,
    pub offset: i64,
    /// `combination << 1 | is_remove`.
    pub op_combo: u64,
}

#[derive(Clone, Default)]
pub struct Account {
    pub members: Vec<(u64, Vec<Op>)>,
    member_index: IntMap<u64, u32>,
    pub starts: Vec<i64>,
    pub ends: Vec<i128>,
    pub rows: Vec<SetRow>,
    /// Per row, the alert state (`state_len` each).
    pub alert_state: Vec<i128>,
}

impl Account {
    pub fn push_member(&mut self, member: u64, history: Vec<Op>) -> Result<(), &'static str> {
        if self.member_index.contains_key(&member) {
            return Err("unique snapshot: a member twice");
        }
        self.member_index.insert(member, self.members.len() as u32);
        self.members.push((member, history));
        Ok(())
    }
}

/// One event of the metric, resolved.
#[derive(Clone, Copy, Debug)]
pub struct SetEvent {
    pub account: u64,
    pub member: u64,
    pub time: i64,
    pub offset: i64,
    pub remove: bool,
    pub combo: u32,
    pub period_start: i64,
    pub period_end: i128,
}

/// One fired alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetAlert {
    pub account: u64,
    pub threshold: usize,
    pub multiple: i128,
    pub value: i128,
    pub period_start: i64,
    pub time: i64,
}

/// A range's answer: the main set's row and one per group that has operations in it.
pub struct Scan {
    pub main: SetRow,
    pub groups: Vec<(usize, SetRow)>,
}

struct Capture {
    accounts: usize,
    saved: IntMap<u32, Account>,
}

pub struct UniqueSets {
    thresholds: Vec<Threshold>,
    carry_over: bool,
    accounts: Vec<(u64, Account)>,
    index: IntMap<u64, u32>,
    capture: Option<Capture>,
}

impl UniqueSets {
    pub fn new(thresholds: Vec<Threshold>, carry_over: bool) -> Self {
        Self { thresholds, carry_over, accounts: Vec::new(), index: IntMap::default(), capture: None }
    }

    pub fn alert_len(&self) -> usize {
        state_len(&self.thresholds)
    }

    fn account(&self, account: u64) -> Option<&Account> {
        self.index.get(&account).map(|&i| &self.accounts[i as usize].1)
    }

    // ---------------------------------------------------------------------------------- apply

    pub fn apply(&mut self, events: &[SetEvent], alerts: &mut Vec<SetAlert>) {
        for event in events {
            self.apply_one(event, alerts);
        }
    }

    fn apply_one(&mut self, e: &SetEvent, alerts: &mut Vec<SetAlert>) {
        let n = self.accounts.len() as u32;
        let slot = *self.index.entry(e.account).or_insert(n) as usize;
        if slot == self.accounts.len() {
            self.accounts.push((e.account, Account::default()));
        } else if let Some(capture) = &mut self.capture {
            if slot < capture.accounts && !capture.saved.contains_key(&(slot as u32)) {
                capture.saved.insert(slot as u32, self.accounts[slot].1.clone());
            }
        }
        let carry = self.carry_over;
        let stride = state_len(&self.thresholds);
        let acc = &mut self.accounts[slot].1;
        let add = !e.remove;
        let op =
            Op { time: e.time, offset: e.offset, op_combo: u64::from(e.combo) << 1 | u64::from(e.remove) };

        // Insert into the member's history after every op with time <= t (the offset is the newest).
        let (prev_time, prev_add, next_time) = match acc.member_index.get(&e.member) {
            None => {
                acc.member_index.insert(e.member, acc.members.len() as u32);
                acc.members.push((e.member, vec![op]));
                (-1, false, None)
            }
            Some(&m) => {
                let history = &mut acc.members[m as usize].1;
                let mut i = history.len();
                while i > 0 && history[i - 1].time > e.time {
                    i -= 1;
                }
                let (prev_time, prev_add) =
                    if i > 0 { (history[i - 1].time, history[i - 1].op_combo & 1 == 0) } else { (-1, false) };
                let next_time = history.get(i).map(|o| o.time);
                history.insert(i, op);
                (prev_time, prev_add, next_time)
            }
        };

        let j = row_index(acc, e.period_start, e.period_end, carry, stride);
        if carry {
            // The op changes the set at the end of every period from its own on, until the
            // member's next op (by time) takes over.
            let delta = i64::from(add) - i64::from(prev_add);
            for k in j..acc.rows.len() {
                if next_time.is_some_and(|next| i128::from(next) < acc.ends[k]) {
                    break;
                }
                acc.rows[k].size += delta;
            }
            if add {
                for row in &mut acc.rows[j..] {
                    row.note_add(e.member, e.time, e.offset);
                }
            }
        } else {
            if next_time.is_none_or(|next| i128::from(next) >= e.period_end) {
                acc.rows[j].size += i64::from(add) - i64::from(prev_add && prev_time >= e.period_start);
            }
            if add {
                acc.rows[j].note_add(e.member, e.time, e.offset);
            }
        }
        if stride != 0 {
            let value = i128::from(acc.rows[j].size);
            let state = &mut acc.alert_state[j * stride..(j + 1) * stride];
            evaluate(&self.thresholds, state, value, |threshold, multiple| {
                alerts.push(SetAlert {
                    account: e.account,
                    threshold,
                    multiple,
                    value,
                    period_start: e.period_start,
                    time: e.time,
                })
            });
        }
    }

    // ---------------------------------------------------------------------------------- reads

    /// The period row's statistics and alert flags (a carried-over set where it has no row).
    pub fn period_row(&self, account: u64, period_start: i64) -> (SetRow, i128) {
        let Some(acc) = self.account(account) else { return (SetRow::default(), 0) };
        let j = acc.starts.partition_point(|&s| s < period_start);
        if j < acc.starts.len() && acc.starts[j] == period_start {
            let flags = if self.thresholds.is_empty() { 0 } else { acc.alert_state[j * self.alert_len()] };
            return (acc.rows[j], flags);
        }
        if self.carry_over && j > 0 {
            return (acc.rows[j - 1], 0);
        }
        (SetRow::default(), 0)
    }

    /// The set of the account's operations before `end` (and from `lo`, if given) of the wanted
    /// combinations, and per group (`group_of[combination]`, if any) its own; None without the
    /// account.
    pub fn scan(
        &self,
        account: u64,
        lo: Option<i64>,
        end: i64,
        wanted: &[bool],
        group_of: &[Option<usize>],
    ) -> Option<Scan> {
        let acc = self.account(account)?;
        let mut main = SetRow::default();
        let mut groups: Vec<(usize, SetRow)> = Vec::new();
        let mut group_last: Vec<(usize, bool)> = Vec::new();
        for (member, history) in &acc.members {
            let mut main_last: Option<bool> = None;
            group_last.clear();
            for op in history {
                if op.time >= end {
                    break; // sorted by time
                }
                if lo.is_some_and(|lo| op.time < lo) {
                    continue;
                }
                let combo = (op.op_combo >> 1) as usize;
                if !wanted.get(combo).copied().unwrap_or(false) {
                    continue;
                }
                let add = op.op_combo & 1 == 0;
                main_last = Some(add);
                if add {
                    main.note_add_any(*member, op.time, op.offset);
                }
                if let Some(group) = group_of.get(combo).copied().flatten() {
                    match group_last.iter_mut().find(|(g, _)| *g == group) {
                        Some(last) => last.1 = add,
                        None => group_last.push((group, add)),
                    }
                    let at = match groups.iter().position(|(g, _)| *g == group) {
                        Some(at) => at,
                        None => {
                            groups.push((group, SetRow::default()));
                            groups.len() - 1
                        }
                    };
                    if add {
                        groups[at].1.note_add_any(*member, op.time, op.offset);
                    }
                }
            }
            if main_last == Some(true) {
                main.size += 1;
            }
            for &(group, present) in &group_last {
                if present {
                    let at = groups.iter().position(|(g, _)| *g == group).expect("a group seen is listed");
                    groups[at].1.size += 1;
                }
            }
        }
        Some(Scan { main, groups })
    }

    // ------------------------------------------------------------------------------- snapshot

    /// Start a snapshot: until `release`, `captured` reads the accounts as they are now.
    pub fn capture(&mut self) -> usize {
        self.capture = Some(Capture { accounts: self.accounts.len(), saved: IntMap::default() });
        self.accounts.len()
    }

    pub fn release(&mut self) {
        self.capture = None;
    }

    /// Account `i` (in order) as it was at capture.
    pub fn captured(&self, i: usize) -> Option<(u64, &Account)> {
        let capture = self.capture.as_ref()?;
        if i >= capture.accounts {
            return None;
        }
        let (id, live) = &self.accounts[i];
        Some((*id, capture.saved.get(&(i as u32)).unwrap_or(live)))
    }

    /// Append a snapshot's account; Err if it is listed twice or its rows do not fit.
    pub fn load(&mut self, id: u64, account: Account) -> Result<(), &'static str> {
        if self.index.contains_key(&id) {
            return Err("unique snapshot: an account twice");
        }
        if account.alert_state.len() != account.rows.len() * self.alert_len() {
            return Err("unique snapshot: a period row's alert state does not fit the metric");
        }
        self.index.insert(id, self.accounts.len() as u32);
        self.accounts.push((id, account));
        Ok(())
    }
}

/// Index of the account's row for the period, created (re-armed) if it has none yet.
fn row_index(acc: &mut Account, start: i64, end: i128, carry: bool, stride: usize) -> usize {
    let n = acc.starts.len();
    if n > 0 && acc.starts[n - 1] == start {
        return n - 1; // the common case: the latest period
    }
    let j = acc.starts.partition_point(|&s| s < start);
    if j < n && acc.starts[j] == start {
        return j;
    }
    // With carry_over a new period starts from the set at the end of the previous one with events
    // (no event lies between the two); otherwise from the empty set.
    let row = if carry && j > 0 { acc.rows[j - 1] } else { SetRow::default() };
    acc.starts.insert(j, start);
    acc.ends.insert(j, end);
    acc.rows.insert(j, row);
    let at = j * stride;
    acc.alert_state.splice(at..at, std::iter::repeat_n(0, stride));
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000_000;

    fn event(member: u64, time: i64, offset: i64, remove: bool) -> SetEvent {
        let start = time - time.rem_euclid(DAY);
        SetEvent {
            account: 1,
            member,
            time,
            offset,
            remove,
            combo: 0,
            period_start: start,
            period_end: i128::from(start + DAY),
        }
    }

    #[test]
    fn a_late_add_is_counted_until_the_member_s_next_op_with_carry_over() {
        let mut sets = UniqueSets::new(Vec::new(), true);
        let mut alerts = Vec::new();
        sets.apply(&[event(7, 3 * DAY, 1, true), event(7, DAY, 2, false)], &mut alerts);
        assert_eq!(sets.period_row(1, DAY).0.size, 1); // added on day 1
        assert_eq!(sets.period_row(1, 2 * DAY).0.size, 1); // carried into day 2 (no row)
        assert_eq!(sets.period_row(1, 3 * DAY).0.size, 0); // removed on day 3
        let scan = sets.scan(1, None, 2 * DAY, &[true], &[None]).unwrap();
        assert_eq!((scan.main.size, scan.main.last_value), (1, 7));
    }

    #[test]
    fn without_carry_over_each_period_counts_its_own_members() {
        let thresholds = vec![Threshold { limit: 2, recurring: false }];
        let mut sets = UniqueSets::new(thresholds, false);
        let mut alerts = Vec::new();
        sets.apply(
            &[event(1, 10, 1, false), event(2, 11, 2, false), event(1, DAY + 1, 3, false)],
            &mut alerts,
        );
        assert_eq!(alerts.iter().map(|a| (a.threshold, a.value)).collect::<Vec<_>>(), vec![(0, 2)]);
        assert_eq!(
            sets.period_row(1, 0),
            (SetRow { size: 2, max: 2, last_time: 11, last_offset: 2, last_value: 2 }, 1)
        );
        assert_eq!(sets.period_row(1, DAY).0.size, 1);
    }
}

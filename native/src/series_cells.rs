//! The cells of one COUNT, SUM, MAX or LATEST metric in one partition: `node/aggregation/series.py`'s
//! `SeriesStore` state and apply step in Rust, with the same cells in the same order.
//!
//! Four levels (UTC minute, hour, day, the metric's periods) per slot: slot 0 is an account's
//! unfiltered total, slot `1 + c` its events of dimension combination `c`. Each (slot, level) is
//! a `CellMap` of 56-byte cells in insertion order, which is the order the Python dicts list their
//! cells in a snapshot. Beside slot 0's cells: per minute cell the log positions of the records
//! that fed it (one `u64`, or a tagged index into a list when several did), and per period cell
//! the alert state (flags, then the highest multiple alerted per threshold). Events are folded
//! one by one into every level; since values are never negative this ends in exactly the cells
//! the Python store's run-and-merge gives (`cell.rs`). A snapshot is copy-on-write, as in Python:
//! `capture` records each map's length, and a cell changed while the snapshot packs is saved
//! first. Minute cells of hours older than the memory horizon are folded away (`fold_minutes`):
//! the hour, day and period cells already hold their events, and a query reads those hours' edges
//! from the log (docs/design.md, "Folded minutes"). The Python face is `py_series_store`.

use std::collections::HashMap;

use crate::cell::{Cell, Fold, TimeOrderedMerge};
use crate::cell_map::{CellMap, Key};
use crate::int_hash::IntMap;
use crate::position_chains::PositionChains;
pub use crate::thresholds::Threshold;
use crate::thresholds::{evaluate, state_len};

pub const N_LEVELS: usize = 4;
pub const MINUTE_LEVEL: usize = 0;
pub const PERIOD_LEVEL: usize = 3;
pub const MINUTE_NS: i64 = 60_000_000_000;
const MINUTES_PER_HOUR: i64 = 60;
const MINUTES_PER_DAY: i64 = 1440;
/// The extent's "no event yet" values, as in Python.
const NO_MINUTE: i64 = 1 << 62;

/// The statistic a metric's value (and its thresholds) read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggKind {
    Count,
    Sum,
    Max,
    Latest,
}

impl AggKind {
    /// From `cluster_client.types.AggType`'s number (COUNT_UNIQUE has no cells).
    pub fn from_number(n: i64) -> Option<Self> {
        match n {
            1 => Some(Self::Count),
            2 => Some(Self::Sum),
            3 => Some(Self::Max),
            4 => Some(Self::Latest),
            _ => None,
        }
    }

    fn value(self, cell: &Cell) -> i128 {
        match self {
            Self::Count => i128::from(cell.count),
            Self::Sum => cell.sum(),
            Self::Max => i128::from(cell.max),
            Self::Latest => i128::from(cell.last_value),
        }
    }
}

/// One stored event of the metric, resolved: its combination slot and its period's start.
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub account: u64,
    pub value: i64,
    pub time: i64,
    pub offset: i64,
    pub remove: bool,
    /// `1 + combination` for a dimensioned metric, else 0.
    pub slot: u32,
    pub period_start: i64,
}

/// One fired alert (the metric and threshold codes are the caller's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alert {
    pub account: u64,
    pub threshold: usize,
    pub multiple: i128,
    pub value: i128,
    pub period_start: i64,
    pub time: i64,
}

/// A cell as a snapshot lists it: its statistics, then its tail (positions or alert state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotCell {
    pub cell: Cell,
    pub tail: Vec<i128>,
}

/// Dimension combinations numbered in order of first appearance (`node/aggregation/combos.py`).
#[derive(Default)]
pub struct Combos {
    pub values: Vec<Vec<String>>,
    index: HashMap<Vec<String>, u32>,
}

impl Combos {
    pub fn id_of(&mut self, key: Vec<String>) -> u32 {
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = u32::try_from(self.values.len()).expect("fewer than 2^32 combinations");
        self.values.push(key.clone());
        self.index.insert(key, id);
        id
    }

    pub fn find(&self, key: &[String]) -> Option<u32> {
        self.index.get(key).copied()
    }
}

#[derive(Default)]
struct Slot {
    levels: [CellMap<Cell>; N_LEVELS],
}

/// A snapshot being packed: the maps' lengths at capture and the cells changed since.
struct Capture {
    lengths: Vec<[usize; N_LEVELS]>,
    saved: Vec<[IntMap<u32, SnapshotCell>; N_LEVELS]>,
}

pub struct SeriesCells {
    agg: AggKind,
    thresholds: Vec<Threshold>,
    pub combos: Combos,
    slots: Vec<Slot>,
    /// Per minute cell of slot 0, the word of its record positions in `chains`.
    positions: Vec<u64>,
    chains: PositionChains,
    alert_state: Vec<i128>,
    /// Dimensioned metrics: the combination slots each account has events in, accounts in order
    /// of first appearance (the Python dict's order).
    account_slots: Vec<(u64, Vec<u32>)>,
    account_index: IntMap<u64, u32>,
    pub first_minute: i64,
    pub last_minute: i64,
    /// Minutes below this (a whole hour's first minute) are folded: no minute cell, in any slot.
    pub folded_minute: i64,
    capture: Option<Capture>,
}

impl SeriesCells {
    pub fn new(agg: AggKind, thresholds: Vec<Threshold>, dimensioned: bool) -> Self {
        let mut combos = Combos::default();
        if !dimensioned {
            combos.id_of(Vec::new()); // the only combination of a metric without dimensions
        }
        Self {
            agg,
            thresholds,
            combos,
            slots: vec![Slot::default()],
            positions: Vec::new(),
            chains: PositionChains::default(),
            alert_state: Vec::new(),
            account_slots: Vec::new(),
            account_index: IntMap::default(),
            first_minute: NO_MINUTE,
            last_minute: -1,
            folded_minute: 0,
            capture: None,
        }
    }

    fn alert_stride(&self) -> usize {
        state_len(&self.thresholds)
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Bytes held by the cells and their side columns (capacity; the combinations' strings and
    /// the per-account slot lists are not counted).
    pub fn memory_bytes(&self) -> usize {
        let maps: usize = self.slots.iter().flat_map(|s| s.levels.iter()).map(CellMap::memory_bytes).sum();
        maps + self.positions.capacity() * 8 + self.chains.memory_bytes() + self.alert_state.capacity() * 16
    }

    // ---------------------------------------------------------------------------------- apply

    /// Apply one log record's events of this metric (offset order), read from position `record`;
    /// the alerts they fire are appended to `alerts` in order.
    pub fn apply(&mut self, events: &[Event], record: u64, alerts: &mut Vec<Alert>) {
        let with_sum = self.agg == AggKind::Sum;
        for event in events {
            let fold = Fold {
                value: event.value,
                time: event.time,
                offset: event.offset,
                remove: event.remove,
                with_sum,
            };
            let minute = event.time.div_euclid(MINUTE_NS);
            self.first_minute = self.first_minute.min(minute);
            self.last_minute = self.last_minute.max(minute);
            self.fold_slot(0, event, minute, &fold, record);
            if !self.thresholds.is_empty() {
                self.evaluate(event, alerts);
            }
            if event.slot != 0 {
                self.fold_slot(event.slot as usize, event, minute, &fold, record);
            }
        }
    }

    fn fold_slot(&mut self, slot: usize, event: &Event, minute: i64, fold: &Fold, record: u64) {
        while self.slots.len() <= slot {
            self.slots.push(Slot::default());
        }
        let account = event.account;
        let keys: [Key; N_LEVELS] = [
            (account, minute),
            (account, minute.div_euclid(MINUTES_PER_HOUR)),
            (account, minute.div_euclid(MINUTES_PER_DAY)),
            (account, event.period_start),
        ];
        for (level, key) in keys.into_iter().enumerate() {
            if level == MINUTE_LEVEL && minute < self.folded_minute {
                continue; // a late event into a folded hour: its coarser cells hold it
            }
            match self.slots[slot].levels[level].find(key) {
                Some(entry) => {
                    self.save_original(slot, level, entry);
                    self.slots[slot].levels[level].value_mut(entry).fold(fold);
                    if slot == 0 && level == MINUTE_LEVEL {
                        self.chains.add(&mut self.positions[entry], record);
                    }
                }
                None => {
                    self.slots[slot].levels[level].push(key, Cell::of(fold));
                    if slot == 0 && level == MINUTE_LEVEL {
                        let word = self.chains.lone(record);
                        self.positions.push(word);
                    } else if slot == 0 && level == PERIOD_LEVEL {
                        let stride = self.alert_stride();
                        self.alert_state.resize(self.alert_state.len() + stride, 0);
                    } else if level == PERIOD_LEVEL {
                        self.note_account_slot(account, slot as u32);
                    }
                }
            }
        }
    }

    fn note_account_slot(&mut self, account: u64, slot: u32) {
        let n = self.account_slots.len() as u32;
        let i = *self.account_index.entry(account).or_insert(n) as usize;
        if i == self.account_slots.len() {
            self.account_slots.push((account, Vec::new()));
        }
        let used = &mut self.account_slots[i].1;
        if !used.contains(&slot) {
            used.push(slot);
        }
    }

    /// `thresholds.evaluate` against the period total right after `event`.
    fn evaluate(&mut self, event: &Event, alerts: &mut Vec<Alert>) {
        let periods = &self.slots[0].levels[PERIOD_LEVEL];
        let entry =
            periods.find((event.account, event.period_start)).expect("the event's period cell exists");
        let value = self.agg.value(periods.value(entry));
        let stride = self.alert_stride();
        let state = &mut self.alert_state[entry * stride..(entry + 1) * stride];
        evaluate(&self.thresholds, state, value, |threshold, multiple| {
            alerts.push(Alert {
                account: event.account,
                threshold,
                multiple,
                value,
                period_start: event.period_start,
                time: event.time,
            })
        });
    }

    // ------------------------------------------------------------------------------ folding

    /// Drop every slot's minute cells below `minute` (and slot 0's record positions with them),
    /// and keep later events from creating any; returns how many cells were dropped. Err while a
    /// snapshot is being packed (entry numbers must not move under a capture).
    pub fn fold_minutes(&mut self, minute: i64) -> Result<usize, String> {
        if minute <= self.folded_minute {
            return Ok(0);
        }
        if self.capture.is_some() {
            return Err("cannot fold minute cells while a snapshot is being packed".to_owned());
        }
        self.folded_minute = minute;
        let mut dropped = 0;
        for (number, slot) in self.slots.iter_mut().enumerate() {
            let map = &mut slot.levels[MINUTE_LEVEL];
            let before = map.len();
            let kept = map.retain(|(_, bucket)| bucket >= minute);
            dropped += before - kept.len();
            if number == 0 && kept.len() != before {
                let words = std::mem::take(&mut self.positions);
                let mut kept = kept.iter().peekable();
                for (entry, word) in words.into_iter().enumerate() {
                    if kept.next_if_eq(&&entry).is_some() {
                        self.positions.push(word);
                    } else {
                        self.chains.release(word);
                    }
                }
            }
        }
        Ok(dropped)
    }

    // -------------------------------------------------------------------------------- reads

    /// The merge of the account's cells of `slot` at the given (level, buckets) segments, in time
    /// order; None where it has none.
    pub fn merged(&self, account: u64, slot: usize, segments: &[(usize, Vec<i64>)]) -> Option<Cell> {
        let levels = &self.slots.get(slot)?.levels;
        let mut merge = TimeOrderedMerge::default();
        for (level, buckets) in segments {
            let map = &levels[*level];
            for &bucket in buckets {
                if let Some(entry) = map.find((account, bucket)) {
                    merge.add(map.value(entry));
                }
            }
        }
        merge.finish()
    }

    /// The account's unfiltered cell of the period starting at `period_start`, with its alert flags.
    pub fn total(&self, account: u64, period_start: i64) -> Option<(Cell, i128)> {
        let periods = &self.slots[0].levels[PERIOD_LEVEL];
        let entry = periods.find((account, period_start))?;
        let flags =
            if self.thresholds.is_empty() { 0 } else { self.alert_state[entry * self.alert_stride()] };
        Some((*periods.value(entry), flags))
    }

    /// The positions of the records that fed the account's minute, ascending.
    pub fn minute_positions(&self, account: u64, minute: i64) -> Vec<u64> {
        match self.slots[0].levels[MINUTE_LEVEL].find((account, minute)) {
            Some(entry) => self.chains.get(self.positions[entry]),
            None => Vec::new(),
        }
    }

    pub fn slots_of(&self, account: u64) -> &[u32] {
        match self.account_index.get(&account) {
            Some(&i) => &self.account_slots[i as usize].1,
            None => &[],
        }
    }

    pub fn account_slots(&self) -> &[(u64, Vec<u32>)] {
        &self.account_slots
    }

    // ----------------------------------------------------------------------------- snapshot

    /// Start a snapshot: from now until `release`, `captured` reads every cell as it is now.
    pub fn capture(&mut self) {
        let lengths = self.slots.iter().map(|s| std::array::from_fn(|level| s.levels[level].len())).collect();
        let saved = self.slots.iter().map(|_| Default::default()).collect();
        self.capture = Some(Capture { lengths, saved });
    }

    pub fn release(&mut self) {
        self.capture = None;
    }

    /// The number of cells of (level, slot) in the snapshot being packed (None: no capture).
    pub fn captured_len(&self, level: usize, slot: usize) -> Option<usize> {
        let capture = self.capture.as_ref()?;
        Some(capture.lengths.get(slot).map_or(0, |lengths| lengths[level]))
    }

    /// The keys of (level, slot), in order (those of a capture are the first `captured_len`).
    pub fn keys(&self, level: usize, slot: usize) -> &[Key] {
        self.slots[slot].levels[level].keys()
    }

    /// Cell `entry` of (level, slot) as it was at capture.
    pub fn captured(&self, level: usize, slot: usize, entry: usize) -> SnapshotCell {
        if let Some(saved) = self.capture.as_ref().and_then(|c| c.saved[slot][level].get(&(entry as u32))) {
            return saved.clone();
        }
        self.live(level, slot, entry)
    }

    /// The statistics of cell `entry` of (level, slot) as they were at capture (no tail).
    pub fn captured_cell(&self, level: usize, slot: usize, entry: usize) -> Cell {
        match self.capture.as_ref().and_then(|c| c.saved[slot][level].get(&(entry as u32))) {
            Some(saved) => saved.cell,
            None => *self.slots[slot].levels[level].value(entry),
        }
    }

    fn live(&self, level: usize, slot: usize, entry: usize) -> SnapshotCell {
        let cell = *self.slots[slot].levels[level].value(entry);
        let tail = match (slot, level) {
            (0, MINUTE_LEVEL) => self.chains.get(self.positions[entry]).into_iter().map(i128::from).collect(),
            (0, PERIOD_LEVEL) => {
                let stride = self.alert_stride();
                self.alert_state[entry * stride..(entry + 1) * stride].to_vec()
            }
            _ => Vec::new(),
        };
        SnapshotCell { cell, tail }
    }

    fn save_original(&mut self, slot: usize, level: usize, entry: usize) {
        let Some(capture) = &self.capture else { return };
        let captured = capture.lengths.get(slot).is_some_and(|lengths| entry < lengths[level]);
        if !captured || capture.saved[slot][level].contains_key(&(entry as u32)) {
            return;
        }
        let original = self.live(level, slot, entry);
        if let Some(capture) = &mut self.capture {
            capture.saved[slot][level].insert(entry as u32, original);
        }
    }

    // -------------------------------------------------------------------------------- load

    /// Append a snapshot's cell to (level, slot), the slots up to it created; Err names what is
    /// wrong with its tail.
    pub fn load_cell(
        &mut self,
        level: usize,
        slot: usize,
        key: Key,
        cell: SnapshotCell,
    ) -> Result<(), String> {
        while self.slots.len() <= slot {
            self.slots.push(Slot::default());
        }
        if self.slots[slot].levels[level].find(key).is_some() {
            return Err("aggregates snapshot: a cell key twice".to_owned());
        }
        match (slot, level) {
            (0, MINUTE_LEVEL) => {
                let positions: Option<Vec<u64>> = cell.tail.iter().map(|&p| u64::try_from(p).ok()).collect();
                let word = positions.and_then(|p| self.chains.word_of(&p)).ok_or_else(|| {
                    "aggregates snapshot: a minute cell without record positions".to_owned()
                })?;
                self.positions.push(word);
            }
            (0, PERIOD_LEVEL) => {
                if cell.tail.len() != self.alert_stride() {
                    return Err(
                        "aggregates snapshot: a period cell's alert state does not fit the metric".to_owned()
                    );
                }
                self.alert_state.extend_from_slice(&cell.tail);
            }
            _ if !cell.tail.is_empty() => {
                return Err("aggregates snapshot: a cell with extra values".to_owned())
            }
            _ => {}
        }
        self.slots[slot].levels[level].push(key, cell.cell);
        Ok(())
    }

    /// Make sure `n` slots exist (a snapshot's slot count, empty ones included).
    pub fn reserve_slots(&mut self, n: usize) {
        while self.slots.len() < n {
            self.slots.push(Slot::default());
        }
    }

    pub fn load_account_slots(&mut self, account: u64, slots: Vec<u32>) {
        let n = self.account_slots.len() as u32;
        self.account_index.insert(account, n);
        self.account_slots.push((account, slots));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_772_323_200_000_000_000;

    fn event(account: u64, value: i64, time: i64, offset: i64) -> Event {
        Event {
            account,
            value,
            time,
            offset,
            remove: false,
            slot: 0,
            period_start: time - time % (86_400 * 1_000_000_000),
        }
    }

    #[test]
    fn every_level_gets_the_event_and_the_minute_its_records() {
        let mut cells = SeriesCells::new(AggKind::Sum, Vec::new(), false);
        let mut alerts = Vec::new();
        cells.apply(&[event(7, 5, T, 1), event(7, 3, T + 1, 2)], 100, &mut alerts);
        cells.apply(&[event(7, 1, T + 2, 3)], 200, &mut alerts);
        let minute = T / MINUTE_NS;
        assert_eq!(cells.minute_positions(7, minute), vec![100, 200]);
        let segments = vec![(2usize, vec![minute / MINUTES_PER_DAY])];
        assert_eq!(cells.merged(7, 0, &segments).unwrap().stats(), [3, 9, 5, i128::from(T + 2), 3, 1]);
        assert_eq!((cells.first_minute, cells.last_minute), (minute, minute));
        assert!(alerts.is_empty());
    }

    #[test]
    fn a_recurring_threshold_fires_once_per_new_multiple_and_a_one_shot_re_arms() {
        let thresholds =
            vec![Threshold { limit: 2, recurring: true }, Threshold { limit: 3, recurring: false }];
        let mut cells = SeriesCells::new(AggKind::Count, thresholds, false);
        let mut alerts = Vec::new();
        let events: Vec<Event> = (1..=5).map(|i| event(1, 0, T + i, i)).collect();
        cells.apply(&events, 1, &mut alerts);
        let fired: Vec<(usize, i128, i128)> =
            alerts.iter().map(|a| (a.threshold, a.multiple, a.value)).collect();
        assert_eq!(fired, vec![(0, 1, 2), (1, 1, 3), (0, 2, 4)]);
        alerts.clear();
        let mut remove = event(1, 0, T + 9, 9);
        remove.remove = true;
        cells.apply(&[remove, remove, remove, event(1, 0, T + 10, 12)], 2, &mut alerts);
        assert_eq!(alerts.iter().map(|a| (a.threshold, a.value)).collect::<Vec<_>>(), vec![(1, 3)]);
    }

    #[test]
    fn folding_drops_the_minutes_below_and_keeps_the_rest_and_the_coarser_cells() {
        let mut cells = SeriesCells::new(AggKind::Sum, Vec::new(), false);
        let mut alerts = Vec::new();
        let minute = T / MINUTE_NS;
        let hour_ns = 60 * MINUTE_NS;
        cells.apply(&[event(1, 5, T, 1), event(2, 1, T + hour_ns, 2)], 10, &mut alerts);
        cells.apply(&[event(1, 2, T + 1, 3), event(2, 1, T + hour_ns, 4)], 20, &mut alerts);
        cells.apply(&[event(2, 3, T + 2 * hour_ns, 5)], 30, &mut alerts);
        assert_eq!(cells.fold_minutes(minute + 60), Ok(1));
        assert_eq!(cells.fold_minutes(minute + 60), Ok(0));
        assert_eq!(cells.minute_positions(1, minute), Vec::<u64>::new());
        assert_eq!(cells.minute_positions(2, minute + 60), vec![10, 20]);
        assert_eq!(cells.minute_positions(2, minute + 120), vec![30]);
        // A late event into the folded hour: its hour cell takes it, no minute cell comes back.
        cells.apply(&[event(1, 4, T + 3, 6)], 40, &mut alerts);
        assert_eq!(cells.minute_positions(1, minute), Vec::<u64>::new());
        let hour = vec![(1usize, vec![minute / MINUTES_PER_HOUR])];
        assert_eq!(cells.merged(1, 0, &hour).unwrap().sum(), 11);
        cells.capture();
        assert!(cells.fold_minutes(minute + 120).is_err());
    }

    #[test]
    fn a_capture_reads_cells_as_they_were() {
        let mut cells = SeriesCells::new(AggKind::Count, Vec::new(), false);
        let mut alerts = Vec::new();
        cells.apply(&[event(1, 0, T, 1)], 10, &mut alerts);
        cells.capture();
        cells.apply(&[event(1, 0, T, 2), event(2, 0, T, 3)], 20, &mut alerts);
        assert_eq!(cells.captured_len(MINUTE_LEVEL, 0), Some(1));
        let before = cells.captured(MINUTE_LEVEL, 0, 0);
        assert_eq!((before.cell.count, before.tail), (1, vec![10]));
        cells.release();
        assert_eq!(cells.captured(MINUTE_LEVEL, 0, 0).tail, vec![10, 20]);
    }
}

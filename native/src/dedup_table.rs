//! The dedup index of one partition, `node/dedup_index.py`'s `DedupIndex` in Rust, step for step.
//!
//! It is a port, not a redesign: the same open-addressing table (64-bit keys as themselves, the
//! offset minus a base in a 32-bit column, widened to 64 bits only when the live offsets span more
//! than 2³²), the same floor expiry, the same rebuild thresholds and the same incremental growth,
//! so that for any sequence of calls both implementations hold the same slots. That is what lets a
//! snapshot be the same bytes whichever engine wrote it (`snapshot_view` / `from_parts` carry the
//! columns of `DedupIndex.to_snapshot`), and lets either engine recover the other's data
//! directory. The design and its numbers are in docs/design.md ("Deduplication").

use crate::prefaulted_columns::{columns_bytes, PendingColumns};
use crate::prefetch::prefetch_line;

/// Smallest table capacity (12 KiB per partition).
const EMPTY_TABLE_SLOTS: usize = 1024;
/// The table is rebuilt before its used slots (live and expired entries) pass 3/5 of it.
const MAX_LOAD: (usize, usize) = (3, 5);
/// A rebuilt table holds its live keys at 3/10 load: a table that grows doubles.
const REBUILT_LOAD: (usize, usize) = (3, 10);
/// `expire` rebuilds a table smaller once fewer than 1/16 of its slots hold live keys.
const SHRINK_BELOW: usize = 16;
/// Old-table slots each `add` moves while the table grows...
const MOVE_SLOTS: usize = 4096;
/// ...or this many per key it adds, if more: the move ends before the new table fills.
const MOVE_SLOTS_PER_KEY: usize = 4;
/// Once used slots pass this share of the table, columns for its growth are prepared on a helper
/// thread (`prefaulted_columns`), so that the move, at `MAX_LOAD`, writes into mapped memory.
const PREPARE_LOAD: (usize, usize) = (11, 20);
/// Only columns of at least this many bytes are prepared: a smaller table's pages (256 of 4 KiB)
/// fault in about a millisecond spread over its move's first adds, less than a thread is worth,
/// and preparing them early would hold its memory for longer than the move does, for nothing.
const PREPARE_MIN_BYTES: usize = 1 << 20;
/// The group columns are compacted once this many (and over a quarter of) their entries are spent.
const COMPACT_MIN: usize = 4096;

fn capacity_for(n: usize) -> usize {
    EMPTY_TABLE_SLOTS.max((n * REBUILT_LOAD.1).div_ceil(REBUILT_LOAD.0))
}

/// The offset column: offsets minus the table's base, 0 meaning an empty slot. 32-bit unless the
/// offsets it must hold span more than 2³² (Python's `array('I')` / `array('Q')`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OffsetColumn {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl OffsetColumn {
    fn zeros(wide: bool, n: usize) -> Self {
        if wide {
            Self::Wide(vec![0; n])
        } else {
            Self::Narrow(vec![0; n])
        }
    }

    #[inline]
    fn get(&self, i: usize) -> u64 {
        match self {
            Self::Narrow(v) => u64::from(v[i]),
            Self::Wide(v) => v[i],
        }
    }

    /// Store `value` at `i`. The table only stores values its base makes fit (the column is
    /// widened first otherwise): a value that does not fit is a bug, and panics rather than wraps.
    #[inline]
    fn set(&mut self, i: usize, value: u64) {
        match self {
            Self::Narrow(v) => v[i] = u32::try_from(value).expect("offset fits the 32-bit column"),
            Self::Wide(v) => v[i] = value,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Narrow(v) => v.len(),
            Self::Wide(v) => v.len(),
        }
    }

    fn item_size(&self) -> usize {
        match self {
            Self::Narrow(_) => 4,
            Self::Wide(_) => 8,
        }
    }

    /// The column's size in bytes, as a snapshot writes it.
    pub fn byte_len(&self) -> usize {
        self.len() * self.item_size()
    }

    fn count_zero(&self) -> usize {
        match self {
            Self::Narrow(v) => v.iter().filter(|&&x| x == 0).count(),
            Self::Wide(v) => v.iter().filter(|&&x| x == 0).count(),
        }
    }

    /// Python's array typecode of this column, as a snapshot names it.
    pub fn typecode(&self) -> &'static str {
        match self {
            Self::Narrow(_) => "I",
            Self::Wide(_) => "Q",
        }
    }
}

/// One table: keys and offsets in parallel columns, probed linearly from `key % capacity`.
#[derive(Clone, Debug)]
struct Table {
    keys: Vec<u64>,
    offs: OffsetColumn,
    base: u64,
}

impl Table {
    fn new(capacity: usize, wide: bool, base: u64) -> Self {
        Self { keys: vec![0; capacity], offs: OffsetColumn::zeros(wide, capacity), base }
    }

    fn cap(&self) -> usize {
        self.keys.len()
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // The capacity is any size, not a power of two: a modulo, as the Python table does.
        (key % self.cap() as u64) as usize
    }

    /// The slot after `i`, wrapping at the end: a compare, where `% cap` was a division per step.
    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.cap() {
            0
        } else {
            i + 1
        }
    }

    /// Ask the CPU to load `key`'s home slot in both columns. A table of millions of keys lives in
    /// DRAM and each probe of it is a cache miss; issued for a batch's keys before any is probed,
    /// the misses overlap instead of following one another.
    #[inline]
    fn prefetch(&self, key: u64) {
        let i = self.home(key);
        prefetch_line(self.keys.as_ptr().wrapping_add(i));
        match &self.offs {
            OffsetColumn::Narrow(v) => prefetch_line(v.as_ptr().wrapping_add(i)),
            OffsetColumn::Wide(v) => prefetch_line(v.as_ptr().wrapping_add(i)),
        }
    }

    /// The stored (base-relative) offset of `key`, 0 if the key is not in the table.
    fn stored(&self, key: u64) -> u64 {
        let mut i = self.home(key);
        loop {
            let stored = self.offs.get(i);
            if stored == 0 || self.keys[i] == key {
                return stored;
            }
            i = self.next(i);
        }
    }

    /// Put `key` with `stored` unless the key is there already; 1 if it was put.
    fn insert_absent(&mut self, key: u64, stored: u64) -> usize {
        let mut i = self.home(key);
        loop {
            if self.offs.get(i) == 0 {
                self.keys[i] = key;
                self.offs.set(i, stored);
                return 1;
            }
            if self.keys[i] == key {
                return 0;
            }
            i = self.next(i);
        }
    }

    fn bytes(&self) -> usize {
        self.keys.len() * 8 + self.offs.len() * self.offs.item_size()
    }
}

/// An add that cannot be applied; the table is left as it was.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    LengthMismatch,
    OffsetsNotAscending,
}

impl AddError {
    /// The message of the Python index's ValueError for the same call.
    pub fn message(&self) -> &'static str {
        match self {
            Self::LengthMismatch => "keys and offsets differ in length",
            Self::OffsetsNotAscending => "offsets must be positive and above every earlier add's offsets",
        }
    }
}

/// A table's snapshot columns as [`DedupTable::snapshot_view`] lends them.
pub struct DedupView<'a> {
    pub keys: &'a [u64],
    pub offs: &'a OffsetColumn,
    pub base: u64,
    pub g_arrival: &'a [i64],
    pub g_first: &'a [u64],
    pub g_live: &'a [u64],
    pub floor: u64,
    pub last: u64,
}

/// The columns of a snapshot, `DedupIndex.to_snapshot`'s list without its tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DedupParts {
    pub keys: Vec<u64>,
    pub offs: OffsetColumn,
    pub base: u64,
    pub g_arrival: Vec<i64>,
    pub g_first: Vec<u64>,
    pub g_live: Vec<u64>,
    pub floor: u64,
    pub last: u64,
}

/// Key digest → offset, for keys whose record arrived within the window. See the module comment.
#[derive(Clone, Debug)]
pub struct DedupTable {
    pub window_ns: i64,
    table: Table,
    /// The table being moved into `table` while it grows, and its first slot not moved yet.
    old: Option<(Table, usize)>,
    /// Columns for the next growth, being made resident on a helper thread.
    next: Option<PendingColumns>,
    live: usize,
    used: usize,
    floor: u64,
    last: u64,
    /// Per `add` call (a group): arrival, first offset, live entries it owns; `g_head` is the
    /// first group still in the window.
    g_arrival: Vec<i64>,
    g_first: Vec<u64>,
    g_live: Vec<u64>,
    g_head: usize,
}

impl DedupTable {
    pub fn new(window_ns: i64) -> Self {
        Self {
            window_ns,
            table: Table::new(EMPTY_TABLE_SLOTS, false, 0),
            old: None,
            next: None,
            live: 0,
            used: 0,
            floor: 1,
            last: 0,
            g_arrival: Vec::new(),
            g_first: Vec::new(),
            g_live: Vec::new(),
            g_head: 0,
        }
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Bytes the index holds: its columns as allocated, spare capacity included.
    pub fn memory_bytes(&self) -> usize {
        let groups = (self.g_arrival.capacity() + self.g_first.capacity() + self.g_live.capacity()) * 8;
        let next = self.next.as_ref().map_or(0, PendingColumns::bytes);
        self.table.bytes() + groups + self.old.as_ref().map_or(0, |(t, _)| t.bytes()) + next
    }

    /// Whether an incremental growth is under way.
    pub fn growing(&self) -> bool {
        self.old.is_some()
    }

    /// Move the next few thousand slots of a growth under way, as an `add` does.
    pub fn advance_growth(&mut self) {
        if self.old.is_some() {
            self.move_slots(MOVE_SLOTS);
        }
    }

    /// The offset stored under `key`, if it is still in the window.
    pub fn get(&self, key: u64) -> Option<u64> {
        let stored = self.table.stored(key);
        if stored == 0 {
            return self.old_get(key);
        }
        let off = stored + self.table.base;
        (off >= self.floor).then_some(off)
    }

    /// Start loading the slots `get(key)` will read (see `Table::prefetch`).
    #[inline]
    pub fn prefetch(&self, key: u64) {
        self.table.prefetch(key);
        if let Some((old, _)) = &self.old {
            old.prefetch(key);
        }
    }

    /// Remember `keys[i] → offsets[i]` as arrived at `arrival_ns`. Calls come in arrival order,
    /// and each call's offsets are above every earlier call's.
    pub fn add(&mut self, arrival_ns: i64, keys: &[u64], offsets: &[u64]) -> Result<(), AddError> {
        if keys.len() != offsets.len() {
            return Err(AddError::LengthMismatch);
        }
        let (Some(&first), Some(&last)) = (offsets.iter().min(), offsets.iter().max()) else {
            return Ok(());
        };
        if first <= self.last {
            return Err(AddError::OffsetsNotAscending);
        }
        let n = keys.len();
        let narrow = matches!(self.table.offs, OffsetColumn::Narrow(_));
        if last - self.table.base > u64::from(u32::MAX) && narrow {
            self.rehash(capacity_for(self.live + n), last);
        } else if (self.used + n) * MAX_LOAD.1 > self.table.cap() * MAX_LOAD.0 {
            self.finish_move();
            self.start_move(capacity_for(self.live + n), last);
        } else if self.next.is_none() && (self.used + n) * PREPARE_LOAD.1 > self.table.cap() * PREPARE_LOAD.0
        {
            let capacity = self.growth_capacity_bound();
            if columns_bytes(capacity) >= PREPARE_MIN_BYTES {
                self.next = PendingColumns::start(capacity);
            }
        }
        if self.old.is_some() {
            self.move_slots(MOVE_SLOTS.max(MOVE_SLOTS_PER_KEY * n));
            if self.old.is_some() {
                for &key in keys {
                    self.pull(key);
                }
            }
        }
        self.g_arrival.push(arrival_ns);
        self.g_first.push(first);
        self.g_live.push(n as u64);
        let base = self.table.base;
        let floor = self.floor - base; // as stored
        let mut new = 0;
        let mut used = 0;
        for (&key, &off) in keys.iter().zip(offsets) {
            let mut i = self.table.home(key);
            let mut reuse: Option<usize> = None;
            loop {
                let old = self.table.offs.get(i);
                if old == 0 {
                    match reuse {
                        None => used += 1,
                        Some(slot) => i = slot,
                    }
                    self.table.keys[i] = key;
                    self.table.offs.set(i, off - base);
                    new += 1;
                    break;
                }
                if self.table.keys[i] == key {
                    self.table.offs.set(i, off - base);
                    if old >= floor {
                        // Still live: its older group no longer owns it.
                        let owner = self.group_of(old + base);
                        self.g_live[owner] -= 1;
                    } else {
                        new += 1;
                    }
                    break;
                }
                if reuse.is_none() && old < floor {
                    reuse = Some(i);
                }
                i = self.table.next(i);
            }
        }
        self.live += new;
        self.used += used;
        self.last = last;
        Ok(())
    }

    /// Forget keys that arrived before `now_ns - window`; how many were forgotten.
    pub fn expire(&mut self, now_ns: i64) -> u64 {
        let cutoff = now_ns.saturating_sub(self.window_ns);
        let n_groups = self.g_arrival.len();
        let mut head = self.g_head;
        let mut forgotten = 0;
        while head < n_groups && self.g_arrival[head] < cutoff {
            forgotten += self.g_live[head];
            head += 1;
        }
        if head == self.g_head {
            return 0;
        }
        self.floor = if head < n_groups { self.g_first[head] } else { self.last + 1 };
        self.live -= forgotten as usize;
        self.g_head = head;
        let cap = self.table.cap();
        if self.live * SHRINK_BELOW < cap && cap > EMPTY_TABLE_SLOTS && self.old.is_none() {
            self.rehash(capacity_for(self.live), self.last);
        }
        if head >= COMPACT_MIN && head * 4 >= n_groups {
            self.g_arrival.drain(..head);
            self.g_first.drain(..head);
            self.g_live.drain(..head);
            self.g_head = 0;
        }
        forgotten
    }

    /// The snapshot's columns, borrowed (a growth under way is finished first): a snapshot
    /// writes them straight into its bytes, with no copy of the table between.
    pub fn snapshot_view(&mut self) -> DedupView<'_> {
        self.finish_move();
        let head = self.g_head;
        DedupView {
            keys: &self.table.keys,
            offs: &self.table.offs,
            base: self.table.base,
            g_arrival: &self.g_arrival[head..],
            g_first: &self.g_first[head..],
            g_live: &self.g_live[head..],
            floor: self.floor,
            last: self.last,
        }
    }

    /// An index from a snapshot's columns; the message of the Python index's ValueError if they
    /// are not a consistent table.
    pub fn from_parts(window_ns: i64, parts: DedupParts) -> Result<Self, &'static str> {
        let capacity = parts.keys.len();
        if capacity != parts.offs.len() || capacity < 1 {
            return Err("dedup snapshot: bad table size");
        }
        if !(parts.g_arrival.len() == parts.g_first.len() && parts.g_first.len() == parts.g_live.len()) {
            return Err("dedup snapshot: bad groups");
        }
        if !(parts.base < parts.floor && parts.floor <= parts.last.saturating_add(1)) {
            return Err("dedup snapshot: bad base or floor");
        }
        let used = capacity - parts.offs.count_zero();
        if used == capacity {
            // Never written (a table is rebuilt long before it fills), and a lookup of a key not
            // in it would probe forever.
            return Err("dedup snapshot: table has no empty slot");
        }
        // The groups own live entries of the table, each once.
        let live = parts.g_live.iter().try_fold(0u64, |sum, &n| sum.checked_add(n));
        let live = match live.and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n <= used => n,
            _ => return Err("dedup snapshot: bad groups"),
        };
        Ok(Self {
            window_ns,
            table: Table { keys: parts.keys, offs: parts.offs, base: parts.base },
            old: None,
            next: None,
            live,
            used,
            floor: parts.floor,
            last: parts.last,
            g_arrival: parts.g_arrival,
            g_first: parts.g_first,
            g_live: parts.g_live,
            g_head: 0,
        })
    }

    // ------------------------------------------------------------------ internals

    /// The group owning `offset`: the last live group whose first offset is at or below it.
    fn group_of(&self, offset: u64) -> usize {
        self.g_head + self.g_first[self.g_head..].partition_point(|&f| f <= offset) - 1
    }

    /// Rebuild into `capacity` slots at once (dropping expired entries).
    fn rehash(&mut self, capacity: usize, last: u64) {
        self.finish_move();
        self.start_move(capacity, last);
        self.finish_move();
    }

    /// The most slots the next growth can need, give or take the add that starts it: its live
    /// keys are at most its used slots, which stay under `MAX_LOAD` of the table until that add.
    fn growth_capacity_bound(&self) -> usize {
        let cap = self.table.cap();
        capacity_for(cap * MAX_LOAD.0 / MAX_LOAD.1 + cap / 16)
    }

    /// Make the table the old one and start an empty one of `capacity` slots, its base just below
    /// the floor, its offset column 32-bit unless the offsets up to `last` would not fit. The
    /// columns prepared for it are used if they are ready and large enough.
    fn start_move(&mut self, capacity: usize, last: u64) {
        let base = self.floor - 1;
        let wide = last - base > u64::from(u32::MAX);
        let prepared = self.next.take().and_then(|pending| pending.take(capacity));
        let table = match prepared {
            Some(columns) if !wide => {
                Table { keys: columns.keys, offs: OffsetColumn::Narrow(columns.offs), base }
            }
            _ => Table::new(capacity, wide, base),
        };
        let full = std::mem::replace(&mut self.table, table);
        self.old = Some((full, 0));
        self.used = 0;
    }

    /// Move the live entries of the old table's next `slots` slots (unless their key is already in
    /// the new table); drop the old table once all are moved.
    fn move_slots(&mut self, slots: usize) {
        let Some((old, start)) = self.old.take() else { return };
        let end = (start + slots).min(old.cap());
        let floor = self.floor - old.base; // as stored in the old table
        let mut used = 0;
        for i in start..end {
            let stored = old.offs.get(i);
            if stored >= floor {
                // Re-based: the new base is at or above the old one, and below every live offset.
                used += self.table.insert_absent(old.keys[i], stored + old.base - self.table.base);
            }
        }
        self.used += used;
        if end < old.cap() {
            self.old = Some((old, end));
        }
    }

    fn finish_move(&mut self) {
        if let Some((old, _)) = &self.old {
            let cap = old.cap();
            self.move_slots(cap);
        }
    }

    /// The old table's live offset for `key`.
    fn old_get(&self, key: u64) -> Option<u64> {
        let (old, _) = self.old.as_ref()?;
        let stored = old.stored(key);
        if stored == 0 {
            return None;
        }
        let off = stored + old.base;
        (off >= self.floor).then_some(off)
    }

    /// Move `key`'s old live entry (if any) into the new table, unless it has one already.
    fn pull(&mut self, key: u64) {
        if let Some(off) = self.old_get(key) {
            let stored = off - self.table.base;
            self.used += self.table.insert_absent(key, stored);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl DedupTable {
        /// The snapshot's columns, copied (what `from_parts` takes).
        fn copied_parts(&mut self) -> DedupParts {
            let v = self.snapshot_view();
            DedupParts {
                keys: v.keys.to_vec(),
                offs: v.offs.clone(),
                base: v.base,
                g_arrival: v.g_arrival.to_vec(),
                g_first: v.g_first.to_vec(),
                g_live: v.g_live.to_vec(),
                floor: v.floor,
                last: v.last,
            }
        }
    }

    const WINDOW: i64 = 1_000;

    #[test]
    fn remembers_and_answers_with_the_original_offset() {
        let mut t = DedupTable::new(WINDOW);
        t.add(10, &[7, 0, u64::MAX], &[1, 2, 3]).unwrap();
        assert_eq!((t.get(7), t.get(0), t.get(u64::MAX), t.get(8)), (Some(1), Some(2), Some(3), None));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn probes_wrap_from_the_last_slot_to_the_first() {
        // Keys whose home is the table's last slot: the second and third go on at slots 0 and 1.
        let mut t = DedupTable::new(WINDOW);
        let last = EMPTY_TABLE_SLOTS as u64 - 1;
        let keys = [last, 2 * last + 1, 3 * last + 2];
        t.add(10, &keys, &[1, 2, 3]).unwrap();
        let (slots, offs) = match t.copied_parts() {
            DedupParts { keys, offs: OffsetColumn::Narrow(offs), .. } => (keys, offs),
            _ => unreachable!("a new table is narrow"),
        };
        assert_eq!((slots[EMPTY_TABLE_SLOTS - 1], slots[0], slots[1]), (keys[0], keys[1], keys[2]));
        assert_eq!((offs[EMPTY_TABLE_SLOTS - 1], offs[0], offs[1]), (1, 2, 3));
        assert_eq!(keys.map(|k| t.get(k)), [Some(1), Some(2), Some(3)]);
        assert_eq!(t.get(4 * last + 3), None); // probes past all three, wrapping, to an empty slot
    }

    #[test]
    fn refuses_offsets_that_do_not_ascend_and_mismatched_lengths() {
        let mut t = DedupTable::new(WINDOW);
        t.add(10, &[1], &[5]).unwrap();
        assert_eq!(t.add(11, &[2], &[5]), Err(AddError::OffsetsNotAscending));
        assert_eq!(t.add(11, &[2], &[]), Err(AddError::LengthMismatch));
        assert_eq!(t.add(11, &[2], &[0]), Err(AddError::OffsetsNotAscending));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn expires_by_arrival_and_reuses_keys() {
        let mut t = DedupTable::new(WINDOW);
        t.add(0, &[1, 2], &[1, 2]).unwrap();
        t.add(500, &[3], &[3]).unwrap();
        assert_eq!(t.expire(1_000), 0); // cutoff 0: nothing arrived before it
        assert_eq!(t.expire(1_001), 2);
        assert_eq!((t.get(1), t.get(3)), (None, Some(3)));
        t.add(1_002, &[1], &[4]).unwrap();
        assert_eq!((t.get(1), t.len()), (Some(4), 2));
    }

    #[test]
    fn grows_incrementally_and_keeps_every_key() {
        let mut t = DedupTable::new(i64::MAX);
        let mut offset = 0;
        for batch in 0..200u64 {
            let keys: Vec<u64> =
                (0..100).map(|i| (batch * 100 + i).wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
            let offsets: Vec<u64> = (1..=100).map(|i| offset + i).collect();
            offset += 100;
            t.add(batch as i64, &keys, &offsets).unwrap();
        }
        assert_eq!(t.len(), 20_000);
        for n in 0..20_000u64 {
            assert_eq!(t.get(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)), Some(n + 1));
        }
        let parts = t.copied_parts();
        assert!(!t.growing());
        let back = DedupTable::from_parts(i64::MAX, parts.clone()).unwrap();
        assert_eq!(back.len(), 20_000);
        assert_eq!(back.clone().copied_parts(), parts);
    }

    /// Adds `n` keys (`k × φ` for the next `n` numbers `k`, offsets `k + 1`) to `t`.
    fn add_next(t: &mut DedupTable, next: &mut u64, n: u64) {
        let keys: Vec<u64> = (*next..*next + n).map(|k| k.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let offsets: Vec<u64> = (*next + 1..=*next + n).collect();
        *next += n;
        t.add(0, &keys, &offsets).unwrap();
    }

    #[test]
    fn a_growth_moves_into_the_columns_prepared_before_it() {
        let mut t = DedupTable::new(i64::MAX);
        let mut next = 0;
        while t.next.is_none() {
            assert!(next < 200_000, "no columns prepared");
            add_next(&mut t, &mut next, 100);
        }
        let pending = t.next.clone().unwrap();
        assert!(pending.bytes() >= PREPARE_MIN_BYTES && !t.growing());
        crate::prefaulted_columns::tests::wait_until_ready(&pending);
        let prepared = pending.ready_keys().unwrap();
        let cap = t.table.cap();
        while t.table.cap() == cap {
            add_next(&mut t, &mut next, 100);
        }
        assert!(t.next.is_none());
        assert_eq!(t.table.keys.as_ptr(), prepared);
        t.finish_move();
        for k in 0..next {
            assert_eq!(t.get(k.wrapping_mul(0x9E37_79B9_7F4A_7C15)), Some(k + 1));
        }
    }

    #[test]
    fn a_small_table_grows_without_prepared_columns() {
        let mut t = DedupTable::new(i64::MAX);
        let mut next = 0;
        add_next(&mut t, &mut next, 580); // 1024 slots: past 11/20 of them, short of 3/5
        assert!(t.next.is_none());
        add_next(&mut t, &mut next, 40);
        assert_eq!(t.table.cap(), capacity_for(620));
    }

    #[test]
    fn widens_the_offset_column_past_two_to_the_32() {
        let mut t = DedupTable::new(WINDOW);
        t.add(0, &[1], &[1]).unwrap();
        t.add(1, &[2], &[1 << 33]).unwrap();
        assert_eq!(t.copied_parts().offs.typecode(), "Q");
        assert_eq!((t.get(1), t.get(2)), (Some(1), Some(1 << 33)));
    }

    #[test]
    fn refuses_inconsistent_parts() {
        let mut parts = DedupTable::new(WINDOW).copied_parts();
        parts.floor = 0;
        assert_eq!(DedupTable::from_parts(WINDOW, parts).unwrap_err(), "dedup snapshot: bad base or floor");
    }
}

//! The statistics cell of `node/aggregation/cells.py`, as a fixed 56-byte struct.
//!
//! `[count, sum, max, last_time, last_offset, last_value]`: `max` and the `last_*` triple cover
//! ADD events only, `last_offset == 0` means "no ADD yet". Event values and times are below 2^63
//! (validation), so every field is an `i64` except the sum, which never wraps in Python and is
//! kept exact here as an `i128`, split in two words so that the struct aligns on 8 bytes (a
//! 16-aligned `i128` would pad every cell to 64).

/// One bucket's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cell {
    pub count: i64,
    sum_lo: u64,
    sum_hi: i64,
    pub max: i64,
    pub last_time: i64,
    pub last_offset: i64,
    pub last_value: i64,
}

/// One event as a cell folds it.
#[derive(Clone, Copy, Debug)]
pub struct Fold {
    pub value: i64,
    pub time: i64,
    pub offset: i64,
    pub remove: bool,
    /// Whether the value counts in the sum (SUM metrics only, as in Python).
    pub with_sum: bool,
}

impl Cell {
    #[inline]
    pub fn sum(&self) -> i128 {
        (i128::from(self.sum_hi) << 64) | i128::from(self.sum_lo)
    }

    #[inline]
    pub fn set_sum(&mut self, sum: i128) {
        self.sum_lo = sum as u64; // the low word: truncation is the point
        self.sum_hi = (sum >> 64) as i64;
    }

    /// A cell from the six statistics of a snapshot.
    pub fn from_stats(stats: [i128; 6]) -> Option<Self> {
        let narrow = |i: usize| i64::try_from(stats[i]).ok();
        let mut cell = Self {
            count: narrow(0)?,
            max: narrow(2)?,
            last_time: narrow(3)?,
            last_offset: narrow(4)?,
            last_value: narrow(5)?,
            ..Self::default()
        };
        cell.set_sum(stats[1]);
        Some(cell)
    }

    /// The six statistics, in snapshot order.
    pub fn stats(&self) -> [i128; 6] {
        [
            i128::from(self.count),
            self.sum(),
            i128::from(self.max),
            i128::from(self.last_time),
            i128::from(self.last_offset),
            i128::from(self.last_value),
        ]
    }

    /// The cell of one event alone (`[1, sv, value, t, offset, value]` or `[-1, -sv, 0, 0, 0, 0]`).
    pub fn of(event: &Fold) -> Self {
        let mut cell = Self::default();
        if event.remove {
            cell.count = -1;
        } else {
            cell.count = 1;
            cell.max = event.value;
            cell.last_time = event.time;
            cell.last_offset = event.offset;
            cell.last_value = event.value;
        }
        if event.with_sum {
            cell.set_sum(if event.remove { -i128::from(event.value) } else { i128::from(event.value) });
        }
        cell
    }

    /// Apply one event (`cells.fold_row`): the later (time, offset) ADD is the last one.
    #[inline]
    pub fn fold(&mut self, event: &Fold) {
        let signed = if event.remove { -1 } else { 1 };
        self.count += signed;
        if event.with_sum {
            self.set_sum(self.sum() + i128::from(signed) * i128::from(event.value));
        }
        if event.remove {
            return;
        }
        if event.value > self.max {
            self.max = event.value;
        }
        if (event.time, event.offset) > (self.last_time, self.last_offset) {
            self.last_time = event.time;
            self.last_offset = event.offset;
            self.last_value = event.value;
        }
    }
}

/// The union of cells in time order that do not overlap (`merge_cells(..., latest_last=True)`):
/// the last ADD is the last cell's that has one.
#[derive(Default)]
pub struct TimeOrderedMerge {
    merged: Option<Cell>,
    sum: i128,
}

impl TimeOrderedMerge {
    pub fn add(&mut self, cell: &Cell) {
        self.sum += cell.sum();
        match &mut self.merged {
            None => self.merged = Some(*cell),
            Some(m) => {
                m.count += cell.count;
                m.max = m.max.max(cell.max);
                if cell.last_offset != 0 {
                    m.last_time = cell.last_time;
                    m.last_offset = cell.last_offset;
                    m.last_value = cell.last_value;
                }
            }
        }
    }

    /// The merged cell, None if no cell was added.
    pub fn finish(self) -> Option<Cell> {
        self.merged.map(|mut m| {
            m.set_sum(self.sum);
            m
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(value: i64, time: i64, offset: i64) -> Fold {
        Fold { value, time, offset, remove: false, with_sum: true }
    }

    #[test]
    fn sums_past_64_bits_stay_exact() {
        let mut cell = Cell::of(&add(i64::MAX, 1, 1));
        for offset in 2..5 {
            cell.fold(&add(i64::MAX, 1, offset));
        }
        assert_eq!(cell.sum(), 4 * i128::from(i64::MAX));
        cell.fold(&Fold { remove: true, ..add(i64::MAX, 1, 9) });
        assert_eq!(
            cell.stats(),
            [3, 3 * i128::from(i64::MAX), i128::from(i64::MAX), 1, 4, i128::from(i64::MAX)]
        );
        cell.set_sum(-5);
        assert_eq!(cell.sum(), -5);
    }

    #[test]
    fn the_later_time_then_offset_is_the_last() {
        let mut cell = Cell::of(&add(5, 10, 1));
        cell.fold(&add(7, 9, 2)); // earlier in time: not the last
        cell.fold(&add(3, 10, 3)); // same time, later offset: the last
        assert_eq!(cell.stats(), [3, 15, 7, 10, 3, 3]);
    }

    #[test]
    fn a_time_ordered_merge_takes_the_last_cell_with_an_add() {
        let a = Cell::of(&add(5, 10, 1));
        let removed = Cell::of(&Fold { remove: true, ..add(2, 20, 2) });
        let mut merge = TimeOrderedMerge::default();
        merge.add(&a);
        merge.add(&removed);
        assert_eq!(merge.finish().unwrap().stats(), [0, 3, 5, 10, 1, 5]);
        assert!(TimeOrderedMerge::default().finish().is_none());
    }
}

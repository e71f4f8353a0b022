//! Ascending log positions packed 4 bytes each while they fit in 32 bits (a partition's first
//! 4 GiB of log), 8 after: `node/aggregation/positions.py`'s `array('I')` widened to `array('q')`.
//! The event index and the minute cells keep one per stored event for as long as the process runs.
//!
//! The last position is kept beside the list as well: an event's `push_new` then compares with it
//! without reading the list's buffer, which (one list per account hour or minute cell, scattered
//! over the heap) was a cache miss per event, four fifths of the time `push_new` took; appending
//! only writes there.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Positions {
    /// The list's last position (meaningless while the list is empty).
    last: u64,
    list: List,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum List {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl List {
    fn len(&self) -> usize {
        match self {
            Self::Narrow(v) => v.len(),
            Self::Wide(v) => v.len(),
        }
    }
}

impl Positions {
    /// No position (a place holder while a list moves).
    pub fn empty() -> Self {
        Self { last: 0, list: List::Narrow(Vec::new()) }
    }

    pub fn of(first: u64) -> Self {
        Self::from_sorted(&[first])
    }

    pub fn from_sorted(positions: &[u64]) -> Self {
        let list = match positions.iter().map(|&p| u32::try_from(p)).collect::<Result<Vec<u32>, _>>() {
            Ok(narrow) => List::Narrow(narrow),
            Err(_) => List::Wide(positions.to_vec()),
        };
        Self { last: positions.last().copied().unwrap_or(0), list }
    }

    pub fn last(&self) -> Option<u64> {
        (self.list.len() > 0).then_some(self.last)
    }

    /// Append `position` (not below the last) unless it is the last already.
    pub fn push_new(&mut self, position: u64) {
        if self.last() == Some(position) {
            return;
        }
        self.last = position;
        match &mut self.list {
            List::Narrow(v) => match u32::try_from(position) {
                Ok(narrow) => v.push(narrow),
                Err(_) => {
                    let mut wide: Vec<u64> = v.iter().map(|&p| u64::from(p)).collect();
                    wide.push(position);
                    self.list = List::Wide(wide);
                }
            },
            List::Wide(v) => v.push(position),
        }
    }

    pub fn to_vec(&self) -> Vec<u64> {
        match &self.list {
            List::Narrow(v) => v.iter().map(|&p| u64::from(p)).collect(),
            List::Wide(v) => v.clone(),
        }
    }

    /// The positions below `below`.
    pub fn below(&self, below: u64) -> Vec<u64> {
        let mut all = self.to_vec();
        all.truncate(all.partition_point(|&p| p < below));
        all
    }

    pub fn memory_bytes(&self) -> usize {
        match &self.list {
            List::Narrow(v) => v.capacity() * 4,
            List::Wide(v) => v.capacity() * 8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widens_at_the_first_position_past_32_bits() {
        let mut positions = Positions::of(7);
        positions.push_new(7);
        positions.push_new(9);
        assert!(matches!(positions.list, List::Narrow(_)));
        positions.push_new(1 << 33);
        assert!(matches!(positions.list, List::Wide(_)));
        assert_eq!(positions.to_vec(), vec![7, 9, 1 << 33]);
        assert_eq!(positions.last(), Some(1 << 33));
        assert_eq!(positions.below(10), vec![7, 9]);
        assert_eq!(Positions::from_sorted(&[1, 1 << 40]).to_vec(), vec![1, 1 << 40]);
        assert!(matches!(Positions::from_sorted(&[1, 1 << 40]).list, List::Wide(_)));
    }

    #[test]
    fn the_last_position_follows_the_list() {
        let mut positions = Positions::empty();
        assert_eq!(positions.last(), None);
        positions.push_new(0);
        positions.push_new(0);
        assert_eq!((positions.to_vec(), positions.last()), (vec![0], Some(0)));
        for p in [3, 3, 5, 8, 8] {
            positions.push_new(p);
        }
        assert_eq!((positions.to_vec(), positions.last()), (vec![0, 3, 5, 8], Some(8)));
        assert_eq!(Positions::from_sorted(&[]).last(), None);
        assert_eq!(Positions::from_sorted(&[2, 4]).last(), Some(4));
    }
}

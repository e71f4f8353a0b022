//! Ascending log positions packed 4 bytes each while they fit in 32 bits (a partition's first
//! 4 GiB of log), 8 after: `node/aggregation/positions.py`'s `array('I')` widened to `array('q')`.
//! The event index and the minute cells keep one per stored event for as long as the process runs.

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Positions {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

impl Positions {
    pub fn of(first: u64) -> Self {
        match u32::try_from(first) {
            Ok(narrow) => Self::Narrow(vec![narrow]),
            Err(_) => Self::Wide(vec![first]),
        }
    }

    pub fn from_sorted(positions: &[u64]) -> Self {
        match positions.iter().map(|&p| u32::try_from(p)).collect::<Result<Vec<u32>, _>>() {
            Ok(narrow) => Self::Narrow(narrow),
            Err(_) => Self::Wide(positions.to_vec()),
        }
    }

    pub fn last(&self) -> Option<u64> {
        match self {
            Self::Narrow(v) => v.last().map(|&p| u64::from(p)),
            Self::Wide(v) => v.last().copied(),
        }
    }

    /// Append `position` (not below the last) unless it is the last already.
    pub fn push_new(&mut self, position: u64) {
        if self.last() == Some(position) {
            return;
        }
        match self {
            Self::Narrow(v) => match u32::try_from(position) {
                Ok(narrow) => v.push(narrow),
                Err(_) => {
                    let mut wide: Vec<u64> = v.iter().map(|&p| u64::from(p)).collect();
                    wide.push(position);
                    *self = Self::Wide(wide);
                }
            },
            Self::Wide(v) => v.push(position),
        }
    }

    pub fn to_vec(&self) -> Vec<u64> {
        match self {
            Self::Narrow(v) => v.iter().map(|&p| u64::from(p)).collect(),
            Self::Wide(v) => v.clone(),
        }
    }

    /// The positions below `below`.
    pub fn below(&self, below: u64) -> Vec<u64> {
        let mut all = self.to_vec();
        all.truncate(all.partition_point(|&p| p < below));
        all
    }

    pub fn memory_bytes(&self) -> usize {
        match self {
            Self::Narrow(v) => v.capacity() * 4,
            Self::Wide(v) => v.capacity() * 8,
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
        assert!(matches!(positions, Positions::Narrow(_)));
        positions.push_new(1 << 33);
        assert_eq!(positions, Positions::Wide(vec![7, 9, 1 << 33]));
        assert_eq!(positions.below(10), vec![7, 9]);
        assert_eq!(Positions::from_sorted(&[1, 1 << 40]), Positions::Wide(vec![1, 1 << 40]));
    }
}

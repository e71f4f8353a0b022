//! A map from (account, bucket) to a value, iterated in insertion order.
//!
//! The Python store keeps one dict per level and slot, and a snapshot lists a dict's cells in its
//! insertion order; this map keeps that order (entries are appended, and removed only by
//! `retain`, which keeps the order of the rest, as deleting from a dict does) so that both
//! engines write the same bytes. Keys and values live in two dense vectors; the hash index is an
//! open-addressing table of 32-bit entry numbers (linear probing, at most 3/4 full), about
//! 5-11 bytes per entry on top of the 16-byte key, where a `HashMap` entry would repeat the key.

/// (account id, bucket): a minute/hour/day number, or a period start in ns.
pub type Key = (u64, i64);

const EMPTY: u32 = 0;
const MIN_SLOTS: usize = 8;

pub struct CellMap<V> {
    keys: Vec<Key>,
    values: Vec<V>,
    /// Entry number + 1, or EMPTY; a power-of-two length.
    slots: Vec<u32>,
}

impl<V> Default for CellMap<V> {
    fn default() -> Self {
        Self { keys: Vec::new(), values: Vec::new(), slots: Vec::new() }
    }
}

#[inline]
fn hash(key: Key) -> u64 {
    // splitmix64's finalizer over both words: accounts and buckets are both sequential-ish.
    let mut x = key.0 ^ (key.1 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl<V> CellMap<V> {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    pub fn values(&self) -> &[V] {
        &self.values
    }

    pub fn value(&self, entry: usize) -> &V {
        &self.values[entry]
    }

    pub fn value_mut(&mut self, entry: usize) -> &mut V {
        &mut self.values[entry]
    }

    /// Bytes held by the map's vectors (capacity, not length).
    pub fn memory_bytes(&self) -> usize {
        self.keys.capacity() * std::mem::size_of::<Key>()
            + self.values.capacity() * std::mem::size_of::<V>()
            + self.slots.capacity() * 4
    }

    /// The entry number of `key`, if present.
    #[inline]
    pub fn find(&self, key: Key) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = hash(key) as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return None;
            }
            let entry = (slot - 1) as usize;
            if self.keys[entry] == key {
                return Some(entry);
            }
            i = (i + 1) & mask;
        }
    }

    /// Append `key` (which must be absent) with `value`; returns its entry number.
    pub fn push(&mut self, key: Key, value: V) -> usize {
        if (self.keys.len() + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let entry = self.keys.len();
        self.keys.push(key);
        self.values.push(value);
        self.place(key, entry);
        entry
    }

    /// Keep only the entries whose key passes `keep`, in their order; returns the old entry
    /// numbers of those kept (entry `i` now is old entry `kept[i]`), for columns kept beside the
    /// map. The index is rebuilt at the size the remaining entries need.
    pub fn retain(&mut self, mut keep: impl FnMut(Key) -> bool) -> Vec<usize> {
        let mask: Vec<bool> = self.keys.iter().map(|&key| keep(key)).collect();
        let kept: Vec<usize> = (0..mask.len()).filter(|&entry| mask[entry]).collect();
        if kept.len() == mask.len() {
            return kept;
        }
        // `Vec::retain` visits the elements once each, in order.
        let mut flags = mask.iter();
        self.keys.retain(|_| *flags.next().expect("one flag per key"));
        let mut flags = mask.iter();
        self.values.retain(|_| *flags.next().expect("one flag per value"));
        let mut n = MIN_SLOTS;
        while (self.keys.len() + 1) * 4 > n * 3 {
            n *= 2;
        }
        self.slots = vec![EMPTY; n];
        for entry in 0..self.keys.len() {
            self.place(self.keys[entry], entry);
        }
        kept
    }

    fn place(&mut self, key: Key, entry: usize) {
        let mask = self.slots.len() - 1;
        let mut i = hash(key) as usize & mask;
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = u32::try_from(entry + 1).expect("fewer than 2^32 cells per level");
    }

    fn grow(&mut self) {
        let n = (self.slots.len() * 2).max(MIN_SLOTS);
        self.slots = vec![EMPTY; n];
        for entry in 0..self.keys.len() {
            self.place(self.keys[entry], entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_insertion_order_and_finds_every_key() {
        let mut map: CellMap<u32> = CellMap::default();
        let keys: Vec<Key> = (0..1000u64).map(|i| (i % 7 + 1, (i as i64) * 13 - 500)).collect();
        for (n, &key) in keys.iter().enumerate() {
            if map.find(key).is_none() {
                assert_eq!(map.push(key, n as u32), map.len() - 1);
            }
        }
        assert_eq!(map.len(), 1000);
        assert_eq!(map.keys(), &keys[..]);
        for (n, &key) in keys.iter().enumerate() {
            assert_eq!(map.find(key), Some(n));
            assert_eq!(*map.value(n), n as u32);
        }
        assert_eq!(map.find((99, 0)), None);
    }

    #[test]
    fn retain_keeps_the_order_of_the_rest_and_finds_them() {
        let mut map: CellMap<u32> = CellMap::default();
        for i in 0..100u64 {
            map.push((i % 3, i as i64), i as u32);
        }
        let kept = map.retain(|(_, bucket)| bucket % 4 != 0);
        assert_eq!(kept, (0..100).filter(|i| i % 4 != 0).collect::<Vec<_>>());
        assert_eq!(map.len(), 75);
        for (entry, &old) in kept.iter().enumerate() {
            assert_eq!(map.find((old as u64 % 3, old as i64)), Some(entry));
            assert_eq!(*map.value(entry), old as u32);
        }
        assert_eq!(map.find((0, 0)), None);
        assert_eq!(map.push((0, 0), 7), 75);
        assert_eq!(map.find((0, 0)), Some(75));
    }

    #[test]
    fn one_partition_s_accounts_spread_over_the_table() {
        // They share mix64(account) % 64: the hash must not inherit that.
        let accounts = (1..200_000u64).filter(|&a| crate::partitioning::partition_of(a, 64) == 9);
        let slots: std::collections::HashSet<u64> =
            accounts.take(1000).map(|a| hash((a, 29_538_720)) & 1023).collect();
        assert!(slots.len() > 500, "{} of 1024 slots", slots.len());
    }
}

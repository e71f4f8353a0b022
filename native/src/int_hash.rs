//! A hasher for maps keyed by integers (account ids, entry numbers) on the per-event path: one
//! multiply and fold per key instead of SipHash's rounds. Not `mix64`: a partition's accounts all
//! share `mix64(account) % partitions`, so its low bits, which pick a map's bucket, would collide.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

fn fold(state: u64, x: u64) -> u64 {
    let h = (state ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    h ^ (h >> 32)
}

#[derive(Default, Clone, Copy)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = fold(self.0, u64::from(b));
        }
    }

    fn write_u32(&mut self, x: u32) {
        self.0 = fold(self.0, u64::from(x));
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = fold(self.0, x);
    }
}

/// A `HashMap` keyed by integers, hashed with [`IntHasher`].
pub type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partitioning::partition_of;

    #[test]
    fn one_partition_s_accounts_spread_over_the_low_bits() {
        let accounts: Vec<u64> = (1..100_000u64).filter(|&a| partition_of(a, 64) == 5).take(1000).collect();
        let buckets: std::collections::HashSet<u64> = accounts
            .iter()
            .map(|&a| {
                let mut h = IntHasher::default();
                h.write_u64(a);
                h.finish() & 1023
            })
            .collect();
        assert!(buckets.len() > 500, "{} of 1024 buckets", buckets.len());
    }
}

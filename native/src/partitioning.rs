//! Which partition an account lives in: `mix64(account_id) % partitions`, bit for bit the function
//! of `cluster_client/partitioning.py`.

/// SplitMix64's finaliser applied to `x + golden gamma`, all arithmetic mod 2^64.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The partition owning `account_id` among `partitions` (at least 1).
pub fn partition_of(account_id: u64, partitions: u64) -> u64 {
    mix64(account_id) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_python_reference_values() {
        // Values of cluster_client.partitioning.mix64.
        assert_eq!(mix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(mix64(1), 0x910A_2DEC_8902_5CC1);
        assert_eq!(partition_of(u64::MAX, 7), mix64(u64::MAX) % 7);
    }
}

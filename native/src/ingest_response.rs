//! The bytes of an `IngestResponse` (`proto/unimeter/v1/ingest_service.proto`), written as
//! protobuf's own serializer writes them: fields in number order, zero scalars and an empty list
//! left out, the offsets packed. Tested byte for byte against protobuf
//! (`tests/unit/test_native_ingest_answer.py`).

use crate::wire::{LEN, VARINT};

const N_STORED: u32 = 1;
const N_DUPLICATES: u32 = 2;
const OFFSETS: u32 = 3;

/// An `IngestResponse` with these counts and offsets (in request order).
pub fn encode_ingest_response(n_stored: u32, n_duplicates: u32, offsets: &[u64]) -> Vec<u8> {
    let packed_len: usize = offsets.iter().map(|&o| varint_len(o)).sum();
    let mut out = Vec::with_capacity(packed_len + 24);
    if n_stored != 0 {
        varint(&mut out, u64::from(N_STORED << 3 | VARINT));
        varint(&mut out, u64::from(n_stored));
    }
    if n_duplicates != 0 {
        varint(&mut out, u64::from(N_DUPLICATES << 3 | VARINT));
        varint(&mut out, u64::from(n_duplicates));
    }
    if !offsets.is_empty() {
        varint(&mut out, u64::from(OFFSETS << 3 | LEN));
        varint(&mut out, packed_len as u64);
        for &offset in offsets {
            varint(&mut out, offset);
        }
    }
    out
}

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    // 7 bits a byte; zero still takes one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_and_an_empty_list_are_left_out() {
        assert_eq!(encode_ingest_response(0, 0, &[]), Vec::<u8>::new());
    }

    #[test]
    fn counts_then_packed_offsets() {
        // n_stored 2, n_duplicates 1, offsets [1, 300, 1]: 300 is two varint bytes (0xAC 0x02).
        let bytes = encode_ingest_response(2, 1, &[1, 300, 1]);
        assert_eq!(bytes, [0x08, 2, 0x10, 1, 0x1A, 4, 1, 0xAC, 0x02, 1]);
    }

    #[test]
    fn varint_lengths_match_the_bytes_written() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            varint(&mut out, value);
            assert_eq!(varint_len(value), out.len(), "{value}");
        }
    }
}

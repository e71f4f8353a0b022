//! The 64-bit dedup keys of `node/dedup_index.py`, bit for bit: BLAKE2b with an 8-byte digest
//! over the same bytes (`event_key`: a text of the id and its scope; `derived_key`: the msgpack
//! encoding of the event's content), read little-endian. Written out here rather than taken from
//! crates: BLAKE2b and the few msgpack forms needed are short, and the crate stays dependency-light.

const IV: [u64; 8] = [
    0x6a09_e667_f3bc_c908,
    0xbb67_ae85_84ca_a73b,
    0x3c6e_f372_fe94_f82b,
    0xa54f_f53a_5f1d_36f1,
    0x510e_527f_ade6_82d1,
    0x9b05_688c_2b3e_6c1f,
    0x1f83_d9ab_fb41_bd6b,
    0x5be0_cd19_137e_2179,
];

const SIGMA: [[usize; 16]; 12] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
];

const BLOCK: usize = 128;

/// BLAKE2b's mixing function G on four words of the state. Always inlined: with its indices
/// constant at each call site, the state stays in registers and the bounds checks go away (as a
/// call it was an eighth of the in-process ingest profile).
#[inline(always)]
fn mix(v: &mut [u64; 16], (a, b, c, d): (usize, usize, usize, usize), x: u64, y: u64) {
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(x);
    v[d] = (v[d] ^ v[a]).rotate_right(32);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(24);
    v[a] = v[a].wrapping_add(v[b]).wrapping_add(y);
    v[d] = (v[d] ^ v[a]).rotate_right(16);
    v[c] = v[c].wrapping_add(v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(63);
}

/// One BLAKE2b round: G on the columns, then on the diagonals, with the message words `s` picks.
#[inline(always)]
fn round(v: &mut [u64; 16], m: &[u64; 16], s: &[usize; 16]) {
    mix(v, (0, 4, 8, 12), m[s[0]], m[s[1]]);
    mix(v, (1, 5, 9, 13), m[s[2]], m[s[3]]);
    mix(v, (2, 6, 10, 14), m[s[4]], m[s[5]]);
    mix(v, (3, 7, 11, 15), m[s[6]], m[s[7]]);
    mix(v, (0, 5, 10, 15), m[s[8]], m[s[9]]);
    mix(v, (1, 6, 11, 12), m[s[10]], m[s[11]]);
    mix(v, (2, 7, 8, 13), m[s[12]], m[s[13]]);
    mix(v, (3, 4, 9, 14), m[s[14]], m[s[15]]);
}

fn compress(h: &mut [u64; 8], block: &[u8; BLOCK], bytes_so_far: u128, last: bool) {
    let mut m = [0u64; 16];
    for (word, chunk) in m.iter_mut().zip(block.chunks_exact(8)) {
        *word = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
    }
    let mut v = [0u64; 16];
    v[..8].copy_from_slice(h);
    v[8..].copy_from_slice(&IV);
    v[12] ^= bytes_so_far as u64;
    v[13] ^= (bytes_so_far >> 64) as u64;
    if last {
        v[14] = !v[14];
    }
    // The twelve rounds spelled out: with each round's SIGMA row a constant, the message words
    // are picked at compile time (a loop over the rows read them per round: 160 against 133 ns a
    // key).
    round(&mut v, &m, &SIGMA[0]);
    round(&mut v, &m, &SIGMA[1]);
    round(&mut v, &m, &SIGMA[2]);
    round(&mut v, &m, &SIGMA[3]);
    round(&mut v, &m, &SIGMA[4]);
    round(&mut v, &m, &SIGMA[5]);
    round(&mut v, &m, &SIGMA[6]);
    round(&mut v, &m, &SIGMA[7]);
    round(&mut v, &m, &SIGMA[8]);
    round(&mut v, &m, &SIGMA[9]);
    round(&mut v, &m, &SIGMA[10]);
    round(&mut v, &m, &SIGMA[11]);
    for i in 0..8 {
        h[i] ^= v[i] ^ v[i + 8];
    }
}

/// `int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")`.
pub fn blake2b_64(data: &[u8]) -> u64 {
    let mut h = IV;
    // Parameter block: digest length 8, no key, fanout 1, depth 1.
    h[0] ^= 0x0101_0000 ^ 8;
    let mut offset = 0;
    // Every block but the last is compressed as it comes; the last one (possibly full) is final.
    while data.len() - offset > BLOCK {
        let block: &[u8; BLOCK] = data[offset..offset + BLOCK].try_into().expect("full block");
        offset += BLOCK;
        compress(&mut h, block, offset as u128, false);
    }
    let mut last = [0u8; BLOCK];
    last[..data.len() - offset].copy_from_slice(&data[offset..]);
    compress(&mut h, &last, data.len() as u128, true);
    h[0]
}

/// The key of an event with an explicit id: the digest of
/// `"{account}\0{metric}\0{generation}\0i\0{event_id}"`.
pub fn event_key(account_id: u64, metric_code: &str, generation: u64, event_id: &str) -> u64 {
    let write = |text: &mut dyn Text| {
        push_decimal(text, account_id);
        text.put(&[0]);
        text.put(metric_code.as_bytes());
        text.put(&[0]);
        push_decimal(text, generation);
        text.put(b"\0i\0");
        text.put(event_id.as_bytes());
    };
    let most = 2 * U64_DIGITS + 5 + metric_code.len() + event_id.len();
    if most <= STACK_TEXT {
        // The usual id fits on the stack: no allocation per key (one was ~1.5% of a loaded
        // server's time; `format!`, growing its string piece by piece, had been a tenth).
        let mut text = StackText { bytes: [0; STACK_TEXT], len: 0 };
        write(&mut text);
        return blake2b_64(&text.bytes[..text.len]);
    }
    let mut text = Vec::with_capacity(most);
    write(&mut text);
    blake2b_64(&text)
}

/// Where a key's text is written: a vector, or a buffer on the stack.
trait Text {
    fn put(&mut self, bytes: &[u8]);
}

impl Text for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A key's text up to `STACK_TEXT` bytes (the caller checks the bound first).
struct StackText {
    bytes: [u8; STACK_TEXT],
    len: usize,
}

impl Text for StackText {
    fn put(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }
}

/// Key texts up to this many bytes are written on the stack.
const STACK_TEXT: usize = 192;

/// The most decimal digits of a u64.
const U64_DIGITS: usize = 20;

/// `value` in decimal, as `format!("{value}")` writes it.
fn push_decimal(out: &mut dyn Text, mut value: u64) {
    let mut digits = [0u8; U64_DIGITS];
    let mut i = U64_DIGITS;
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.put(&digits[i..]);
}

/// msgpack encoding, in the forms `msgpack.packb` picks (the smallest that holds each value).
struct Msgpack(Vec<u8>);

impl Msgpack {
    fn int(&mut self, v: i128) {
        let out = &mut self.0;
        if v >= 0 {
            match v {
                0..=0x7f => out.push(v as u8),
                0x80..=0xff => out.extend_from_slice(&[0xcc, v as u8]),
                0x100..=0xffff => {
                    out.push(0xcd);
                    out.extend_from_slice(&(v as u16).to_be_bytes());
                }
                0x1_0000..=0xffff_ffff => {
                    out.push(0xce);
                    out.extend_from_slice(&(v as u32).to_be_bytes());
                }
                _ => {
                    out.push(0xcf);
                    out.extend_from_slice(&(v as u64).to_be_bytes());
                }
            }
        } else if v >= -32 {
            out.push(v as i8 as u8);
        } else if v >= -0x80 {
            out.extend_from_slice(&[0xd0, v as i8 as u8]);
        } else if v >= -0x8000 {
            out.push(0xd1);
            out.extend_from_slice(&(v as i16).to_be_bytes());
        } else if v >= -0x8000_0000 {
            out.push(0xd2);
            out.extend_from_slice(&(v as i32).to_be_bytes());
        } else {
            out.push(0xd3);
            out.extend_from_slice(&(v as i64).to_be_bytes());
        }
    }

    fn str(&mut self, s: &str) {
        let out = &mut self.0;
        let n = s.len();
        if n < 32 {
            out.push(0xa0 | n as u8);
        } else if n <= 0xff {
            out.extend_from_slice(&[0xd9, n as u8]);
        } else if n <= 0xffff {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        out.extend_from_slice(s.as_bytes());
    }

    fn array(&mut self, n: usize) {
        let out = &mut self.0;
        if n < 16 {
            out.push(0x90 | n as u8);
        } else if n <= 0xffff {
            out.push(0xdc);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        } else {
            out.push(0xdd);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

/// The content of an event with its own time and no id, as `derived_key` hashes it.
pub struct DerivedKeyInput<'a> {
    pub account_id: u64,
    pub metric_code: &'a str,
    pub generation: u64,
    pub time_unix_nano: i64,
    pub value: u64,
    pub operation: i64,
    /// Distinct keys, in any order: they are hashed sorted by key.
    pub properties: Vec<(&'a str, &'a str)>,
}

/// The key of an event without an id: the digest of the msgpack encoding of
/// `(account, metric, generation, "d", time, value, operation, sorted property pairs)`.
pub fn derived_key(input: DerivedKeyInput<'_>) -> u64 {
    let mut properties = input.properties;
    properties.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut packed = Msgpack(Vec::with_capacity(64));
    packed.array(8);
    packed.int(i128::from(input.account_id));
    packed.str(input.metric_code);
    packed.int(i128::from(input.generation));
    packed.str("d");
    packed.int(i128::from(input.time_unix_nano));
    packed.int(i128::from(input.value));
    packed.int(i128::from(input.operation));
    packed.array(properties.len());
    for (key, value) in properties {
        packed.array(2);
        packed.str(key);
        packed.str(value);
    }
    blake2b_64(&packed.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_as_format_writes_them() {
        for value in [0, 7, 10, 99, 1_000_000, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().into_bytes());
        }
        let text = format!("{}\0{}\0{}\0i\0{}", 42u64, "calls", 7u64, "é-1");
        assert_eq!(event_key(42, "calls", 7, "é-1"), blake2b_64(text.as_bytes()));
    }

    #[test]
    fn event_keys_are_the_same_on_the_stack_and_on_the_heap() {
        // Texts on both sides of STACK_TEXT, whatever the digits of the numbers.
        for id_len in [0, 100, 130, 131, 132, 133, 150, 200, 1000] {
            let id = "x".repeat(id_len);
            for (account, generation) in [(0, 0), (u64::MAX, u64::MAX), (7, 1 << 40)] {
                let text = format!("{account}\0m\0{generation}\0i\0{id}");
                assert_eq!(event_key(account, "m", generation, &id), blake2b_64(text.as_bytes()), "{id_len}");
            }
        }
    }

    // Expected values from Python: int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little").
    #[test]
    fn blake2b_matches_hashlib_across_block_boundaries() {
        assert_eq!(blake2b_64(b""), EMPTY);
        assert_eq!(blake2b_64(b"abc"), ABC);
        assert_eq!(blake2b_64(&[7u8; 128]), ONE_BLOCK);
        assert_eq!(blake2b_64(&[7u8; 129]), ONE_BLOCK_AND_A_BYTE);
    }

    #[test]
    fn msgpack_forms_are_the_smallest() {
        let mut m = Msgpack(Vec::new());
        m.int(127);
        m.int(128);
        m.int(-33);
        m.int(i128::from(u64::MAX));
        m.str("é");
        m.array(16);
        assert_eq!(
            m.0,
            [&[0x7f, 0xcc, 0x80, 0xd0, 0xdf, 0xcf][..], &[0xff; 8], &[0xa2, 0xc3, 0xa9, 0xdc, 0x00, 0x10]]
                .concat()
        );
    }

    const EMPTY: u64 = 0xb4b2_7974_57a0_a6e4;
    const ABC: u64 = 0x5995_d533_d814_bbd8;
    const ONE_BLOCK: u64 = 0x3a3a_3519_59bb_2ba0;
    const ONE_BLOCK_AND_A_BYTE: u64 = 0x44b2_df1d_5638_6f66;
}

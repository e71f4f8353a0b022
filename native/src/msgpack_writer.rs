//! The msgpack encodings the event record uses, written exactly as the Python `msgpack` package
//! (`packb` with its defaults) writes them: every integer, string, array and map in its smallest
//! form, strings as the str family (never bin). Byte equality with that package is what lets a
//! record encoded here be read back, and replayed, by either engine (`py_event_record`).

/// An integer outside msgpack's range (below int 64, above uint 64).
#[derive(Debug, PartialEq, Eq)]
pub struct OutOfRange;

/// A growing buffer of msgpack.
#[derive(Debug, Default)]
pub struct MsgpackWriter {
    pub buf: Vec<u8>,
}

impl MsgpackWriter {
    pub fn with_capacity(capacity: usize) -> Self {
        Self { buf: Vec::with_capacity(capacity) }
    }

    pub fn nil(&mut self) {
        self.buf.push(0xc0);
    }

    pub fn bool(&mut self, value: bool) {
        self.buf.push(if value { 0xc3 } else { 0xc2 });
    }

    /// A non-negative integer (msgpack's positive fixint, then uint 8/16/32/64).
    pub fn uint(&mut self, value: u64) {
        if value < 0x80 {
            self.buf.push(value as u8);
        } else if value <= 0xff {
            self.buf.extend_from_slice(&[0xcc, value as u8]);
        } else if value <= 0xffff {
            self.buf.push(0xcd);
            self.buf.extend_from_slice(&(value as u16).to_be_bytes());
        } else if value <= 0xffff_ffff {
            self.buf.push(0xce);
            self.buf.extend_from_slice(&(value as u32).to_be_bytes());
        } else {
            self.buf.push(0xcf);
            self.buf.extend_from_slice(&value.to_be_bytes());
        }
    }

    /// Any integer: a non-negative one as [`Self::uint`], a negative one in the smallest of
    /// negative fixint and int 8/16/32/64.
    pub fn int(&mut self, value: i64) {
        if value >= 0 {
            self.uint(value as u64);
        } else if value >= -32 {
            self.buf.push(value as u8);
        } else if value >= -0x80 {
            self.buf.extend_from_slice(&[0xd0, value as u8]);
        } else if value >= -0x8000 {
            self.buf.push(0xd1);
            self.buf.extend_from_slice(&(value as i16).to_be_bytes());
        } else if value >= -0x8000_0000 {
            self.buf.push(0xd2);
            self.buf.extend_from_slice(&(value as i32).to_be_bytes());
        } else {
            self.buf.push(0xd3);
            self.buf.extend_from_slice(&value.to_be_bytes());
        }
    }

    /// An integer of any width, as the Python package packs a Python int: [`Self::int`] or
    /// [`Self::uint`] within int 64 to uint 64; `Err` outside them, where the package raises
    /// OverflowError (a snapshot's cells keep sums that wide as decimal strings instead).
    pub fn wide_int(&mut self, value: i128) -> Result<(), OutOfRange> {
        if let Ok(narrow) = i64::try_from(value) {
            self.int(narrow);
        } else {
            self.uint(u64::try_from(value).map_err(|_| OutOfRange)?);
        }
        Ok(())
    }

    pub fn str(&mut self, value: &str) {
        let n = value.len();
        self.header(n, 0xa0, 31, Some(0xd9), 0xda, 0xdb);
        self.buf.extend_from_slice(value.as_bytes());
    }

    pub fn array(&mut self, len: usize) {
        self.header(len, 0x90, 15, None, 0xdc, 0xdd);
    }

    pub fn map(&mut self, len: usize) {
        self.header(len, 0x80, 15, None, 0xde, 0xdf);
    }

    /// A length in the fix form up to `fix_max`, then the 8-bit form (strings only), 16, 32.
    fn header(&mut self, len: usize, fix: u8, fix_max: usize, tag8: Option<u8>, tag16: u8, tag32: u8) {
        if len <= fix_max {
            self.buf.push(fix | len as u8);
        } else if let (Some(tag8), true) = (tag8, len <= 0xff) {
            self.buf.extend_from_slice(&[tag8, len as u8]);
        } else if len <= 0xffff {
            self.buf.push(tag16);
            self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            // A record is far below 4 GiB (a batch is capped long before); u32 is the format's limit.
            self.buf.push(tag32);
            self.buf.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(f: impl FnOnce(&mut MsgpackWriter)) -> Vec<u8> {
        let mut w = MsgpackWriter::default();
        f(&mut w);
        w.buf
    }

    #[test]
    fn integers_take_their_smallest_form_at_every_boundary() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (255, &[0xcc, 0xff]),
            (256, &[0xcd, 0x01, 0x00]),
            (65_535, &[0xcd, 0xff, 0xff]),
            (65_536, &[0xce, 0, 1, 0, 0]),
            (4_294_967_296, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
            (-1, &[0xff]),
            (-32, &[0xe0]),
            (-33, &[0xd0, 0xdf]),
            (-128, &[0xd0, 0x80]),
            (-129, &[0xd1, 0xff, 0x7f]),
            (-32_769, &[0xd2, 0xff, 0xff, 0x7f, 0xff]),
            (i64::MIN, &[0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0]),
        ];
        for &(value, bytes) in cases {
            assert_eq!(written(|w| w.int(value)), bytes, "{value}");
        }
        assert_eq!(written(|w| w.uint(u64::MAX)), [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn wide_integers_pack_as_narrow_ones_within_the_format_and_fail_outside() {
        for value in [0, -1, -33, 1 << 40, i128::from(i64::MIN), i128::from(i64::MAX)] {
            assert_eq!(written(|w| w.wide_int(value).unwrap()), written(|w| w.int(value as i64)), "{value}");
        }
        assert_eq!(written(|w| w.wide_int(i128::from(u64::MAX)).unwrap()), written(|w| w.uint(u64::MAX)));
        assert_eq!(MsgpackWriter::default().wide_int(i128::from(u64::MAX) + 1), Err(OutOfRange));
        assert_eq!(MsgpackWriter::default().wide_int(i128::from(i64::MIN) - 1), Err(OutOfRange));
    }

    #[test]
    fn strings_arrays_and_maps_grow_their_headers_at_the_limits() {
        assert_eq!(written(|w| w.str("")), [0xa0]);
        assert_eq!(written(|w| w.str(&"a".repeat(31)))[0], 0xbf);
        assert_eq!(written(|w| w.str(&"a".repeat(32)))[..2], [0xd9, 32]);
        assert_eq!(written(|w| w.str(&"a".repeat(256)))[..3], [0xda, 1, 0]);
        assert_eq!(written(|w| w.str(&"a".repeat(65_536)))[..5], [0xdb, 0, 1, 0, 0]);
        assert_eq!(written(|w| w.array(15)), [0x9f]);
        assert_eq!(written(|w| w.array(16)), [0xdc, 0, 16]);
        assert_eq!(written(|w| w.array(65_536)), [0xdd, 0, 1, 0, 0]);
        assert_eq!(written(|w| w.map(0)), [0x80]);
        assert_eq!(written(|w| w.map(16)), [0xde, 0, 16]);
        assert_eq!(written(|w| w.map(70_000)), [0xdf, 0, 1, 0x11, 0x70]);
        let flags = written(|w| {
            w.nil();
            w.bool(true);
            w.bool(false);
        });
        assert_eq!(flags, [0xc0, 0xc3, 0xc2]);
    }
}

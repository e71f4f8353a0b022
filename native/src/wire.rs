//! The protobuf wire format, read in place: varints, tags, length-delimited slices and the
//! skipping of fields a message does not know. Nothing here allocates; every slice borrows the
//! request bytes. It mirrors what the upb parser behind Python's `protobuf` accepts, so the two
//! engines agree on which bytes are a message at all.

use std::fmt;

/// Why bytes are not a protobuf message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Wire types of the protobuf encoding.
pub const VARINT: u32 = 0;
pub const FIXED64: u32 = 1;
pub const LEN: u32 = 2;
pub const START_GROUP: u32 = 3;
pub const END_GROUP: u32 = 4;
pub const FIXED32: u32 = 5;

/// Unknown groups nest; upb stops at this depth too, so a hostile message cannot recurse deeply.
const MAX_GROUP_DEPTH: u32 = 100;

/// A cursor over one message's bytes.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// A base-128 varint of at most 10 bytes; bits past 64 are dropped, as upb does.
    pub fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.buf.get(self.pos).ok_or(Malformed("truncated varint"))?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed("varint longer than 10 bytes"))
    }

    /// The next field's (number, wire type).
    pub fn tag(&mut self) -> Result<(u32, u32), Malformed> {
        let tag = self.varint()?;
        let tag = u32::try_from(tag).map_err(|_| Malformed("tag does not fit 32 bits"))?;
        let number = tag >> 3;
        if number == 0 {
            return Err(Malformed("field number 0"));
        }
        Ok((number, tag & 7))
    }

    /// The payload of a length-delimited field.
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let len = self.varint()?;
        let len = usize::try_from(len).map_err(|_| Malformed("length out of range"))?;
        let end = self.pos.checked_add(len).ok_or(Malformed("length out of range"))?;
        let slice = self.buf.get(self.pos..end).ok_or(Malformed("truncated length-delimited field"))?;
        self.pos = end;
        Ok(slice)
    }

    /// A proto3 `string`: length-delimited and valid UTF-8 (upb rejects anything else).
    pub fn string(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Malformed("string field is not valid UTF-8"))
    }

    fn advance(&mut self, n: usize) -> Result<(), Malformed> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        self.pos = end.ok_or(Malformed("truncated fixed-width field"))?;
        Ok(())
    }

    /// Skip the payload of a field this message does not know (or knows with another wire type,
    /// which protobuf parsers also keep as an unknown field rather than reject).
    pub fn skip(&mut self, number: u32, wire_type: u32) -> Result<(), Malformed> {
        self.skip_at_depth(number, wire_type, 0)
    }

    fn skip_at_depth(&mut self, number: u32, wire_type: u32, depth: u32) -> Result<(), Malformed> {
        match wire_type {
            VARINT => self.varint().map(|_| ()),
            FIXED64 => self.advance(8),
            LEN => self.bytes().map(|_| ()),
            FIXED32 => self.advance(4),
            START_GROUP => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(Malformed("groups nested too deeply"));
                }
                loop {
                    if self.at_end() {
                        return Err(Malformed("unterminated group"));
                    }
                    let (inner, inner_type) = self.tag()?;
                    if inner_type == END_GROUP {
                        if inner != number {
                            return Err(Malformed("mismatched end of group"));
                        }
                        return Ok(());
                    }
                    self.skip_at_depth(inner, inner_type, depth + 1)?;
                }
            }
            END_GROUP => Err(Malformed("end of group without a start")),
            _ => Err(Malformed("invalid wire type")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_decode_and_truncation_is_an_error() {
        assert_eq!(Reader::new(&[0x96, 0x01]).varint(), Ok(150));
        assert_eq!(
            Reader::new(&[0xff; 9].iter().chain(&[0x01]).copied().collect::<Vec<_>>()).varint(),
            Ok(u64::MAX)
        );
        assert!(Reader::new(&[0x80]).varint().is_err());
        assert!(Reader::new(&[0x80; 11]).varint().is_err());
    }

    #[test]
    fn length_past_the_end_is_an_error() {
        assert!(Reader::new(&[0x05, b'a']).bytes().is_err());
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]).bytes().is_err());
    }

    #[test]
    fn groups_are_skipped_to_their_matching_end() {
        // field 3 start group, field 1 varint 7, field 3 end group, then field 1 varint 9.
        let mut r = Reader::new(&[0x1b, 0x08, 0x07, 0x1c, 0x08, 0x09]);
        let (n, t) = r.tag().unwrap();
        r.skip(n, t).unwrap();
        assert_eq!(r.tag(), Ok((1, VARINT)));
        assert_eq!(r.varint(), Ok(9));
        assert!(r.at_end());
        let mut bad = Reader::new(&[0x1b, 0x24]);
        let (n, t) = bad.tag().unwrap();
        assert_eq!(bad.skip(n, t), Err(Malformed("mismatched end of group")));
    }

    #[test]
    fn invalid_utf8_strings_and_wire_types_are_errors() {
        assert!(Reader::new(&[0x01, 0xff]).string().is_err());
        assert_eq!(Reader::new(&[]).skip(1, 7), Err(Malformed("invalid wire type")));
        assert_eq!(Reader::new(&[0x00]).tag(), Err(Malformed("field number 0")));
    }
}

//! Writing bincode values (standard configuration: little endian, variable-length
//! integers), byte for byte as `bincode::serde::encode_into_writer` writes them, the
//! counterpart of [`crate::bincode_de`].
//!
//! Why not bincode itself: on tiny items the encoding is most of the cost of an item
//! on the consumer's thread. bincode writes an `i64` through its generic writer in
//! two or three calls (a marker byte, then the bytes), none inlined: about 44
//! instructions per item in `double`'s profile, against about 10 here, where a
//! value goes straight into the batch's `Vec`. The test at the end checks the bytes
//! against bincode's for every kind of value serde has.

use bincode::error::EncodeError;
use serde::ser::{self, Serialize};

/// The most bytes [`put_u64`] appends: a marker and 8 bytes.
const MAX_U64: usize = 9;

/// Append `v` as bincode's variable-length unsigned integer: one byte up to 250,
/// else a marker (251, 252, 253) and the value in 2, 4 or 8 bytes.
#[inline(always)]
fn put_u64(out: &mut Vec<u8>, v: u64) {
    // One look at the room left, for every case: behind it the appends' own
    // checks are known to pass and compile to nothing, and the growth is out of
    // line. Small enough so that `<i64 as Serialize>::serialize` is inlined into
    // a worker's batch loop (it was a call of about 35 instructions per item).
    if out.capacity() - out.len() >= MAX_U64 {
        put_u64_in_room(out, v);
    } else {
        put_u64_growing(out, v);
    }
}

/// [`put_u64`] when the buffer must grow first.
#[cold]
#[inline(never)]
fn put_u64_growing(out: &mut Vec<u8>, v: u64) {
    out.reserve(MAX_U64);
    put_u64_in_room(out, v);
}

/// [`put_u64`], the appends themselves.
#[inline(always)]
fn put_u64_in_room(out: &mut Vec<u8>, v: u64) {
    // Each case one append of a fixed size: no copy loop.
    if v <= 250 {
        out.push(v as u8);
    } else if v <= u64::from(u16::MAX) {
        let [a, b] = (v as u16).to_le_bytes();
        out.extend_from_slice(&[251, a, b]);
    } else if v <= u64::from(u32::MAX) {
        let [a, b, c, d] = (v as u32).to_le_bytes();
        out.extend_from_slice(&[252, a, b, c, d]);
    } else {
        let [a, b, c, d, e, f, g, h] = v.to_le_bytes();
        out.extend_from_slice(&[253, a, b, c, d, e, f, g, h]);
    }
}

/// The same for 128 bits: marker 254 and 16 bytes beyond `u64`.
fn put_u128(out: &mut Vec<u8>, v: u128) {
    if let Ok(small) = u64::try_from(v) {
        put_u64(out, small);
    } else {
        out.push(254);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Signed integers are zig-zag encoded first (0, -1, 1, -2 … as 0, 1, 2, 3 …).
#[inline(always)]
fn zigzag(v: i64) -> u64 {
    if v < 0 {
        !(v as u64) * 2 + 1
    } else {
        (v as u64) * 2
    }
}

fn zigzag128(v: i128) -> u128 {
    if v < 0 {
        !(v as u128) * 2 + 1
    } else {
        (v as u128) * 2
    }
}

/// Append `value`'s bincode encoding to `out`. On error, `out` may hold part of it
/// (the caller truncates, as `Items::push_with` does).
#[inline]
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    value.serialize(Writer { out })
}

/// The serializer: where the bytes go.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    #[inline(always)]
    fn len(&mut self, len: usize) {
        put_u64(self.out, len as u64);
    }
}

impl<'a> ser::Serializer for Writer<'a> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Writer<'a>;
    type SerializeTuple = Writer<'a>;
    type SerializeTupleStruct = Writer<'a>;
    type SerializeTupleVariant = Writer<'a>;
    type SerializeMap = Writer<'a>;
    type SerializeStruct = Writer<'a>;
    type SerializeStructVariant = Writer<'a>;

    #[inline(always)]
    fn serialize_bool(self, v: bool) -> Result<(), EncodeError> {
        self.out.push(u8::from(v));
        Ok(())
    }
    #[inline(always)]
    fn serialize_i8(self, v: i8) -> Result<(), EncodeError> {
        self.out.push(v as u8);
        Ok(())
    }
    #[inline(always)]
    fn serialize_i16(self, v: i16) -> Result<(), EncodeError> {
        put_u64(self.out, zigzag(v.into()));
        Ok(())
    }
    #[inline(always)]
    fn serialize_i32(self, v: i32) -> Result<(), EncodeError> {
        put_u64(self.out, zigzag(v.into()));
        Ok(())
    }
    #[inline(always)]
    fn serialize_i64(self, v: i64) -> Result<(), EncodeError> {
        put_u64(self.out, zigzag(v));
        Ok(())
    }
    fn serialize_i128(self, v: i128) -> Result<(), EncodeError> {
        put_u128(self.out, zigzag128(v));
        Ok(())
    }
    #[inline(always)]
    fn serialize_u8(self, v: u8) -> Result<(), EncodeError> {
        self.out.push(v);
        Ok(())
    }
    #[inline(always)]
    fn serialize_u16(self, v: u16) -> Result<(), EncodeError> {
        put_u64(self.out, v.into());
        Ok(())
    }
    #[inline(always)]
    fn serialize_u32(self, v: u32) -> Result<(), EncodeError> {
        put_u64(self.out, v.into());
        Ok(())
    }
    #[inline(always)]
    fn serialize_u64(self, v: u64) -> Result<(), EncodeError> {
        put_u64(self.out, v);
        Ok(())
    }
    fn serialize_u128(self, v: u128) -> Result<(), EncodeError> {
        put_u128(self.out, v);
        Ok(())
    }
    #[inline(always)]
    fn serialize_f32(self, v: f32) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    #[inline(always)]
    fn serialize_f64(self, v: f64) -> Result<(), EncodeError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), EncodeError> {
        // As UTF-8, without a length.
        let mut buf = [0u8; 4];
        self.out
            .extend_from_slice(v.encode_utf8(&mut buf).as_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_str(mut self, v: &str) -> Result<(), EncodeError> {
        self.len(v.len());
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }
    #[inline]
    fn serialize_bytes(mut self, v: &[u8]) -> Result<(), EncodeError> {
        self.len(v.len());
        self.out.extend_from_slice(v);
        Ok(())
    }
    #[inline]
    fn serialize_none(self) -> Result<(), EncodeError> {
        self.out.push(0);
        Ok(())
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), EncodeError> {
        self.out.push(1);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), EncodeError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), EncodeError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), EncodeError> {
        put_u64(self.out, index.into());
        Ok(())
    }
    #[inline]
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        value: &T,
    ) -> Result<(), EncodeError> {
        put_u64(self.out, index.into());
        value.serialize(self)
    }
    fn serialize_seq(mut self, len: Option<usize>) -> Result<Writer<'a>, EncodeError> {
        let len = len.ok_or_else(|| bincode::serde::EncodeError::SequenceMustHaveLength.into())?;
        self.len(len);
        Ok(self)
    }
    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Writer<'a>, EncodeError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Writer<'a>, EncodeError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Writer<'a>, EncodeError> {
        put_u64(self.out, index.into());
        Ok(self)
    }
    fn serialize_map(mut self, len: Option<usize>) -> Result<Writer<'a>, EncodeError> {
        let len = len.ok_or_else(|| bincode::serde::EncodeError::SequenceMustHaveLength.into())?;
        self.len(len);
        Ok(self)
    }
    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Writer<'a>, EncodeError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Writer<'a>, EncodeError> {
        put_u64(self.out, index.into());
        Ok(self)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The parts of a compound value go one after another, nothing between them or
/// after: every `Serialize*` trait is the same writer, `$method` naming the trait's
/// one method for a part (and `$($key)?` the field name the struct traits pass).
macro_rules! parts {
    ($($trait:ident :: $method:ident $(($key:ty))?;)*) => {$(
        impl ser::$trait for Writer<'_> {
            type Ok = ();
            type Error = EncodeError;
            #[inline]
            fn $method<T: Serialize + ?Sized>(
                &mut self,
                $(_: $key,)?
                value: &T,
            ) -> Result<(), EncodeError> {
                value.serialize(Writer { out: self.out })
            }
            #[inline]
            fn end(self) -> Result<(), EncodeError> {
                Ok(())
            }
        }
    )*};
}

parts! {
    SerializeSeq::serialize_element;
    SerializeTuple::serialize_element;
    SerializeTupleStruct::serialize_field;
    SerializeTupleVariant::serialize_field;
    SerializeStruct::serialize_field(&'static str);
    SerializeStructVariant::serialize_field(&'static str);
}

impl ser::SerializeMap for Writer<'_> {
    type Ok = ();
    type Error = EncodeError;
    #[inline]
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), EncodeError> {
        key.serialize(Writer { out: self.out })
    }
    #[inline]
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), EncodeError> {
        value.serialize(Writer { out: self.out })
    }
    #[inline]
    fn end(self) -> Result<(), EncodeError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::Serialize;

    fn bincode_bytes<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
    }

    fn ours<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        super::encode(value, &mut out).map_err(|e| e.to_string())?;
        Ok(out)
    }

    fn same<T: Serialize + ?Sized + std::fmt::Debug>(value: &T) {
        assert_eq!(ours(value), bincode_bytes(value), "{value:?}");
    }

    #[derive(Debug, Serialize)]
    enum Shape {
        Empty,
        Point(i32, i32),
        Named { name: String, sides: Option<u8> },
        Boxed(Box<Shape>),
    }

    #[derive(Debug, Serialize)]
    struct Unit;

    #[derive(Debug, Serialize)]
    struct Record {
        id: u64,
        tags: Vec<String>,
        score: f64,
        shape: Shape,
        flags: (bool, char, i8),
        unit: Unit,
        nothing: (),
        map: BTreeMap<u16, i128>,
    }

    #[test]
    fn every_kind_of_value_encodes_as_bincode_does() {
        for v in [
            0i64,
            1,
            -1,
            125,
            -126,
            250,
            251,
            -251,
            65_535,
            65_536,
            i64::MAX,
            i64::MIN,
        ] {
            same(&v);
            same(&(v as i32));
            same(&(v as i16));
            same(&(v as u64));
            same(&(v as u32));
            same(&(v as u16));
            same(&(v as u8));
            same(&(v as i8));
            same(&(v as i128).wrapping_mul(1_000_000_000_000));
            same(&(v as u128).wrapping_mul(1_000_000_000_000));
        }
        same(&u128::MAX);
        same(&i128::MIN);
        same(&(
            true,
            false,
            'a',
            'é',
            '😀',
            1.5f32,
            -0.0f64,
            f64::NAN.to_bits(),
        ));
        same("a string, ünïcode");
        same(&String::new());
        same(&vec![1u8, 2, 3]);
        same(&serde_bytes_like(&[0u8, 255, 7]));
        same(&Some(vec![Some(3i64), None]));
        same(&[1u32, 2, 3]);
        same(&Shape::Empty);
        same(&Shape::Point(-5, 300));
        same(&Shape::Named {
            name: "square".into(),
            sides: Some(4),
        });
        same(&Shape::Boxed(Box::new(Shape::Empty)));
        same(&Record {
            id: 1 << 40,
            tags: vec!["x".into(), String::new()],
            score: 0.25,
            shape: Shape::Point(1, 2),
            flags: (true, 'z', -3),
            unit: Unit,
            nothing: (),
            map: [(1u16, -1i128), (300, i128::MAX)].into_iter().collect(),
        });
    }

    /// A value serialized through `serialize_bytes`.
    fn serde_bytes_like(bytes: &[u8]) -> impl Serialize + std::fmt::Debug + '_ {
        #[derive(Debug)]
        struct Bytes<'a>(&'a [u8]);
        impl Serialize for Bytes<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        Bytes(bytes)
    }

    #[test]
    fn a_sequence_of_unknown_length_is_refused_and_collect_str_is_a_str_as_in_bincode() {
        struct NoLen;
        impl Serialize for NoLen {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                s.serialize_seq(None)?.end()
            }
        }
        struct Display;
        impl Serialize for Display {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str("shown")
            }
        }
        assert!(ours(&NoLen).is_err());
        assert_eq!(ours(&NoLen).is_err(), bincode_bytes(&NoLen).is_err());
        assert_eq!(ours(&Display), bincode_bytes(&Display));
        assert_eq!(ours(&Display), ours("shown"));
    }

    proptest! {
        #[test]
        fn any_values_encode_as_bincode_does(
            a in any::<i64>(), b in any::<u64>(), c in any::<i32>(), d in any::<u16>(),
            e in any::<i128>(), f in any::<f64>(), g in any::<String>(),
            h in proptest::collection::vec(any::<(u8, Option<i64>, char)>(), 0..20),
        ) {
            let value = (a, b, c, d, e, f.to_bits(), g, h);
            prop_assert_eq!(ours(&value), bincode_bytes(&value));
        }
    }
}

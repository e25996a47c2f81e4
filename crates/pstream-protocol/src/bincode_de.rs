//! Reading bincode values (standard configuration, as [`crate::encode_bincode`] and
//! `bincode::serde::encode_*` write them) from a slice, for results that came from
//! another process.
//!
//! Why not `bincode::serde::decode_from_slice`:
//!
//! * **Lying lengths.** bincode allocates a `String` or byte buffer as long as its
//!   encoded length says before it reads the bytes, so a peer claiming 2^50 bytes
//!   ends this process on a failed allocation. bincode's cure, a limit in the
//!   configuration, is charged on every primitive read. Here every length is
//!   checked against the bytes left before anything is allocated, and a sequence's
//!   size hint never exceeds them.
//! * **Speed.** A byte is one bounds check, errors are one pointer wide, and the
//!   per-element calls are inlined. (The figures against bincode are in
//!   `docs/benchmarks.md`, "History behind the code".)
//!
//! The format is bincode 2.0.1's, decision for decision: integers wider than a
//! byte are varints (below 251 one byte, else a marker 251/252/253/254 and 2/4/8/16
//! little-endian bytes; a marker too wide for the type is an error), signed ones
//! zigzagged; `bool` is 0 or 1; `char` is its UTF-8 bytes; strings, byte strings,
//! sequences and maps carry a varint length; `Option` a byte tag 0 or 1; enum
//! variants a `u32` varint index; tuples, structs and arrays no length; no
//! self-description (`deserialize_any` and friends are errors). The tests
//! `agrees_with_bincode_on_*` hold it to bincode on values and on arbitrary bytes.

use std::fmt;

use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
// Boxed so the error is one pointer wide (a `String` is three): the results of the
// many one-byte reads stay in registers.
#[allow(clippy::box_collection)]
pub struct BincodeError(Box<String>);

impl fmt::Display for BincodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BincodeError {}

impl de::Error for BincodeError {
    #[cold]
    fn custom<T: fmt::Display>(msg: T) -> Self {
        BincodeError(Box::new(msg.to_string()))
    }
}

#[cold]
#[inline(never)]
fn fail(msg: &str) -> BincodeError {
    BincodeError(Box::new(msg.to_string()))
}

#[cold]
#[inline(never)]
fn wide_marker(marker: u8) -> BincodeError {
    if marker > U128_BYTE {
        fail("invalid varint marker 255")
    } else {
        fail("varint wider than its integer type")
    }
}

#[cold]
#[inline(never)]
fn truncated(wanted: usize, left: usize) -> BincodeError {
    BincodeError(Box::new(format!(
        "truncated: {wanted} more bytes wanted, {left} left"
    )))
}

type Result<T> = std::result::Result<T, BincodeError>;

/// Decode one `T` from the front of `bytes`; returns it and the bytes it took.
#[inline(always)]
pub fn decode_bincode<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, usize)> {
    let mut de = Reader { input: bytes };
    let value = T::deserialize(&mut de)?;
    Ok((value, bytes.len() - de.input.len()))
}

struct Reader<'de> {
    /// What is left to read.
    input: &'de [u8],
}

const U16_BYTE: u8 = 251;
const U32_BYTE: u8 = 252;
const U64_BYTE: u8 = 253;
const U128_BYTE: u8 = 254;

impl<'de> Reader<'de> {
    #[inline(always)]
    fn byte(&mut self) -> Result<u8> {
        match self.input.split_first() {
            Some((&b, rest)) => {
                self.input = rest;
                Ok(b)
            }
            None => Err(truncated(1, 0)),
        }
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if n > self.input.len() {
            return Err(truncated(n, self.input.len()));
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let head = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(head);
        Ok(a)
    }

    /// A varint of at most `max_marker`'s width, up to 64 bits.
    #[inline(always)]
    fn varint(&mut self, max_marker: u8) -> Result<u64> {
        let first = self.byte()?;
        if first < U16_BYTE {
            return Ok(u64::from(first));
        }
        if first > max_marker {
            return Err(wide_marker(first));
        }
        Ok(match first {
            U16_BYTE => u64::from(u16::from_le_bytes(self.array()?)),
            U32_BYTE => u64::from(u32::from_le_bytes(self.array()?)),
            _ => u64::from_le_bytes(self.array()?),
        })
    }

    /// A varint of up to 128 bits.
    fn varint128(&mut self) -> Result<u128> {
        let first = self.byte()?;
        Ok(match first {
            0..U16_BYTE => u128::from(first),
            U16_BYTE => u128::from(u16::from_le_bytes(self.array()?)),
            U32_BYTE => u128::from(u32::from_le_bytes(self.array()?)),
            U64_BYTE => u128::from(u64::from_le_bytes(self.array()?)),
            U128_BYTE => u128::from_le_bytes(self.array()?),
            _ => return Err(wide_marker(first)),
        })
    }

    #[inline(always)]
    fn u32(&mut self) -> Result<u32> {
        self.varint(U32_BYTE).map(|v| v as u32)
    }

    #[inline(always)]
    fn u64(&mut self) -> Result<u64> {
        self.varint(U64_BYTE)
    }

    #[inline(always)]
    fn len(&mut self) -> Result<usize> {
        let n = self.u64()?;
        usize::try_from(n).map_err(|_| fail("length does not fit in usize"))
    }

    /// A length-prefixed run of bytes, checked against what is left before use.
    #[inline(always)]
    fn bytes(&mut self) -> Result<&'de [u8]> {
        let n = self.len()?;
        self.take(n)
    }

    #[inline(always)]
    fn str(&mut self) -> Result<&'de str> {
        let bytes = self.bytes()?;
        std::str::from_utf8(bytes).map_err(|e| de::Error::custom(format!("invalid UTF-8: {e}")))
    }
}

/// `deserialize_*` for unsigned integers: read by `$read`, cast to the type.
macro_rules! unsigned {
    ($($method:ident $visit:ident $ty:ty = $read:ident($($arg:expr)?);)*) => {$(
        #[inline(always)]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            visitor.$visit(self.$read($($arg)?)? as $ty)
        }
    )*};
}

/// `deserialize_*` for signed integers: zigzag-decoded, then cast to the type.
macro_rules! signed {
    ($($method:ident $visit:ident $ty:ty = $read:ident($($arg:expr)?);)*) => {$(
        #[inline(always)]
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            let n = self.$read($($arg)?)?;
            visitor.$visit((if n % 2 == 0 { n / 2 } else { !(n / 2) }) as $ty)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = BincodeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(fail("bincode does not describe itself (deserialize_any)"))
    }

    #[inline(always)]
    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(fail("invalid bool")),
        }
    }

    #[inline(always)]
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.byte()?)
    }

    #[inline(always)]
    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.byte()? as i8)
    }

    unsigned! {
        deserialize_u16 visit_u16 u16 = varint(U16_BYTE);
        deserialize_u32 visit_u32 u32 = varint(U32_BYTE);
        deserialize_u64 visit_u64 u64 = varint(U64_BYTE);
        deserialize_u128 visit_u128 u128 = varint128();
    }

    signed! {
        deserialize_i16 visit_i16 i16 = varint(U16_BYTE);
        deserialize_i32 visit_i32 i32 = varint(U32_BYTE);
        deserialize_i64 visit_i64 i64 = varint(U64_BYTE);
        deserialize_i128 visit_i128 i128 = varint128();
    }

    #[inline(always)]
    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(f32::from_le_bytes(self.array()?))
    }

    #[inline(always)]
    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(f64::from_le_bytes(self.array()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let first = self.byte()?;
        let width = match first {
            0x00..=0x7f => return visitor.visit_char(char::from(first)),
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => return Err(fail("invalid char encoding")),
        };
        let mut buf = [first, 0, 0, 0];
        buf[1..width].copy_from_slice(self.take(width - 1)?);
        match std::str::from_utf8(&buf[..width]) {
            Ok(s) => visitor.visit_char(s.chars().next().unwrap_or_default()),
            Err(_) => Err(fail("invalid char encoding")),
        }
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_str(self.str()?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_string(self.str()?.to_owned())
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_borrowed_bytes(self.bytes()?)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_byte_buf(self.bytes()?.to_vec())
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => visitor.visit_some(self),
            _ => Err(fail("invalid Option tag")),
        }
    }

    #[inline]
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.len()?;
        visitor.visit_seq(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        visitor.visit_seq(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.len()?;
        visitor.visit_map(Elements { de: self, len })
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_enum(self)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(fail("bincode does not encode identifiers"))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(fail("bincode cannot skip a value it does not know"))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The elements of a sequence, tuple or struct, or the entries of a map.
struct Elements<'a, 'de> {
    de: &'a mut Reader<'de>,
    len: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_, 'de> {
    type Error = BincodeError;

    #[inline(always)]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    /// Overridden only to be inlined: serde's `[T; N]` calls it N times, and as a
    /// call its result went through memory.
    #[inline(always)]
    fn next_element<T: de::Deserialize<'de>>(&mut self) -> Result<Option<T>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        T::deserialize(&mut *self.de).map(Some)
    }

    /// Never more than the bytes left: a lying length must not size an allocation.
    fn size_hint(&self) -> Option<usize> {
        Some(self.len.min(self.de.input.len()))
    }
}

impl<'de> MapAccess<'de> for Elements<'_, 'de> {
    type Error = BincodeError;

    #[inline]
    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.len == 0 {
            return Ok(None);
        }
        self.len -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    #[inline]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len.min(self.de.input.len()))
    }
}

impl<'de> EnumAccess<'de> for &mut Reader<'de> {
    type Error = BincodeError;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = self.u32()?;
        let value = seed.deserialize(index.into_deserializer())?;
        Ok((value, self))
    }
}

impl<'de> VariantAccess<'de> for &mut Reader<'de> {
    type Error = BincodeError;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fmt::Debug;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::decode_bincode;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Shape {
        Empty,
        Circle(u32),
        Pair(i16, Option<char>),
        Named { id: u64, tags: Vec<String> },
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Record {
        name: String,
        values: Option<Vec<i64>>,
        shape: Shape,
        map: BTreeMap<u16, bool>,
        unit: (),
        wide: (u128, i128),
        floats: (u32, u64),
    }

    /// Bytes that travel as bytes, read back through `deserialize_byte_buf`.
    #[derive(Debug, Clone, PartialEq)]
    struct Buf(Vec<u8>);

    impl Serialize for Buf {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Buf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Buf, E> {
                    Ok(Buf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Empty),
            any::<u32>().prop_map(Shape::Circle),
            (any::<i16>(), any::<Option<char>>()).prop_map(|(a, b)| Shape::Pair(a, b)),
            (any::<u64>(), prop::collection::vec(".{0,8}", 0..4))
                .prop_map(|(id, tags)| Shape::Named { id, tags }),
        ]
    }

    fn record() -> impl Strategy<Value = Record> {
        (
            ".{0,16}",
            any::<Option<Vec<i64>>>(),
            shape(),
            prop::collection::btree_map(any::<u16>(), any::<bool>(), 0..5),
            (any::<u128>(), any::<i128>()),
            (any::<f32>(), any::<f64>()),
        )
            .prop_map(|(name, values, shape, map, wide, (f, d))| Record {
                name,
                values,
                shape,
                map,
                unit: (),
                wide,
                // Compared as bits: NaN is not equal to itself.
                floats: (f.to_bits(), d.to_bits()),
            })
    }

    /// What bincode makes of `bytes`, with a limit so a lying length in random
    /// bytes is an error rather than an abort.
    fn bincode_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Option<(T, usize)> {
        let config = bincode::config::standard().with_limit::<{ 1 << 20 }>();
        bincode::serde::decode_from_slice(bytes, config).ok()
    }

    /// Both decoders agree on `bytes`: the same value and length, or both refuse.
    fn agree<T: serde::de::DeserializeOwned + PartialEq + Debug>(bytes: &[u8]) {
        let ours = decode_bincode::<T>(bytes).ok();
        let theirs = bincode_decode::<T>(bytes);
        assert_eq!(ours, theirs, "on {bytes:02x?}");
    }

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + Debug>(value: &T) {
        let mut bytes = Vec::new();
        crate::encode_bincode(value, &mut bytes).unwrap();
        let used = bytes.len();
        bytes.extend_from_slice(&[0xff, 7]); // what follows is not read
        let (back, n) = decode_bincode::<T>(&bytes).unwrap();
        assert_eq!((&back, n), (value, used));
        agree::<T>(&bytes);
        // Every proper prefix is refused, as bincode refuses it.
        for cut in 0..used {
            agree::<T>(&bytes[..cut]);
        }
    }

    proptest! {
        #[test]
        fn agrees_with_bincode_on_values(
            r in record(),
            ints in any::<(u8, i8, u16, i16, u32, i32, u64, i64)>(),
            digest in any::<[u8; 32]>(),
            buf in prop::collection::vec(any::<u8>(), 0..300),
            s in ".{0,40}",
            c in any::<char>(),
        ) {
            round_trip(&r);
            round_trip(&ints);
            round_trip(&digest);
            round_trip(&(Buf(buf.clone()), buf));
            round_trip(&(s, c, Some(true), None::<u8>));
        }

        #[test]
        fn agrees_with_bincode_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            agree::<u16>(&bytes);
            agree::<i32>(&bytes);
            agree::<u64>(&bytes);
            agree::<i128>(&bytes);
            agree::<u128>(&bytes);
            agree::<bool>(&bytes);
            agree::<char>(&bytes);
            agree::<String>(&bytes);
            agree::<Vec<u16>>(&bytes);
            agree::<Option<i64>>(&bytes);
            agree::<Shape>(&bytes);
            agree::<BTreeMap<u8, String>>(&bytes);
            agree::<(u32, Buf)>(&bytes);
            agree::<Record>(&bytes);
        }
    }

    #[test]
    fn varint_markers_as_bincode_reads_them() {
        // Wider markers than needed are accepted; markers wider than the type,
        // or 255, are refused.
        agree::<u16>(&[251, 5, 0]);
        agree::<u16>(&[252, 5, 0, 0, 0]);
        agree::<u32>(&[253, 5, 0, 0, 0, 0, 0, 0, 0]);
        agree::<u64>(&[254; 17]);
        agree::<u128>(&[255; 17]);
        agree::<u8>(&[255]);
        agree::<bool>(&[2]);
        agree::<char>(&[0xed, 0xa0, 0x80]); // a surrogate
        agree::<char>(&[0xf5, 0x80, 0x80, 0x80]);
        assert_eq!(decode_bincode::<u16>(&[251, 5, 1]).unwrap(), (261, 3));
        // A variant index is a u32 varint too.
        agree::<Shape>(&[251, 1, 0, 5]);
        assert_eq!(
            decode_bincode::<Shape>(&[251, 1, 0, 5]).unwrap(),
            (Shape::Circle(5), 4)
        );
    }

    #[test]
    fn a_lying_length_is_an_error_not_an_allocation() {
        for claim in [1u64 << 50, u64::MAX, 1 << 33] {
            let mut bytes = Vec::new();
            crate::encode_bincode(&claim, &mut bytes).unwrap();
            bytes.extend_from_slice(b"short");
            let e = decode_bincode::<String>(&bytes).unwrap_err().to_string();
            assert!(e.contains("truncated"), "{e}");
            assert!(decode_bincode::<Buf>(&bytes).is_err());
            assert!(decode_bincode::<Vec<u64>>(&bytes).is_err());
            assert!(decode_bincode::<BTreeMap<u8, u8>>(&bytes).is_err());
        }
    }

    /// What a sequence tells its visitor to expect.
    struct Hint(Option<usize>);

    impl<'de> Deserialize<'de> for Hint {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Hint;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a sequence")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, a: A) -> Result<Hint, A::Error> {
                    Ok(Hint(a.size_hint()))
                }
            }
            d.deserialize_seq(V)
        }
    }

    #[test]
    fn a_size_hint_never_exceeds_the_bytes_left() {
        // A type may reserve what the hint says (serde's own types cap it; others
        // need not), so a lying length must not reach it.
        let mut bytes = Vec::new();
        crate::encode_bincode(&(1u64 << 50), &mut bytes).unwrap();
        bytes.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_bincode::<Hint>(&bytes).unwrap().0 .0, Some(3));
        assert_eq!(decode_bincode::<Hint>(&[2, 1, 2, 3]).unwrap().0 .0, Some(2));
    }

    #[test]
    fn self_describing_requests_are_refused() {
        let e = decode_bincode::<serde_json_like::Any>(&[0]).unwrap_err();
        assert!(e.to_string().contains("deserialize_any"), "{e}");
    }

    mod serde_json_like {
        /// A type that asks the format what comes next, as `serde_json::Value` does.
        #[derive(Debug)]
        pub struct Any;
        impl<'de> serde::Deserialize<'de> for Any {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(serde::de::IgnoredAny).map(|_| Any)
            }
        }
    }
}

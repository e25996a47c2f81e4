//! How one line of text becomes a function's input in the `lines` codec
//! ([`pstream_protocol::Codec::Lines`], the launcher's default format).
//!
//! The function's input type decides, through what it asks serde for:
//!
//! * a string (`String`, `PathBuf`, a newtype around one, ...) gets the line as it
//!   is;
//! * a number, `bool` or `char` gets the line parsed as one (surrounding ASCII
//!   whitespace ignored: `seq` output and CRLF lines work), so `seq 1 10` feeds a
//!   function of `i64`;
//! * `()` takes an empty line; `Option<T>` is `None` for an empty line and `Some`
//!   of the line as a `T` otherwise;
//! * a type only JSON can spell (a struct, a map, a sequence, a tuple: several
//!   arguments) takes the line as JSON, as `--format jsonl` would; an enum takes a
//!   bare variant name (`Red`) or JSON (`{"Scale":2}`, `"Red"`);
//! * a type that takes anything (`serde_json::Value`) gets the line as a string:
//!   in `lines` format a line is text, and `--format jsonl` is there to say that it
//!   is JSON.
//!
//! Nothing is guessed from the text: `"1"` is the string `1` for a function of
//! `String` and the number 1 for a function of `i64`.

use serde::de::value::Error;
use serde::de::{self, Deserializer, Visitor};

/// A serde deserializer over one line of text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LineDeserializer<'a> {
    text: &'a str,
}

impl<'a> LineDeserializer<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        LineDeserializer { text }
    }

    /// The line as JSON, for the types only JSON can spell.
    fn json<V>(
        self,
        what: &str,
        deserialize: impl FnOnce(
            &mut serde_json::Deserializer<serde_json::de::StrRead<'a>>,
        ) -> Result<V, serde_json::Error>,
    ) -> Result<V, Error> {
        let mut json = serde_json::Deserializer::from_str(self.text);
        deserialize(&mut json)
            .and_then(|value| json.end().map(|()| value))
            .map_err(|e| {
                de::Error::custom(format_args!(
                    "a {what} is read from a line as JSON: {e} (in {})",
                    quoted(self.text)
                ))
            })
    }
}

/// The line as the error message shows it: quoted, and cut short if long.
fn quoted(text: &str) -> String {
    const MAX: usize = 60;
    if text.len() <= MAX {
        return format!("{text:?}");
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &text[..end])
}

macro_rules! parsed {
    ($($method:ident => $visit:ident $ty:ty, $name:literal;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                match self.text.trim_ascii().parse::<$ty>() {
                    Ok(value) => visitor.$visit(value),
                    Err(e) => Err(de::Error::custom(format_args!(
                        "{} is not {} ({e})",
                        quoted(self.text),
                        $name
                    ))),
                }
            }
        )*
    };
}

impl<'de> Deserializer<'de> for LineDeserializer<'de> {
    type Error = Error;

    /// A type that takes anything gets the text.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text)
    }

    parsed! {
        deserialize_bool => visit_bool bool, "a bool (true or false)";
        deserialize_i8 => visit_i8 i8, "an i8";
        deserialize_i16 => visit_i16 i16, "an i16";
        deserialize_i32 => visit_i32 i32, "an i32";
        deserialize_i64 => visit_i64 i64, "an i64";
        deserialize_i128 => visit_i128 i128, "an i128";
        deserialize_u8 => visit_u8 u8, "a u8";
        deserialize_u16 => visit_u16 u16, "a u16";
        deserialize_u32 => visit_u32 u32, "a u32";
        deserialize_u64 => visit_u64 u64, "a u64";
        deserialize_u128 => visit_u128 u128, "a u128";
        deserialize_f32 => visit_f32 f32, "an f32";
        deserialize_f64 => visit_f64 f64, "an f64";
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let mut chars = self.text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(de::Error::custom(format_args!(
                "{} is not one character",
                quoted(self.text)
            ))),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_str(self.text)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.text.as_bytes())
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_borrowed_bytes(self.text.as_bytes())
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.text.is_empty() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if self.text.trim_ascii().is_empty() {
            visitor.visit_unit()
        } else {
            Err(de::Error::custom(format_args!(
                "{} is not an empty line (the function takes no value)",
                quoted(self.text)
            )))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.json("sequence", |json| json.deserialize_seq(visitor))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Error> {
        self.json("tuple", |json| json.deserialize_tuple(len, visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.json("tuple struct", |json| {
            json.deserialize_tuple_struct(name, len, visitor)
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.json("map", |json| json.deserialize_map(visitor))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.json("struct", |json| {
            json.deserialize_struct(name, fields, visitor)
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if self.text.trim_ascii_start().starts_with(['{', '"']) {
            self.json("enum", |json| {
                json.deserialize_enum(name, variants, visitor)
            })
        } else {
            // A bare variant name.
            let text: de::value::BorrowedStrDeserializer<'de, Error> =
                de::value::BorrowedStrDeserializer::new(self.text.trim_ascii());
            text.deserialize_enum(name, variants, visitor)
        }
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn line<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, String> {
        T::deserialize(LineDeserializer::new(text)).map_err(|e| e.to_string())
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Point {
        x: i32,
        y: i32,
    }

    #[derive(Debug, PartialEq, Deserialize)]
    struct Name(String);

    #[derive(Debug, PartialEq, Deserialize)]
    enum Op {
        Red,
        Scale(i64),
    }

    #[test]
    fn strings_are_the_line_as_it_is() {
        assert_eq!(line::<String>("1"), Ok("1".into()));
        assert_eq!(line::<String>(" a b "), Ok(" a b ".into()));
        assert_eq!(line::<String>(""), Ok("".into()));
        assert_eq!(line::<String>("true"), Ok("true".into()));
        assert_eq!(line::<&str>("{\"a\":1}"), Ok("{\"a\":1}"));
        assert_eq!(line::<PathBuf>("/a b"), Ok(PathBuf::from("/a b")));
        assert_eq!(line::<Name>("x"), Ok(Name("x".into())));
        // A type that takes anything: the line is text.
        assert_eq!(
            line::<serde_json::Value>("1"),
            Ok(serde_json::Value::String("1".into()))
        );
    }

    #[test]
    fn scalars_are_parsed_from_the_line() {
        assert_eq!(line::<i64>("17"), Ok(17));
        assert_eq!(line::<i64>("-3\r"), Ok(-3));
        assert_eq!(line::<u8>(" 255 "), Ok(255));
        assert_eq!(
            line::<u128>("340282366920938463463374607431768211455"),
            Ok(u128::MAX)
        );
        assert_eq!(line::<f64>("2.5"), Ok(2.5));
        assert_eq!(line::<bool>("true"), Ok(true));
        assert_eq!(line::<char>("é"), Ok('é'));
        assert_eq!(line::<Option<i64>>("4"), Ok(Some(4)));
        assert_eq!(line::<Option<i64>>(""), Ok(None));
        assert_eq!(line::<()>(""), Ok(()));
    }

    #[test]
    fn compound_types_are_read_as_json() {
        assert_eq!(line::<Point>(r#"{"x":1,"y":2}"#), Ok(Point { x: 1, y: 2 }));
        assert_eq!(line::<(i64, String)>(r#"[1,"a"]"#), Ok((1, "a".into())));
        assert_eq!(line::<Vec<u8>>("[1,2]"), Ok(vec![1, 2]));
        assert_eq!(
            line::<BTreeMap<String, i64>>(r#"{"a":1}"#),
            Ok(BTreeMap::from([("a".into(), 1)]))
        );
        assert_eq!(line::<Op>("Red"), Ok(Op::Red));
        assert_eq!(line::<Op>("\"Red\""), Ok(Op::Red));
        assert_eq!(line::<Op>(r#"{"Scale":2}"#), Ok(Op::Scale(2)));
    }

    #[test]
    fn what_does_not_parse_says_what_was_expected() {
        assert_eq!(
            line::<i64>("x").unwrap_err(),
            "\"x\" is not an i64 (invalid digit found in string)"
        );
        assert!(line::<u8>("256").unwrap_err().contains("is not a u8"));
        assert!(line::<char>("ab")
            .unwrap_err()
            .contains("not one character"));
        assert!(line::<()>("a").unwrap_err().contains("not an empty line"));
        let e = line::<Point>("{\"x\":1,\"y\":2} tail").unwrap_err();
        assert!(
            e.starts_with("a struct is read from a line as JSON: trailing characters"),
            "{e}"
        );
        let long = "y".repeat(200);
        assert!(line::<i64>(&long)
            .unwrap_err()
            .contains("\"... is not an i64"));
    }
}

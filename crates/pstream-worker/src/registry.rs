//! Named, typed functions and their type-erased entry points.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use pstream_protocol::{Codec, FailureKind, FunctionInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::serve::Batch;
use crate::WorkerError;

/// Why one call failed (other than by panicking).
#[derive(Debug)]
pub struct CallError {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Why, for the user.
    pub message: String,
}

impl CallError {
    fn new(kind: FailureKind, message: impl fmt::Display) -> CallError {
        CallError {
            kind,
            message: message.to_string(),
        }
    }
}

/// The type-erased entry point of a registered function: decode the item, the first
/// `len` bytes of `input`, with the codec, call, append the encoded result to `out`.
/// `input` may go on past the item (with the rest of its batch): a bincode decoder
/// reads faster with room to spare, and must then end exactly at `len`.
pub type CallFn = fn(Codec, &[u8], usize, &mut Vec<u8>) -> Result<(), CallError>;

/// The entry point that computes a whole batch with one function: its loop is
/// compiled for that function, with decoding, body and encoding inlined.
pub type BatchFn = fn(&mut Batch<'_>) -> Result<(), WorkerError>;

/// One entry of the link-time registry, submitted by [`crate::function!`].
#[derive(Debug)]
pub struct Registration {
    /// The name calls use.
    pub name: &'static str,
    /// The input type as written in the source.
    pub input_type: &'static str,
    /// The output type as written in the source.
    pub output_type: &'static str,
    /// The entry point for one item.
    pub call: CallFn,
    /// The entry point for a batch.
    pub batch: BatchFn,
    /// The input and output types' full names (`std::any::type_name`).
    pub type_names: fn() -> (&'static str, &'static str),
}

inventory::collect!(Registration);

/// Every function linked into this binary, by name.
pub fn registry() -> &'static HashMap<&'static str, &'static Registration> {
    static REGISTRY: OnceLock<HashMap<&'static str, &'static Registration>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut map = HashMap::new();
        for reg in inventory::iter::<Registration> {
            if let Some(previous) = map.insert(reg.name, reg) {
                // Two functions with one name would make calls ambiguous: refuse loudly.
                panic!(
                    "pstream: two functions are registered as `{}` ({} -> {} and {} -> {})",
                    reg.name,
                    previous.input_type,
                    previous.output_type,
                    reg.input_type,
                    reg.output_type
                );
            }
        }
        map
    })
}

/// The functions this binary serves, sorted by name, as the handshake lists them.
pub fn functions() -> Vec<FunctionInfo> {
    let mut list: Vec<FunctionInfo> = registry()
        .values()
        .map(|r| {
            let (input_type_name, output_type_name) = (r.type_names)();
            FunctionInfo {
                name: r.name.to_string(),
                input_type: r.input_type.to_string(),
                output_type: r.output_type.to_string(),
                input_type_name: input_type_name.to_string(),
                output_type_name: output_type_name.to_string(),
            }
        })
        .collect();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    list
}

#[inline(always)]
fn decode<In: DeserializeOwned>(codec: Codec, input: &[u8], len: usize) -> Result<In, CallError> {
    match codec {
        Codec::Bincode => {
            match pstream_protocol::decode_bincode::<In>(input) {
                Ok((value, used)) if used == len => Ok(value),
                // Decoded past the item, the bytes read may be the next one's:
                // decode the item alone to say what is wrong with it.
                _ => Err(decode_error::<In>(&input[..len])),
            }
        }
        Codec::Json => serde_json::from_slice(&input[..len])
            .map_err(|e| CallError::new(FailureKind::Decode, e)),
        Codec::Lines => {
            let text = std::str::from_utf8(&input[..len])
                .map_err(|e| CallError::new(FailureKind::Decode, format!("not UTF-8: {e}")))?;
            In::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(text))
                .map_err(|e| CallError::new(FailureKind::Decode, e))
        }
    }
}

/// Why `item` (alone) does not decode as exactly one `In`: bytes left over, or
/// the reader's error (which includes running past its end).
#[cold]
fn decode_error<In: DeserializeOwned>(item: &[u8]) -> CallError {
    match pstream_protocol::decode_bincode::<In>(item) {
        Ok((_, used)) => CallError::new(
            FailureKind::Decode,
            format!(
                "{} bytes left over after the input value",
                item.len() - used
            ),
        ),
        Err(e) => CallError::new(FailureKind::Decode, e),
    }
}

#[inline(always)]
fn encode<Out: Serialize>(codec: Codec, value: &Out, out: &mut Vec<u8>) -> Result<(), CallError> {
    match codec {
        Codec::Bincode => pstream_protocol::encode_bincode(value, out)
            .map_err(|e| CallError::new(FailureKind::Encode, e)),
        Codec::Json => serde_json::to_writer(&mut *out, value)
            .map_err(|e| CallError::new(FailureKind::Encode, e)),
        Codec::Lines => {
            let start = out.len();
            serde_json::to_writer(&mut *out, value)
                .map_err(|e| CallError::new(FailureKind::Encode, e))?;
            // A string goes out as its raw text, unless that would break the line.
            if out.get(start) == Some(&b'"') {
                if let Ok(text) = serde_json::from_slice::<String>(&out[start..]) {
                    if !text.contains(['\n', '\r']) {
                        out.truncate(start);
                        out.extend_from_slice(text.as_bytes());
                    }
                }
            }
            Ok(())
        }
    }
}

#[doc(hidden)]
#[inline(always)]
pub fn __call_plain<In: DeserializeOwned, Out: Serialize>(
    f: fn(In) -> Out,
    codec: Codec,
    input: &[u8],
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CallError> {
    let value = f(decode(codec, input, len)?);
    encode(codec, &value, out)
}

#[doc(hidden)]
#[inline(always)]
pub fn __call_fallible<In: DeserializeOwned, Out: Serialize, E: fmt::Display>(
    f: fn(In) -> Result<Out, E>,
    codec: Codec,
    input: &[u8],
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CallError> {
    match f(decode(codec, input, len)?) {
        Ok(value) => encode(codec, &value, out),
        Err(e) => Err(CallError::new(FailureKind::Failed, e)),
    }
}

/// Define a function that workers serve, and a typed handle to call it with.
///
/// ```
/// pstream_worker::function! {
///     /// Twice the input.
///     pub fn twice(x: i64) -> i64 { x * 2 }
/// }
/// pstream_worker::function! {
///     fn parse(s: String) -> Result<u32, std::num::ParseIntError> { s.parse() }
/// }
/// assert_eq!(twice.name(), "twice");
/// assert_eq!(twice.call(21), Ok(42)); // the body, called in this process
/// assert!(parse.call("x".into()).is_err());
/// ```
///
/// The macro defines a constant named like the function, of type
/// `Function<In, Out>`, and registers the body under that name at link time, so a
/// re-executed copy of the binary serves exactly the same functions. A function whose
/// return type is written `Result<T, E>` (with `E: Display`) has output `T`; an `Err`
/// becomes an error for that item.
///
/// The handle also carries the body as a plain function pointer
/// ([`Function::call`](crate::Function::call)), so a thread executor can run the very
/// same handle without a worker process.
#[macro_export]
macro_rules! function {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident ($arg:ident : $in:ty) -> Result<$out:ty, $err:ty> $body:block
    ) => {
        $(#[$meta])*
        #[allow(non_upper_case_globals)]
        $vis const $name: $crate::Function<$in, $out> = {
            fn __body($arg: $in) -> ::std::result::Result<$out, $err> $body
            #[inline]
            fn __local(input: $in) -> ::std::result::Result<$out, ::std::string::String> {
                __body(input).map_err(|e| ::std::string::ToString::to_string(&e))
            }
            $crate::Function::__new(stringify!($name), __local)
        };
        $crate::__register!($name, $in, $out);
    };
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident ($arg:ident : $in:ty) -> $out:ty $body:block
    ) => {
        $(#[$meta])*
        #[allow(non_upper_case_globals)]
        $vis const $name: $crate::Function<$in, $out> = {
            fn __body($arg: $in) -> $out $body
            #[inline]
            fn __local(input: $in) -> ::std::result::Result<$out, ::std::string::String> {
                ::std::result::Result::Ok(__body(input))
            }
            $crate::Function::__new(stringify!($name), __local)
        };
        $crate::__register!($name, $in, $out);
    };
}

/// Registers the handle `$name` (made by [`function!`]) under its name, at link time.
#[doc(hidden)]
#[macro_export]
macro_rules! __register {
    ($name:ident, $in:ty, $out:ty) => {
        const _: () = {
            #[inline(always)]
            fn __entry(
                codec: $crate::__private::Codec,
                input: &[u8],
                len: usize,
                out: &mut ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<(), $crate::CallError> {
                $crate::__call_fallible::<$in, $out, ::std::string::String>(
                    $name.local(),
                    codec,
                    input,
                    len,
                    out,
                )
            }
            fn __batch(
                batch: &mut $crate::__private::Batch<'_>,
            ) -> ::std::result::Result<(), $crate::WorkerError> {
                // A loop for bincode of its own: the codec is known in it, so no
                // per-item match, and no JSON code in the way.
                match batch.codec() {
                    $crate::__private::Codec::Bincode => batch.run(|_, input, len, out| {
                        __entry($crate::__private::Codec::Bincode, input, len, out)
                    }),
                    _ => batch.run(__entry),
                }
            }
            $crate::__private::inventory::submit! {
                $crate::Registration {
                    name: stringify!($name),
                    input_type: stringify!($in),
                    output_type: stringify!($out),
                    call: __entry,
                    batch: __batch,
                    type_names: || {
                        (
                            ::std::any::type_name::<$in>(),
                            ::std::any::type_name::<$out>(),
                        )
                    },
                }
            }
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::function! {
        fn reg_test_double(x: i64) -> i64 { x * 2 }
    }
    crate::function! {
        fn reg_test_parse(s: String) -> Result<u32, std::num::ParseIntError> { s.parse() }
    }

    fn call(name: &str, codec: Codec, input: &[u8]) -> Result<Vec<u8>, CallError> {
        let mut out = Vec::new();
        (registry()[name].call)(codec, input, input.len(), &mut out)?;
        Ok(out)
    }

    #[test]
    fn registered_and_callable_in_every_codec() {
        assert_eq!(reg_test_parse.name(), "reg_test_parse");
        assert_eq!(reg_test_double.name(), "reg_test_double");
        assert_eq!(call("reg_test_double", Codec::Json, b"21").unwrap(), b"42");
        let input = bincode::serde::encode_to_vec(21i64, bincode::config::standard()).unwrap();
        let out = call("reg_test_double", Codec::Bincode, &input).unwrap();
        let (v, _): (i64, _) =
            bincode::serde::decode_from_slice(&out, bincode::config::standard()).unwrap();
        assert_eq!(v, 42);
        assert_eq!(call("reg_test_parse", Codec::Lines, b"17").unwrap(), b"17");
        let err = call("reg_test_parse", Codec::Lines, b"x").unwrap_err();
        assert_eq!(err.kind, FailureKind::Failed);
        let err = call("reg_test_double", Codec::Json, b"\"x\"").unwrap_err();
        assert_eq!(err.kind, FailureKind::Decode);
        let err = call("reg_test_double", Codec::Bincode, &[]).unwrap_err();
        assert_eq!(err.kind, FailureKind::Decode);
        assert!(functions().iter().any(|f| f.name == "reg_test_parse"
            && f.input_type == "String"
            && f.output_type == "u32"));
    }
}

//! Named, typed functions and their type-erased entry points.

use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;

use pstream_protocol::{Codec, FailureKind, FunctionInfo, LocalFn};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::batch::Batch;
use crate::error::{CallError, WorkerError};

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
            // The input type decides how the line is read (see `line`).
            In::deserialize(crate::line::LineDeserializer::new(text))
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

/// A function defined with [`crate::function!`], as a type: the expansion defines
/// one per function, so that the entry points below are compiled for it (with its
/// body inlined) from code in this crate, where no name of the caller's is in
/// scope.
#[doc(hidden)]
pub trait Entry: 'static {
    /// The input type (a tuple for several arguments).
    type In: DeserializeOwned;
    /// The output type (a result's `Ok` type).
    type Out: Serialize;
    /// The body.
    const LOCAL: LocalFn<Self::In, Self::Out>;
    /// For a function that takes per-worker state: build it (or find it built),
    /// before the batch's first item.
    const STATE: Option<fn() -> Result<(), &'static str>> = None;
}

/// The [`CallFn`] of a function.
#[doc(hidden)]
#[inline(always)]
pub fn entry<E: Entry>(
    codec: Codec,
    input: &[u8],
    len: usize,
    out: &mut Vec<u8>,
) -> Result<(), CallError> {
    __call_fallible::<E::In, E::Out, String>(E::LOCAL, codec, input, len, out)
}

/// The [`BatchFn`] of a function.
#[doc(hidden)]
pub fn batch<E: Entry>(batch: &mut Batch<'_>) -> Result<(), WorkerError> {
    if let Some(prepare) = E::STATE {
        if let Err(reason) = prepare() {
            // No item can be computed here: each says so, as a failure of its own
            // kind, which the coordinator takes for "this worker's state failed".
            let kind = FailureKind::State {
                pid: std::process::id(),
            };
            return batch.run(|_, _, _, _| Err(CallError::new(kind, reason)));
        }
    }
    // A loop for bincode of its own: the codec is known in it, so no per-item
    // match, and no JSON code in the way.
    match batch.codec() {
        Codec::Bincode => {
            batch.run(|_, input, len, out| entry::<E>(Codec::Bincode, input, len, out))
        }
        _ => batch.run(entry::<E>),
    }
}

/// The full names of a function's input and output types.
#[doc(hidden)]
pub fn type_names<In, Out>() -> (&'static str, &'static str) {
    (std::any::type_name::<In>(), std::any::type_name::<Out>())
}

/// A return type taken as a result (by the last segment of its path: `Result`,
/// `std::result::Result`, `io::Result`, `anyhow::Result`, ...): `Ok` is the output,
/// `Err` fails the item with the error's text.
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a `Result<T, E>` whose error implements `Display`",
    label = "a return type named `Result` makes a pstream function fallible",
    note = "an `Err` fails its item with the error's text, so the error type must \
            implement `std::fmt::Display`; to send a value of a type named `Result` as \
            it is, return it under another name (a type alias)"
)]
pub trait Fallible {
    /// The `Ok` type.
    type Out;
    /// The value, or the error's text.
    fn into_outcome(self) -> Result<Self::Out, String>;
}

impl<T, E: fmt::Display> Fallible for Result<T, E> {
    type Out = T;
    #[inline(always)]
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|e| e.to_string())
    }
}

/// Define functions that workers serve, and a typed handle to call each with.
///
/// ```
/// pstream_worker::function! {
///     /// Twice the input.
///     pub fn twice(x: i64) -> i64 { x * 2 }
/// }
/// pstream_worker::function! {
///     fn parse(s: String) -> Result<u32, std::num::ParseIntError> { s.parse() }
///
///     /// Several arguments travel as a tuple.
///     fn add(a: i64, b: i64) -> i64 { a + b }
/// }
/// assert_eq!(twice.name(), "twice");
/// assert_eq!(twice.call(21), Ok(42)); // the body, called in this process
/// assert!(parse.call("x".into()).is_err());
/// assert_eq!(add.call((2, 3)), Ok(5));
/// ```
///
/// See `pstream::function!` for the forms accepted. The macro defines a constant
/// named like each function, of type `Function<In, Out>`, and registers the body
/// under that name at link time, so a re-executed copy of the binary serves exactly
/// the same functions.
#[macro_export]
macro_rules! function {
    ($($function:tt)*) => {
        $crate::__private::function_impl! { ($crate) $($function)* }
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

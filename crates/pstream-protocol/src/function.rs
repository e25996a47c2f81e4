//! The typed handle a caller holds for a registered function.

use std::fmt;
use std::marker::PhantomData;

/// A registered function, as the caller holds it: its name on the wire and, in its
/// type, what it takes and gives. Made by `pstream::function!`; `Copy`, so pass it by
/// value.
pub struct Function<In, Out> {
    name: &'static str,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Function<In, Out> {
    #[doc(hidden)]
    pub const fn __new(name: &'static str) -> Self {
        Function {
            name,
            _types: PhantomData,
        }
    }

    /// The function's name, as workers know it.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<In, Out> Clone for Function<In, Out> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<In, Out> Copy for Function<In, Out> {}

impl<In, Out> fmt::Debug for Function<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Function({}: {} -> {})",
            self.name,
            std::any::type_name::<In>(),
            std::any::type_name::<Out>()
        )
    }
}

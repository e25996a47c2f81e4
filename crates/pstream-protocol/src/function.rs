//! The typed handle a caller holds for a registered function.

use std::fmt;
use std::marker::PhantomData;

/// The body of a registered function as this process can call it: its value, or its
/// error (a function written to return `Result<T, E>`) as displayed.
pub type LocalFn<In, Out> = fn(In) -> Result<Out, String>;

/// A registered function, as the caller holds it: its name on the wire and, in its
/// type, what it takes and gives. Made by `pstream::function!`; `Copy`, so pass it by
/// value.
///
/// The handle also carries a pointer to the function's body, so the same handle runs
/// in a pool of processes (where only the name travels) and in this process
/// ([`Function::call`], which is what a thread executor does with it).
pub struct Function<In, Out> {
    name: &'static str,
    local: LocalFn<In, Out>,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> Function<In, Out> {
    #[doc(hidden)]
    pub const fn __new(name: &'static str, local: LocalFn<In, Out>) -> Self {
        Function {
            name,
            local,
            _types: PhantomData,
        }
    }

    /// The function's name, as workers know it.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Call the function here, in this thread: its value, or the error it returned
    /// (displayed). A panic in the function is not caught.
    pub fn call(&self, input: In) -> Result<Out, String> {
        (self.local)(input)
    }

    /// The function's body, as a plain function pointer.
    pub const fn local(&self) -> LocalFn<In, Out> {
        self.local
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

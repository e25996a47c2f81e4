//! The example plugin: serves the functions of the `pstream_examples` library.

use pstream_examples as _; // links the functions in

mod evil;

fn main() {
    evil::maybe_misbehave();
    pstream::serve()
}

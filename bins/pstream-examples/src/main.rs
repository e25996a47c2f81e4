//! The example plugin: serves the functions of the `pstream_examples` library.

use pstream_examples as _; // links the functions in

fn main() {
    pstream::serve()
}

//! The trap: a plugin `main` that names nothing from its package's library, so the
//! linker leaves the library, and the functions in it, out.

fn main() {
    pstream::serve()
}

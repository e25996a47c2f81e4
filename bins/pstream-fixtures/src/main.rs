//! A plugin laid out the obvious way: the functions in src/lib.rs, and this
//! `main.rs`, which links them in and serves.

pstream::plugin!(pstream_fixtures);

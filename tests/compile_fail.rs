//! What the type system refuses about a job's input: borrowed input is read on the
//! consumer's thread only, and its results cannot outlive it. The expected messages
//! are in tests/ui/*.stderr; regenerate them with `TRYBUILD=overwrite` after a
//! deliberate change (or a compiler's new wording).

#[test]
fn borrowed_input_is_refused_where_it_would_be_unsound() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}

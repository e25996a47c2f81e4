//! The forms `function!` refuses, each with a message that says why and what to
//! write instead. The expected messages are in tests/ui/*.stderr; after changing a
//! message on purpose, regenerate them with `TRYBUILD=overwrite`.

#[test]
fn refused_forms_say_why() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}

/// A type that is named `Result` but is not one.
type Result = Vec<u8>;

pstream_worker::function! {
    fn bytes(s: String) -> Result {
        s.into_bytes()
    }
}

fn main() {}

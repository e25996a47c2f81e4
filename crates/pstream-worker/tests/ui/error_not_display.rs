#[derive(Debug)]
struct Opaque;

pstream_worker::function! {
    fn check(x: i64) -> Result<i64, Opaque> {
        if x > 0 { Ok(x) } else { Err(Opaque) }
    }
}

fn main() {}

pstream_worker::function! {
    fn n(n: i64) -> i64 {
        n + 1
    }
}

fn main() {}

struct Counter;

impl Counter {
    pstream_worker::function! {
        fn count(self) -> i64 {
            1
        }
    }
}

fn main() {}

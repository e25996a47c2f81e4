struct Counter;

pstream_worker::function! {
    fn count(x: i64, counter: &mut Counter) -> i64 {
        let _ = counter;
        x
    }
}

fn main() {}

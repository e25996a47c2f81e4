pstream_worker::function! {
    fn length(s: &str) -> usize {
        s.len()
    }
}

fn main() {}

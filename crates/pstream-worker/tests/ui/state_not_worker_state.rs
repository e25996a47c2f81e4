struct Model;

pstream_worker::function! {
    fn predict(x: i64, model: &Model) -> i64 {
        let _ = model;
        x
    }
}

fn main() {}

struct Model;

pstream_worker::function! {
    fn predict(model: &Model, x: i64) -> i64 {
        let _ = model;
        x
    }
}

fn main() {}

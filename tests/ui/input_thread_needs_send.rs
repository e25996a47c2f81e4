// The input-thread path moves the input to another thread: it must be `Send`.
use std::rc::Rc;

pstream::function! {
    fn twice(x: i64) -> i64 { x * 2 }
}

fn main() -> Result<(), pstream::PoolError> {
    let pool = pstream::ProcessPool::builder().build()?;
    let shared = Rc::new(3i64);
    let input = (0..10i64).map(move |x| x + *shared);
    for result in pool.input_thread().map(twice, input)? {
        let _ = result;
    }
    Ok(())
}

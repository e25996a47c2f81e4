// The input-thread path reads the input on another thread, which may outlive the
// caller's data: a borrowed input is refused.
pstream::function! {
    fn upper(s: String) -> String { s.to_uppercase() }
}

fn main() -> Result<(), pstream::PoolError> {
    let pool = pstream::ProcessPool::builder().build()?;
    let data: Vec<String> = vec!["a".into()];
    for result in pool.input_thread().map(upper, data.iter().cloned())? {
        let _ = result;
    }
    Ok(())
}

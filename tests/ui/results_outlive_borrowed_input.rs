// Results of a job that reads a borrowed input on the consumer's thread carry the
// input's lifetime: they cannot outlive the data they read.
pstream::function! {
    fn upper(s: String) -> String { s.to_uppercase() }
}

fn main() -> Result<(), pstream::PoolError> {
    let pool = pstream::ProcessPool::builder().build()?;
    let results;
    {
        let data: Vec<String> = vec!["a".into()];
        results = pool.map(upper, data.iter().cloned())?;
    }
    for result in results {
        let _ = result;
    }
    Ok(())
}

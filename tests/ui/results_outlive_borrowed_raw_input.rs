// The same for raw items: the results hold the borrowed input.
fn main() -> Result<(), pstream::PoolError> {
    let pool = pstream::ProcessPool::builder().build()?;
    let data: Vec<String> = vec!["1".into()];
    let results = pool.map_raw("double", pstream::Codec::Json, true, data.iter())?;
    drop(data);
    drop(results);
    Ok(())
}

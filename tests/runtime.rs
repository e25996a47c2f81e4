//! The core runtime over real processes: order, flat memory, cancellation,
//! degenerate shapes, start-up failures, clean shutdown.

mod support;

use pstream_examples::double;
use support::*;

#[test]
fn double_a_million_in_order() {
    let pool = pool(2);
    let n = scale(1_000_000) as i64;
    let mut expected = 0i64;
    for result in pool.map(double, 0..n).unwrap() {
        assert_eq!(result.unwrap(), expected * 2);
        expected += 1;
    }
    assert_eq!(expected, n);
}

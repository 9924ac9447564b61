//! `with_awake_workers`: the body's value comes back, parallel work inside it is done by the pool,
//! nested and repeated calls finish (a keeper that lands on the body's own thread must not hold
//! it), and without a pool the body just runs.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use stn_ops::with_awake_workers;

fn work(n: u64) -> u64 {
    (0..n).into_par_iter().map(|i| i * i % 7).sum()
}

#[test]
fn returns_the_bodys_value_and_finishes_nested_and_repeated_calls() {
    let want = (0..100_000u64).map(|i| i * i % 7).sum::<u64>();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let workers = AtomicUsize::new(0);
        pool.install(|| {
            for _ in 0..200 {
                let got = with_awake_workers(|| {
                    // Joins inside the body: the body's thread waits, and may be handed a keeper.
                    let (a, b) =
                        rayon::join(|| work(100_000), || with_awake_workers(|| work(100_000)));
                    (a, b)
                });
                assert_eq!(got, (want, want), "{threads} threads");
            }
            // Every worker can still take work afterwards (no keeper left running).
            (0..threads * 64).into_par_iter().for_each(|_| {
                workers.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(workers.load(Ordering::Relaxed), threads * 64);
    }
    // Outside any pool's worker: the body alone.
    assert_eq!(with_awake_workers(|| 41 + 1), 42);
}

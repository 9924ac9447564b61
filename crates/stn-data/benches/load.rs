//! Reading, verifying (SHA-256) and normalising all 70,000 MNIST images from the gzipped files.
//!
//!     STN_DATA=../shared/data/mnist cargo bench -p stn-data --bench load

use std::time::Instant;

use stn_data::{normalize, DataDir, Mnist};

fn main() {
    let dir = DataDir::resolve(None);
    let mut times = Vec::new();
    let mut images = 0;
    for _ in 0..5 {
        let t0 = Instant::now();
        let m = Mnist::load(&dir, true).unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (normalize(&m.train.images), normalize(&m.test.images));
        images = m.train.len() + m.test.len();
        assert_eq!(a.len() + b.len(), images * 28 * 28);
        times.push(t0.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!(
        r#"{{"bench":"load_verify_normalize","images":{images},"median_s":{:.3},"min_s":{:.3}}}"#,
        times[2], times[0]
    );
}

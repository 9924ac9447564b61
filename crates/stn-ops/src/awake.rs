//! Keeping the pool's other workers running between the kernels' parallel loops, as OpenMP's
//! threads spin between parallel regions.
//!
//! Why: an idle rayon worker yields 32 times and then sleeps, and the next parallel loop has to
//! wake it. Between an op's loops there are serial stretches (dfdx's copies of the inputs and
//! zeroed gradients, the tape), and on the project's 2-vCPU machine a sleeping vCPU can take a
//! few hundred microseconds to run again: the ops bench then ran the sampler's forward with ten
//! channels at its one-thread time (the other worker woke after it was over). With a keeper job
//! on every other worker that takes the pool's pending work as soon as it appears, the bench ran
//! 5–10% faster and the one-channel transformer 10–35% (`scripts/bench-ops.sh`).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a keeper spins without finding work before it naps.
const SPIN: Duration = Duration::from_millis(2);
/// How long it naps at a time after that (a long serial stretch costs no CPU).
const NAP: Duration = Duration::from_micros(200);
/// Spin-loop hints between two looks for work: looking without a pause took the work of the
/// kernels' loops in pieces too small (rayon splits a loop further each time a piece is taken).
const POLL_SPINS: u32 = 10;

thread_local! {
    /// This thread runs a keeper already.
    static KEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `body` on the current thread (a worker of rayon's pool) while every other worker of the
/// pool runs a keeper: a job that runs the pool's pending jobs (`rayon::yield_now`) as soon as
/// they appear and spins while there are none — for up to 2 ms, then it naps 200 µs at a time.
/// Outside a pool, with one thread, or with `STN_NO_KEEPER` set (for comparisons), `body` alone.
pub fn with_awake_workers<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    let threads = rayon::current_num_threads();
    let owner = rayon::current_thread_index();
    if threads < 2 || owner.is_none() || std::env::var_os("STN_NO_KEEPER").is_some() {
        return body();
    }
    let stop = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| keep_awake(&stop, owner));
        }
        let out = body();
        stop.store(true, Ordering::Release);
        out
    })
}

/// A keeper (see [`with_awake_workers`]). One that lands on `body`'s own thread (which can run
/// pending jobs while it waits inside `body`) or inside another keeper returns at once: it would
/// hold that thread until `stop`, which only `body` sets.
fn keep_awake(stop: &AtomicBool, owner: Option<usize>) {
    if rayon::current_thread_index() == owner || KEEPING.get() {
        return;
    }
    KEEPING.set(true);
    let mut last_work = Instant::now();
    while !stop.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => last_work = Instant::now(),
            Some(rayon::Yield::Idle) if last_work.elapsed() < SPIN => {
                (0..POLL_SPINS).for_each(|_| std::hint::spin_loop())
            }
            Some(rayon::Yield::Idle) => std::thread::sleep(NAP),
            None => break,
        }
    }
    KEEPING.set(false);
}

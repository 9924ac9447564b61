//! The command-line stage of stn: shared plumbing of the `stn-train`, `stn-export` and `stn-infer`
//! binaries (in `src/bin/`). The top-level `tests/` drive those binaries end to end.

pub mod preprocess;

use std::process::ExitCode;

/// Runs a CLI body and turns its error into a clear message (with its causes) and exit code 1.
/// Binaries never panic on bad input: every failure comes back here as an error.
pub fn run_main(body: impl FnOnce() -> anyhow::Result<()>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sizes rayon's global pool (the CPU kernels' parallelism; 0 = one thread per core) and runs
/// `body` on one of its workers. Why on a worker: a parallel loop started from outside the pool
/// hands its work to the pool and sleeps until it is done, two context switches per loop; the
/// network's many small loops made that most of a batch-1 inference. From a worker the loops run
/// in place (and with one thread, without any switch).
pub fn in_pool<T: Send>(
    threads: usize,
    body: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    keep_freed_memory();
    let mut pool = rayon::ThreadPoolBuilder::new().stack_size(8 << 20);
    if threads > 0 {
        pool = pool.num_threads(threads);
    }
    pool.build_global()
        .map_err(|e| anyhow::anyhow!("--threads {threads}: {e}"))?;
    rayon::scope(|_| stn_ops::with_awake_workers(body))
}

/// Tells mimalloc (the binaries' allocator) to keep the memory it frees rather than return it to
/// the kernel a second later. Why: a training step frees and re-allocates the same multi-MB buffers
/// (activations, their copies, gradients); returned pages come back as fresh (huge) pages that the
/// kernel zero-fills on first touch — 8–18% of a training step's CPU time (perf: `clear_page_erms`;
/// page faults per epoch-slice 2,000–3,000 → 400). Peak memory is unchanged: the same buffers are
/// reused.
fn keep_freed_memory() {
    // `mi_option_purge_delay` is entry 15 of mimalloc 3's option enum (libmimalloc-sys 0.1 binds no
    // name for it). Set only where that entry holds its documented default (1000 ms), so another
    // mimalloc cannot have a different option changed by mistake.
    const PURGE_DELAY: i32 = 15;
    extern "C" {
        fn mi_option_get(option: i32) -> std::ffi::c_long;
        fn mi_option_set(option: i32, value: std::ffi::c_long);
    }
    // SAFETY: plain calls into the linked mimalloc (the global allocator), valid at any time.
    unsafe {
        if mi_option_get(PURGE_DELAY) == 1000 {
            mi_option_set(PURGE_DELAY, -1);
        }
    }
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), if known.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `data` `[rows, cols]` as a NumPy `.npy` (float32, C order), written atomically.
pub fn write_npy(
    path: &std::path::Path,
    data: &[f32],
    rows: usize,
    cols: usize,
) -> std::io::Result<()> {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    stn_data::write_atomic(path, &bytes)
}

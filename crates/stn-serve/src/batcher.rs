//! Dynamic batching: each model version has one worker thread that owns its runner, gathers the
//! queued requests into one batch (up to `max_batch` images, waiting at most `max_delay` after the
//! first), runs it, and sends each request its own rows back.
//!
//! A lone one-image request on the fused runtime (nothing queued or running, no one else
//! arriving) skips the queue and runs on its HTTP thread: there is no batch to join, and the two
//! thread hops to the worker and back cost more than its forward.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Histogram;
use stn_runtime::{
    open_runner, Device, FusedRunner, RunOutput, Runner, RunnerOptions, RuntimeError, RuntimeKind,
};
use tokio::sync::oneshot;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::model::ModelInfo;

/// How requests are gathered.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Most images in one run (a request with more runs alone).
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch.
    pub max_delay: Duration,
    /// Most requests queued per model version; more are answered 503.
    pub max_queue: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 64,
            max_delay: Duration::from_micros(500),
            max_queue: 1024,
        }
    }
}

/// One request's images and where its answer goes.
pub struct Job {
    /// `n · C · H · W` values, checked against the model's input.
    pub images: Vec<f32>,
    /// Images.
    pub n: usize,
    /// When it was queued.
    pub queued: Instant,
    /// Its rows of the batch's outputs, or why the run failed.
    pub reply: oneshot::Sender<Result<RunOutput, ApiError>>,
}

/// The queue of one model version; dropping it stops the worker once the queue is empty.
pub struct Batcher {
    jobs: SyncSender<Job>,
    /// Requests that have passed their route and are being read or parsed: the worker does not
    /// wait for company that is not coming (no one parsing, queue empty: run now).
    arriving: Arc<AtomicUsize>,
    /// Jobs queued or in the worker's batch.
    outstanding: Arc<AtomicUsize>,
    /// The runner, when it can also run on the caller's thread (the fused one).
    shared: Option<Arc<FusedRunner>>,
    metrics: Histograms,
}

/// A request on its way to the queue ([`Batcher::arriving`]); counted until dropped.
pub struct Arrival(Arc<AtomicUsize>);

impl Drop for Arrival {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Batcher {
    /// Loads `bytes` with the runner `runner` asks for and starts its worker thread; an error if
    /// the model does not load. The fused runner is shared with the HTTP threads (for lone
    /// requests, [`Batcher::infer`]); any other is made on the worker thread and never leaves it.
    pub fn start(
        info: &ModelInfo,
        bytes: Vec<u8>,
        runner: &RunnerOptions,
        opts: BatchOptions,
        metrics: &Metrics,
    ) -> Result<Batcher, String> {
        let (jobs, queue) = sync_channel::<Job>(opts.max_queue.max(1));
        let (loaded_tx, loaded) = std::sync::mpsc::channel();
        let path = info.path.display().to_string();
        let runner_opts = runner.clone();
        let worker_path = path.clone();
        let version = info.version.to_string();
        let labels = [info.name.as_str(), version.as_str()];
        let histograms = Histograms {
            queue_seconds: metrics.queue_seconds.with_label_values(&labels),
            compute_seconds: metrics.compute_seconds.with_label_values(&labels),
            batch_size: metrics.batch_size.with_label_values(&labels),
        };
        let arriving = Arc::new(AtomicUsize::new(0));
        let outstanding = Arc::new(AtomicUsize::new(0));
        let shared = match runner.runtime {
            // (The fused runner on another device is open_runner's error, on the worker.)
            RuntimeKind::Fused if runner.device == Device::Cpu => Some(Arc::new(
                FusedRunner::load(&bytes, &path).map_err(|e| e.to_string())?,
            )),
            _ => None,
        };
        let worker_shared = shared.clone();
        let (worker_arriving, worker_outstanding) = (arriving.clone(), outstanding.clone());
        let worker_metrics = histograms.clone();
        std::thread::Builder::new()
            .name(format!("stn-batch-{}-{}", info.name, info.version))
            .spawn(move || {
                let opened = match worker_shared {
                    Some(fused) => Ok(Box::new(fused) as Box<dyn Runner>),
                    // Other runners are made on the thread that runs them, and never leave it.
                    None => open_runner(&runner_opts, &bytes, &worker_path).map(|o| o.runner),
                };
                let mut runner = match opened {
                    Ok(r) => {
                        let _ = loaded_tx.send(Ok(()));
                        r
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                drop(bytes);
                let worker = Worker {
                    runner: runner.as_mut(),
                    queue,
                    opts,
                    metrics: worker_metrics,
                    arriving: worker_arriving,
                    outstanding: worker_outstanding,
                };
                worker.run();
            })
            .map_err(|e| format!("{path}: cannot start its worker thread: {e}"))?;
        loaded
            .recv()
            .map_err(|_| format!("{}: the model's worker stopped", info.path.display()))??;
        Ok(Batcher {
            jobs,
            arriving,
            outstanding,
            shared,
            metrics: histograms,
        })
    }

    /// Counts a request from its route to its queue (see [`Batcher::infer`]).
    pub fn arrival(&self) -> Arrival {
        self.arriving.fetch_add(1, Ordering::AcqRel);
        Arrival(self.arriving.clone())
    }

    /// Runs `n` images (`images`, checked against the model's input), batched with whatever
    /// else is arriving; the request's [`Arrival`] ends here. 503 when the queue is full.
    pub async fn infer(
        &self,
        images: Vec<f32>,
        n: usize,
        arrival: Arrival,
    ) -> Result<RunOutput, ApiError> {
        if let Some(fused) = &self.shared {
            let alone = self.arriving.load(Ordering::Acquire) == 1
                && self.outstanding.load(Ordering::Acquire) == 0;
            if n == 1 && alone {
                drop(arrival);
                let start = Instant::now();
                self.metrics.queue_seconds.observe(0.0);
                let out = guarded(|| fused.run_shared(&images, n));
                self.metrics
                    .compute_seconds
                    .observe(start.elapsed().as_secs_f64());
                self.metrics.batch_size.observe(n as f64);
                return out;
            }
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            images,
            n,
            queued: Instant::now(),
            reply,
        };
        // The arrival ends before the job is queued: a worker woken by this job must not find it
        // still "on its way" and wait `max_delay` for company that is already there.
        drop(arrival);
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.jobs.try_send(job) {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::unavailable(match e {
                TrySendError::Full(_) => "the model's queue is full (--max-queue); try again",
                TrySendError::Disconnected(_) => "the model's worker has stopped",
            }));
        }
        answer
            .await
            .map_err(|_| ApiError::unavailable("the model's worker stopped"))?
    }
}

/// One model version's histograms, resolved once (no label lookups per batch).
#[derive(Clone)]
struct Histograms {
    queue_seconds: Histogram,
    compute_seconds: Histogram,
    batch_size: Histogram,
}

struct Worker<'r> {
    runner: &'r mut dyn Runner,
    queue: Receiver<Job>,
    opts: BatchOptions,
    metrics: Histograms,
    arriving: Arc<AtomicUsize>,
    outstanding: Arc<AtomicUsize>,
}

impl Worker<'_> {
    fn run(mut self) {
        let mut carried: Option<Job> = None;
        loop {
            let first = match carried.take() {
                Some(j) => j,
                None => match self.queue.recv() {
                    Ok(j) => j,
                    Err(_) => return, // every sender dropped: the server has stopped
                },
            };
            let deadline = first.queued + self.opts.max_delay;
            let mut images = first.n;
            let mut jobs = vec![first];
            while images < self.opts.max_batch {
                let next = match self.queue.try_recv() {
                    Ok(j) => j,
                    Err(_) => {
                        // Nothing queued: wait for requests on their way, not for ones that
                        // may never come.
                        let now = Instant::now();
                        if now >= deadline || self.arriving.load(Ordering::Acquire) == 0 {
                            break;
                        }
                        match self.queue.recv_timeout(deadline - now) {
                            Ok(j) => j,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                };
                if images + next.n > self.opts.max_batch {
                    carried = Some(next);
                    break;
                }
                images += next.n;
                jobs.push(next);
            }
            // A client that went away is not computed for.
            let taken = jobs.len();
            jobs.retain(|j| !j.reply.is_closed());
            if !jobs.is_empty() {
                self.run_batch(jobs);
            }
            self.outstanding.fetch_sub(taken, Ordering::AcqRel);
        }
    }

    fn run_batch(&mut self, jobs: Vec<Job>) {
        let start = Instant::now();
        for j in &jobs {
            self.metrics
                .queue_seconds
                .observe((start - j.queued).as_secs_f64());
        }
        let n: usize = jobs.iter().map(|j| j.n).sum();
        let result = if jobs.len() == 1 {
            self.run_guarded(&jobs[0].images, n)
        } else {
            let mut all = Vec::with_capacity(jobs.iter().map(|j| j.images.len()).sum());
            for j in &jobs {
                all.extend_from_slice(&j.images);
            }
            self.run_guarded(&all, n)
        };
        self.metrics
            .compute_seconds
            .observe(start.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(n as f64);
        match result {
            Ok(out) => split(out, jobs),
            // One request must not fail the others: run each alone, so only a bad one fails.
            Err(_) if jobs.len() > 1 => {
                for j in jobs {
                    let r = self.run_guarded(&j.images, j.n);
                    let _ = j.reply.send(r);
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.reply.send(Err(e.clone()));
                }
            }
        }
    }

    fn run_guarded(&mut self, images: &[f32], n: usize) -> Result<RunOutput, ApiError> {
        let runner = &mut *self.runner;
        guarded(|| runner.run(images, n))
    }
}

/// A run's result; a runtime error or a panic in it is a 500, and the server goes on.
fn guarded(run: impl FnOnce() -> Result<RunOutput, RuntimeError>) -> Result<RunOutput, ApiError> {
    match catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
        )),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "the runtime failed on this batch (a panic; see the server's log)",
        )),
    }
}

/// Each job's rows of a batch's outputs.
fn split(out: RunOutput, mut jobs: Vec<Job>) {
    if jobs.len() == 1 {
        let j = jobs.pop().expect("one job");
        let _ = j.reply.send(Ok(out));
        return;
    }
    let n: usize = jobs.iter().map(|j| j.n).sum();
    let rows = |v: &Option<Vec<f32>>, from: usize, k: usize| {
        v.as_ref().map(|v| {
            let per = v.len() / n;
            v[from * per..(from + k) * per].to_vec()
        })
    };
    let classes = out.log_probs.len() / n;
    let mut from = 0;
    for j in jobs {
        let mine = RunOutput {
            log_probs: out.log_probs[from * classes..(from + j.n) * classes].to_vec(),
            transform: rows(&out.transform, from, j.n),
            warped: rows(&out.warped, from, j.n),
        };
        from += j.n;
        let _ = j.reply.send(Ok(mine));
    }
}

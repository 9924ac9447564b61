//! stn-serve: serves stn's ONNX models over the Open Inference Protocol (KServe v2 HTTP/REST).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use stn::{DeviceArg, RuntimeArg};
use stn_serve::{
    scan_repository, BatchOptions, Limits, Metrics, ModelSet, ModelSource, RunnerOptions,
};

#[global_allocator]
static GLOBAL: stn_serve::heap::Counting<mimalloc::MiMalloc> =
    stn_serve::heap::Counting(mimalloc::MiMalloc);

/// Serve stn's ONNX models over the Open Inference Protocol (KServe v2 HTTP/REST, as Triton and
/// KServe speak it): health, server and model metadata, and infer with JSON tensors or the binary
/// tensor data extension; concurrent requests are batched per model version (--max-batch,
/// --max-delay-us); Prometheus metrics at /metrics; SIGTERM or ctrl-c stops it after answering the
/// requests in flight.
///
/// Inputs are the model's own: float32 [N, C, H, W], normalised as in training (MNIST: (x/255 −
/// 0.1307) / 0.3081). Outputs: log_probs, and theta / transform and warped where the model has them.
///
///   stn-serve --model models/stn.onnx
///   curl localhost:8000/v2/models/stn
#[derive(Parser, Debug)]
#[command(version = stn::version(), verbatim_doc_comment)]
struct Args {
    /// One ONNX model to serve, as --name, version 1
    #[arg(
        long,
        value_name = "FILE.onnx",
        required_unless_present = "model_repo",
        conflicts_with = "model_repo"
    )]
    model: Option<PathBuf>,
    /// The name --model is served as
    #[arg(
        long,
        default_value = "stn",
        value_name = "NAME",
        conflicts_with = "model_repo"
    )]
    name: String,
    /// A Triton-layout model repository: every DIR/<name>/<version>/model.onnx is served
    /// (stn-export --triton-repo writes one); a request without a version gets the latest
    #[arg(long, value_name = "DIR")]
    model_repo: Option<PathBuf>,
    /// fused (our kernels, fastest on a CPU), tract, ort (ONNX Runtime) or dfdx
    #[arg(long, default_value = "fused", value_name = "NAME")]
    runtime: RuntimeArg,
    /// cpu, or cuda (ort's CUDA provider or dfdx's CUDA device; never a silent CPU fallback)
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: DeviceArg,
    /// Threads of the kernels (and ONNX Runtime's intra-op threads); 0: one per core
    #[arg(long, default_value_t = 0, value_name = "N")]
    threads: usize,
    /// Threads answering HTTP; 0: one per core
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = stn::usize_in(0, 1024))]
    http_threads: usize,
    /// Address to listen on (port 0: any free port, printed on stdout)
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "HOST:PORT")]
    addr: SocketAddr,
    /// Most images in one batch run [1 to 65536]
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = stn::usize_in(1, 65_536))]
    max_batch: usize,
    /// Longest a request waits for others to join its batch, in µs [0 to 1000000]; it does not
    /// wait when no other request is arriving
    #[arg(long, default_value_t = 500, value_name = "US", value_parser = stn::usize_in(0, 1_000_000))]
    max_delay_us: usize,
    /// Most requests queued per model version; more get 503 [1 to 1000000]
    #[arg(long, default_value_t = 1024, value_name = "N", value_parser = stn::usize_in(1, 1_000_000))]
    max_queue: usize,
    /// Largest request body in bytes; larger get 413 [1024 to 1073741824]
    #[arg(long, default_value_t = 16 << 20, value_name = "BYTES", value_parser = stn::usize_in(1024, 1 << 30))]
    max_body_bytes: usize,
    /// Most infer requests answered at once; more get 503 [1 to 1000000]
    #[arg(long, default_value_t = 1024, value_name = "N", value_parser = stn::usize_in(1, 1_000_000))]
    max_concurrency: usize,
    /// Most open connections; more wait to be accepted [1 to 1000000]
    #[arg(long, default_value_t = 4096, value_name = "N", value_parser = stn::usize_in(1, 1_000_000))]
    max_connections: usize,
    /// Longest a client may take to send a request's headers, and longest a kept-alive
    /// connection may sit idle before its next request; then it is closed. In ms [1 to 3600000]
    #[arg(long, default_value_t = 10_000, value_name = "MS", value_parser = stn::usize_in(1, 3_600_000))]
    header_timeout_ms: usize,
    /// Longest an infer request may take (its body, queue and run), in ms; then 408 [1 to 3600000]
    #[arg(long, default_value_t = 30_000, value_name = "MS", value_parser = stn::usize_in(1, 3_600_000))]
    request_timeout_ms: usize,
    /// Longest a stop waits for the requests in flight, in ms [0 to 3600000]
    #[arg(long, default_value_t = 30_000, value_name = "MS", value_parser = stn::usize_in(0, 3_600_000))]
    shutdown_timeout_ms: usize,
    /// Log lines as text or json (one object per line); RUST_LOG filters them (default info)
    #[arg(long, default_value = "text", value_name = "FORMAT")]
    log_format: LogFormat,
    /// ONNX Runtime's shared library [default: $ORT_DYLIB_PATH, else what scripts/fetch-onnxruntime.sh fetched]
    #[arg(long, value_name = "PATH")]
    ort_lib: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    stn::run_main(|| {
        let args = Args::parse();
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let logs = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match args.log_format {
            LogFormat::Text => logs.init(),
            LogFormat::Json => logs.json().init(),
        }
        let isa = stn::isa_level()?;
        let threads = stn::clamp_threads(args.threads);
        let mut pool = rayon::ThreadPoolBuilder::new().stack_size(8 << 20);
        if threads > 0 {
            pool = pool.num_threads(threads);
        }
        pool.build_global()
            .map_err(|e| anyhow::anyhow!("--threads {threads}: {e}"))?;

        let sources = match (&args.model, &args.model_repo) {
            (Some(file), _) => vec![ModelSource {
                name: args.name.clone(),
                version: 1,
                path: file.clone(),
            }],
            (None, Some(dir)) => scan_repository(dir).context("--model-repo")?,
            (None, None) => unreachable!("clap requires --model or --model-repo"),
        };
        let runner = RunnerOptions {
            runtime: args.runtime.into(),
            device: args.device.into(),
            threads,
            ort_lib: args.ort_lib.clone(),
            // A server asked for the GPU does not quietly serve from the CPU.
            allow_cpu_fallback: false,
        };
        let batch = BatchOptions {
            max_batch: args.max_batch,
            max_delay: Duration::from_micros(args.max_delay_us as u64),
            max_queue: args.max_queue,
        };
        let limits = Limits {
            max_body_bytes: args.max_body_bytes,
            max_concurrency: args.max_concurrency,
            max_connections: args.max_connections,
            header_timeout: Duration::from_millis(args.header_timeout_ms as u64),
            request_timeout: Duration::from_millis(args.request_timeout_ms as u64),
            shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms as u64),
        };
        let metrics = Metrics::new();
        let models = ModelSet::load(&sources, &runner, batch, &metrics)?;
        for m in models.all() {
            let i = &m.info;
            tracing::info!(
                model = %i.name,
                version = i.version,
                file = %i.path.display(),
                runtime = runner.runtime.name(),
                input = ?i.input.dims,
                outputs = ?i.outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(),
                "model ready"
            );
        }
        let mut rt = tokio::runtime::Builder::new_multi_thread();
        rt.enable_all().thread_name("stn-http");
        if args.http_threads > 0 {
            rt.worker_threads(args.http_threads);
        }
        let rt = rt.build().context("starting the HTTP threads")?;
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(args.addr)
                .await
                .with_context(|| format!("--addr {}", args.addr))?;
            let addr = listener.local_addr()?;
            // The one line on stdout: scripts and tests read the port from it.
            println!("stn-serve listening on http://{addr}");
            tracing::info!(%addr, isa = isa.name(), max_batch = args.max_batch, max_delay_us = args.max_delay_us, "listening");
            stn_serve::serve(listener, models, metrics, limits, stop_signal()).await?;
            tracing::info!("stopped");
            anyhow::Ok(())
        })
    })
}

/// ctrl-c, or SIGTERM (what `docker stop` and Kubernetes send).
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

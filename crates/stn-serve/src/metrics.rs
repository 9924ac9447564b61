//! Prometheus metrics, served at `/metrics` in the text format.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// The server's counters and histograms, in their own registry (not the process-global one, so
/// that servers in one process — the tests — do not share counts).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Inference requests per model, version and outcome (`success`, `failure`).
    pub requests: IntCounterVec,
    /// Images inferred per model and version.
    pub images: IntCounterVec,
    /// HTTP responses per status code (every route).
    pub responses: IntCounterVec,
    /// Images per batch run, per model and version.
    pub batch_size: HistogramVec,
    /// Seconds a request waited in its model's queue before its batch ran.
    pub queue_seconds: HistogramVec,
    /// Seconds each batch took in the runner.
    pub compute_seconds: HistogramVec,
    /// Requests being answered now.
    pub in_flight: IntGauge,
    /// Live heap bytes, set when rendered (when the binary counts them: [`crate::heap`]).
    heap_bytes: IntGauge,
}

impl Metrics {
    /// A fresh set, registered.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let mv = ["model", "version"];
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), &mv)
                .expect("valid metric");
            registry.register(Box::new(h.clone())).expect("unique");
            h
        };
        let seconds = prometheus::exponential_buckets(25e-6, 2.0, 16).expect("valid buckets");
        let sizes = prometheus::exponential_buckets(1.0, 2.0, 12).expect("valid buckets");
        let in_flight = IntGauge::new("stn_requests_in_flight", "HTTP requests being answered")
            .expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("unique");
        let heap_bytes = IntGauge::new(
            "stn_heap_live_bytes",
            "Bytes allocated and not freed by the server process",
        )
        .expect("valid metric");
        if crate::heap::live_bytes().is_some() {
            registry
                .register(Box::new(heap_bytes.clone()))
                .expect("unique");
        }
        Metrics {
            requests: counter(
                "stn_inference_requests_total",
                "Inference requests, by model, version and outcome",
                &["model", "version", "outcome"],
            ),
            images: counter(
                "stn_inference_images_total",
                "Images inferred, by model and version",
                &mv,
            ),
            responses: counter(
                "stn_http_responses_total",
                "HTTP responses, by status code",
                &["code"],
            ),
            batch_size: histogram(
                "stn_batch_size",
                "Images per batch run (dynamic batching)",
                sizes,
            ),
            queue_seconds: histogram(
                "stn_queue_seconds",
                "Seconds a request waited for its batch",
                seconds.clone(),
            ),
            compute_seconds: histogram(
                "stn_compute_seconds",
                "Seconds a batch took in the runner",
                seconds,
            ),
            in_flight,
            heap_bytes,
            registry,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        if let Some(n) = crate::heap::live_bytes() {
            self.heap_bytes.set(n as i64);
        }
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into memory");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

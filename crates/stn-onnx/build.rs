//! Compiles `proto/onnx.proto` with protox (a Rust protobuf compiler: no `protoc` needed) and
//! generates the prost types.
fn main() {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let file = format!("{proto_dir}/onnx.proto");
    println!("cargo:rerun-if-changed={file}");
    let fds = protox::compile([&file], [proto_dir]).unwrap_or_else(|e| panic!("{file}: {e}"));
    prost_build::Config::new()
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("prost-build: {e}"));
}

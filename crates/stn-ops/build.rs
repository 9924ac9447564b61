//! Compiles the CUDA kernels' source as host C++ (see `cuda/stn_kernels.cu`): the tests run the
//! same kernel bodies on the CPU and compare them with the CPU ops, without a GPU.
fn main() {
    println!("cargo:rerun-if-changed=cuda/stn_kernels.cu");
    cc::Build::new()
        .cpp(true)
        .flag("-xc++")
        .flag_if_supported("-Wno-unused-function")
        .opt_level(2)
        .file("cuda/stn_kernels.cu")
        .compile("stn_kernels_host");
}

//! The CUDA kernels (`cuda/stn_kernels.cu`) compiled for the host by `build.rs`: each kernel's
//! grid-stride loop runs sequentially. Only the tests use these, to check the kernels' index
//! arithmetic, bounds handling and accumulation against the CPU ops without a GPU.
#![allow(missing_docs, clippy::too_many_arguments)]

use std::os::raw::{c_int, c_long};

extern "C" {
    pub fn affine_grid_fwd(
        theta: *const f32,
        grid: *mut f32,
        n: c_long,
        h: c_long,
        w: c_long,
        align_corners: c_int,
    );
    pub fn affine_grid_bwd(
        grad_grid: *const f32,
        grad_theta: *mut f32,
        n: c_long,
        h: c_long,
        w: c_long,
        align_corners: c_int,
    );
    pub fn grid_sample_fwd(
        input: *const f32,
        grid: *const f32,
        out: *mut f32,
        n: c_long,
        c: c_long,
        h: c_long,
        w: c_long,
        p: c_long,
        padding: c_int,
        align_corners: c_int,
        mode: c_int,
    );
    pub fn grid_sample_bwd(
        input: *const f32,
        grid: *const f32,
        grad_out: *const f32,
        grad_input: *mut f32,
        grad_grid: *mut f32,
        n: c_long,
        c: c_long,
        h: c_long,
        w: c_long,
        p: c_long,
        flags: c_int,
    );
    pub fn projective_grid_fwd(
        h: *const f32,
        grid: *mut f32,
        n: c_long,
        hh: c_long,
        w: c_long,
        align_corners: c_int,
    );
    pub fn projective_grid_bwd(
        h: *const f32,
        grad_grid: *const f32,
        grad_h: *mut f32,
        n: c_long,
        hh: c_long,
        w: c_long,
        align_corners: c_int,
    );
    pub fn tps_grid_fwd(
        points: *const f32,
        matrix: *const f32,
        grid: *mut f32,
        n: c_long,
        k: c_long,
        p: c_long,
    );
    pub fn tps_grid_bwd(
        matrix: *const f32,
        grad_grid: *const f32,
        grad_points: *mut f32,
        n: c_long,
        k: c_long,
        p: c_long,
    );
    pub fn conv2d_fwd(
        x: *const f32,
        wt: *const f32,
        bias: *const f32,
        out: *mut f32,
        n: c_long,
        c: c_long,
        h: c_long,
        w: c_long,
        o: c_long,
        kh: c_long,
        kw: c_long,
    );
    pub fn conv2d_bwd_input(
        wt: *const f32,
        grad_out: *const f32,
        grad_x: *mut f32,
        n: c_long,
        c: c_long,
        h: c_long,
        w: c_long,
        o: c_long,
        kh: c_long,
        kw: c_long,
    );
    pub fn conv2d_bwd_weight(
        x: *const f32,
        grad_out: *const f32,
        grad_w: *mut f32,
        grad_b: *mut f32,
        n: c_long,
        c: c_long,
        h: c_long,
        w: c_long,
        o: c_long,
        kh: c_long,
        kw: c_long,
        want: c_int,
    );
    pub fn max_pool2d_fwd(
        x: *const f32,
        out: *mut f32,
        planes: c_long,
        h: c_long,
        w: c_long,
        k: c_long,
        s: c_long,
    );
    pub fn max_pool2d_bwd(
        x: *const f32,
        grad_out: *const f32,
        grad_x: *mut f32,
        planes: c_long,
        h: c_long,
        w: c_long,
        k: c_long,
        s: c_long,
    );
}

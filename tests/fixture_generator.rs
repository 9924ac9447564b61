//! `scripts/make_fixtures.py` is what made `../shared/fixtures`: recomputed from their stored
//! inputs with PyTorch, every output and gradient comes out again (1e-12 in float64); fresh
//! fixtures it writes check out too.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn python() -> String {
    std::env::var("STN_PYTHON").expect("STN_PYTHON: a Python with torch (scripts/test.sh sets it)")
}

fn script(args: &[&str]) -> std::process::Output {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Command::new(python())
        .arg(repo.join("scripts/make_fixtures.py"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_generator_reproduces_the_shared_fixtures() {
    let shared = common::shared_dir().join("fixtures");
    let o = script(&["--check", shared.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("reproduced"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let o = script(&["--out", d, "--check", d]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "grid_sample_torch.json",
        "conv_pool_torch.json",
        "seed_net_torch.json",
    ] {
        assert!(dir.path().join(f).is_file(), "{f}");
    }
}

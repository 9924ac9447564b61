//! stn-train: trains a spatial-transformer network (the seed's by default, or any model spec) on
//! MNIST.

use std::fs::OpenOptions;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use stn_data::{
    contact_sheet_png, distort_split, side_by_side_with_lines_png, DataDir, Distortion, Mnist,
    MNIST_MEAN, MNIST_STD,
};
use stn_model::{
    evaluate, predict, Arch, Batch, Checkpoint, Network, Optimizer, OptimizerKind, Params, Pixels,
    TrainDevice, TrainError, TrainOptions, Trainer,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Train a spatial-transformer network on MNIST: by default the seed network of PyTorch's
/// spatial-transformer tutorial (an affine STN in front of a LeNet classifier) with its recipe, or
/// any network described by a model spec (--spec; --print-spec seed gives a file to start from).
///
/// The data is read from --data, else $STN_DATA, else data/mnist; missing files are downloaded
/// from the usual MNIST mirrors and verified (SHA-256 of the published files) unless --offline.
/// A checkpoint (safetensors, PyTorch parameter names) is written atomically after every epoch;
/// --resume continues from it bit for bit.
#[derive(Parser, Debug)]
#[command(version = stn::version())]
struct Args {
    /// The data: the four MNIST IDX files (gzipped or raw), another IDX set (--dataset idx) or an
    /// image folder (DIR/train/<class>/*.png|jpg, DIR/test/<class>/*) [default: $STN_DATA, else
    /// data/mnist]
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// What --data holds: mnist (verified, downloaded when missing), idx (any MNIST-format set:
    /// Fashion-MNIST, KMNIST, EMNIST digits; not verified), image-folder (torchvision's
    /// ImageFolder layout, resized to the network's input), or auto (image-folder when DIR/train
    /// is a folder, else mnist)
    #[arg(long, default_value = "auto", value_name = "KIND")]
    dataset: stn::DatasetKind,
    /// Never download: fail if the files are not there
    #[arg(long)]
    offline: bool,
    /// Number of passes over the training set (the total, also with --resume) [0 to 1000000]
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(0..=MAX_EPOCHS))]
    epochs: u64,
    /// Images per optimiser step [1 to 60000]
    #[arg(long, default_value_t = 64, value_parser = stn::usize_in(1, 60_000))]
    batch: usize,
    /// Learning rate (0, 10000]
    #[arg(long, default_value_t = 0.01, value_parser = stn::f32_in(0.0, true, 1e4), allow_negative_numbers = true)]
    lr: f32,
    /// Optimiser: sgd (the seed's), momentum (SGD with momentum 0.9) or adam
    #[arg(long, default_value = "sgd", value_name = "NAME")]
    optimizer: OptimizerKind,
    /// Learning-rate schedule over the epochs: constant (the seed's) or cosine (from --lr down to 0
    /// at the last epoch, per epoch)
    #[arg(long, default_value = "constant", value_name = "NAME")]
    schedule: Schedule,
    /// Learning-rate factor for the localisation head (localization.*, fc_loc.*); < 1 steadies STN
    /// training, 0 freezes it [0, 100]
    #[arg(long, default_value_t = 1.0, value_name = "F", value_parser = stn::f32_in(0.0, false, 100.0), allow_negative_numbers = true)]
    loc_lr_scale: f32,
    /// Clip the gradient's global L2 norm to this value (0: off, the seed's recipe) [0, 1e6]
    #[arg(long, default_value_t = 0.0, value_name = "NORM", value_parser = stn::f32_in(0.0, false, 1e6), allow_negative_numbers = true)]
    clip: f32,
    /// Seed of every random choice (initialisation, shuffling, dropout, distortions)
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Train on the first N training images only (0: all)
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: usize,
    /// Worker threads for the CPU kernels (0: all cores; more than the cores is lowered to them)
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Distortion of train and test digits, the STN paper's: none, r (rotated), rts (rotated,
    /// translated, scaled on 42×42), t (translated on 60×60), p (projective) or e (elastic: a
    /// random thin-plate spline). On a larger canvas the STN samples 28×28 for the classifier
    #[arg(long, default_value = "none", value_name = "KIND")]
    distort: Distortion,
    /// With --distort: draw the training set's distortions anew every epoch (seeded by --seed and
    /// the epoch, so runs and resumes repeat), as the STN paper's distortions made on the fly; the
    /// test set stays fixed
    #[arg(long)]
    fresh_distortions: bool,
    /// Random 6×6 clutter pieces per distorted digit [0 to 32]
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=32))]
    clutter: u64,
    /// The classifier alone on the input canvas, without the spatial transformer (the baseline)
    #[arg(long)]
    no_stn: bool,
    /// The network: a preset (seed, seed-no-stn, rts, rts-no-stn, t, t-no-stn, speedrun; the paper's
    /// paper-cnn, paper-st-affine, paper-st-projective, paper-st-tps, each with -42 for RTS; see
    /// --print-spec) or a model-spec file (JSON or TOML) [default: the preset of --distort and
    /// --no-stn, `seed` without them]
    #[arg(long, value_name = "PRESET|FILE", conflicts_with = "no_stn")]
    spec: Option<String>,
    /// Print a preset's model spec (TOML) to start a spec file from, and exit
    #[arg(long, value_name = "PRESET")]
    print_spec: Option<String>,
    /// Checkpoint to write (safetensors), after every epoch
    #[arg(long, value_name = "PATH", default_value = "models/stn.safetensors")]
    out: PathBuf,
    /// Continue from the checkpoint at --out up to --epochs, with the recipe stored in it (an option
    /// that contradicts the checkpoint's recipe is an error, unless --override-recipe)
    #[arg(long)]
    resume: bool,
    /// With --resume: use the recipe options given here instead of the checkpoint's (the run is
    /// then no longer bit-identical to an uninterrupted one)
    #[arg(long, requires = "resume")]
    override_recipe: bool,
    /// Replace an existing checkpoint at --out with a new run (without it, stn-train refuses to
    /// start over an existing --out)
    #[arg(long, conflicts_with = "resume")]
    force: bool,
    /// Start from the parameters of an ONNX model (stn-export's, or PyTorch's export of the seed
    /// network) instead of a fresh initialisation: fine-tuning
    #[arg(long, value_name = "MODEL.onnx", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    /// Append one JSON line per epoch to this file
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// At the end, write test digits before (left) and after (right) the spatial transformer as a PNG
    #[arg(long, value_name = "FILE.png")]
    visualize: Option<PathBuf>,
    /// Write a PNG contact sheet of 64 (distorted) training digits here, to look at the data
    #[arg(long, value_name = "FILE.png")]
    contact_sheet: Option<PathBuf>,
    /// Where to train
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    device: DeviceArg,
    /// Print one JSON object with the run's figures as the last line of stdout
    #[arg(long)]
    json: bool,
}

/// A split as bytes: planar `[N, C, H, W]` images and labels.
struct Split {
    images: Vec<u8>,
    labels: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Schedule {
    Constant,
    Cosine,
}

impl Schedule {
    /// The learning-rate factor of `epoch` (1-based) out of `epochs`.
    fn factor(self, epoch: u64, epochs: u64) -> f32 {
        match self {
            Schedule::Constant => 1.0,
            Schedule::Cosine => {
                0.5 * (1.0
                    + (std::f64::consts::PI * (epoch - 1) as f64 / epochs.max(1) as f64).cos())
                    as f32
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    Cpu,
    Cuda,
}

/// A run that had reached `LEARNED` test accuracy and falls to `COLLAPSED` or below (chance is
/// 10%) has collapsed (an STN whose transform ran away): stop as on a NaN.
const COLLAPSED: f64 = 0.15;
const LEARNED: f64 = 0.5;

/// The most epochs a run may have (as a checkpoint may hold).
const MAX_EPOCHS: u64 = stn_model::MAX_EPOCHS;
/// Test images per forward of the evaluation after each epoch: 1000 at once had 40 MB of
/// activations to fault in (twice the time of the first evaluation on the project's VMs) and out
/// of cache; 250 keeps them near it. Each image's outputs are the same at any batch.
const EVAL_BATCH: usize = 250;

/// With `--resume`: the checkpoint's recipe replaces the options' defaults; an option given on the
/// command line that contradicts it is an error, unless `--override-recipe` (then a warning: the
/// run is no longer bit-identical). Options that set the network (--distort, --no-stn) cannot be
/// overridden.
fn take_recipe(args: &mut Args, m: &clap::ArgMatches, ck: &Checkpoint) -> anyhow::Result<()> {
    let given = |id: &str| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
    let run = &ck.run;
    let stored: Vec<(&str, String)> = vec![
        ("batch", run["batch"].to_string()),
        ("lr", ck.optimizer.lr.to_string()),
        (
            "optimizer",
            format!("{:?}", ck.optimizer.kind).to_lowercase(),
        ),
        (
            "schedule",
            run["schedule"].as_str().unwrap_or("constant").to_string(),
        ),
        ("loc_lr_scale", ck.optimizer.loc_lr_scale.to_string()),
        (
            "clip",
            run["clip"]
                .as_f64()
                .map_or("0".into(), |c| (c as f32).to_string()),
        ),
        ("seed", run["seed"].to_string()),
        ("limit", run["limit"].to_string()),
        (
            "distort",
            run["distort"].as_str().unwrap_or("none").to_string(),
        ),
        ("clutter", run["clutter"].to_string()),
        (
            "fresh_distortions",
            run["fresh_distortions"]
                .as_bool()
                .unwrap_or(false)
                .to_string(),
        ),
        (
            "no_stn",
            (!ck.params.net.spec().transform.is_some()).to_string(),
        ),
    ];
    let current = |args: &Args, id: &str| -> String {
        match id {
            "batch" => args.batch.to_string(),
            "lr" => args.lr.to_string(),
            "optimizer" => format!("{:?}", args.optimizer).to_lowercase(),
            "schedule" => format!("{:?}", args.schedule).to_lowercase(),
            "loc_lr_scale" => args.loc_lr_scale.to_string(),
            "clip" => args.clip.to_string(),
            "seed" => args.seed.to_string(),
            "limit" => args.limit.to_string(),
            "distort" => format!("{:?}", args.distort).to_lowercase(),
            "clutter" => args.clutter.to_string(),
            "fresh_distortions" => args.fresh_distortions.to_string(),
            _ => args.no_stn.to_string(),
        }
    };
    let mut overridden = Vec::new();
    for (id, want) in stored {
        let have = current(args, id);
        if have == want {
            continue;
        }
        let flag = format!("--{}", id.replace('_', "-"));
        if given(id) {
            if matches!(id, "distort" | "no_stn") {
                bail!(
                    "--resume: {} was trained with {flag} {want}, these options say {have}: that is another network (drop {flag}, or train it with its own --out)",
                    args.out.display()
                );
            }
            if !args.override_recipe {
                bail!(
                    "--resume: {} was trained with {flag} {want}, these options say {have}; drop {flag} to resume bit for bit, or add --override-recipe to continue with {have}",
                    args.out.display()
                );
            }
            overridden.push(format!("{flag} {have} (was {want})"));
            continue;
        }
        // Not given: take the checkpoint's value.
        let bad = || {
            anyhow::anyhow!(
                "--resume: {}: the stored {flag} {want:?} is not valid",
                args.out.display()
            )
        };
        match id {
            "batch" => args.batch = want.parse().map_err(|_| bad())?,
            "lr" => args.lr = want.parse().map_err(|_| bad())?,
            "optimizer" => args.optimizer = want.parse::<OptimizerKind>().map_err(|_| bad())?,
            "schedule" => {
                args.schedule = <Schedule as ValueEnum>::from_str(&want, true).map_err(|_| bad())?
            }
            "loc_lr_scale" => args.loc_lr_scale = want.parse().map_err(|_| bad())?,
            "clip" => args.clip = want.parse().map_err(|_| bad())?,
            "seed" => args.seed = want.parse().map_err(|_| bad())?,
            "limit" => args.limit = want.parse().map_err(|_| bad())?,
            "distort" => args.distort = want.parse().map_err(|_: String| bad())?,
            "clutter" => args.clutter = want.parse().map_err(|_| bad())?,
            "fresh_distortions" => args.fresh_distortions = want == "true",
            _ => args.no_stn = want == "true",
        }
    }
    if !overridden.is_empty() {
        eprintln!(
            "warning: --override-recipe: continuing with {}; the run is no longer bit-identical to an uninterrupted one",
            overridden.join(", ")
        );
    }
    Ok(())
}

/// Fails early, before any work, if `path` cannot be written: its directory is created and a temp
/// file is made and removed there.
fn check_writable(path: &Path, what: &str) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{what} {}: cannot create {}", path.display(), dir.display()))?;
    tempfile::NamedTempFile::new_in(dir).with_context(|| {
        format!(
            "{what} {}: directory {} is not writable",
            path.display(),
            dir.display()
        )
    })?;
    if path.is_dir() {
        bail!("{what} {}: is a directory", path.display());
    }
    Ok(())
}

/// Normalised grey pixels back to bytes, with the network's normalisation.
fn denormalize(v: &[f32], plane: usize, net: &Network) -> Vec<u8> {
    let c = net.input_dims()[0];
    let (mean, std) = net
        .spec()
        .normalization()
        .map_or((vec![MNIST_MEAN; c], vec![MNIST_STD; c]), |(m, s)| {
            (m.to_vec(), s.to_vec())
        });
    stn::denormalize_planes(v, plane, &mean, &std)
}

fn main() -> ExitCode {
    stn::run_main(|| {
        let matches = Args::command().get_matches();
        let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        if let Some(name) = &args.print_spec {
            print!("{}", stn::spec_file_text(name)?);
            return Ok(());
        }
        // The network of --spec, read before anything else (a bad spec fails at once).
        let spec_net = args.spec.as_deref().map(stn::load_spec).transpose()?;
        if args.device == DeviceArg::Cuda && !cfg!(feature = "cuda") {
            bail!(
                "--device cuda: this stn-train is built without CUDA support; build it with `--features cuda` \
                 on a machine with the CUDA toolkit (see scripts/gpu-check.sh), or use --device cpu"
            );
        }
        // Before anything is read or written: which files are inputs, which outputs, and whether
        // an existing --out may be replaced.
        let data = DataDir::resolve(args.data.as_deref());
        let dataset = args.dataset.resolve(&data.dir, "train");
        let mut inputs: Vec<(&str, PathBuf)> = stn_data::mnist_paths(&data.dir)
            .into_iter()
            .map(|p| ("the MNIST file", p))
            .collect();
        if let Some(p) = &args.init_from {
            inputs.push(("--init-from", p.clone()));
        }
        let mut outputs: Vec<(&str, PathBuf)> = Vec::new();
        if args.resume {
            inputs.push(("--out (resumed)", args.out.clone()));
        } else {
            outputs.push(("--out", args.out.clone()));
        }
        for (p, what) in [
            (&args.metrics, "--metrics"),
            (&args.visualize, "--visualize"),
            (&args.contact_sheet, "--contact-sheet"),
        ] {
            if let Some(p) = p {
                outputs.push((what, p.clone()));
            }
        }
        stn::check_outputs(&inputs, &outputs)?;
        if dataset == stn::DatasetKind::ImageFolder {
            // An output inside the folder's splits would overwrite (or become) a training image.
            for (what, p) in &outputs {
                for split in ["train", "test"] {
                    let root = data.dir.join(split);
                    if stn::is_inside(p, &root) {
                        bail!(
                            "{what} {}: inside the image folder's {split}/ ({}); write it elsewhere",
                            p.display(),
                            root.display()
                        );
                    }
                }
            }
        }
        if !args.resume && !args.force && args.epochs > 0 && args.out.exists() {
            bail!(
                "--out {} already exists: add --resume to continue that run, or --force to replace it with a new one (or choose another --out)",
                args.out.display()
            );
        }
        let resumed = if args.resume {
            if !args.out.exists() {
                bail!("--resume: no checkpoint at {} (train without --resume first, or point --out at it)", args.out.display());
            }
            let ck = Checkpoint::load(&args.out).context("--resume")?;
            take_recipe(&mut args, &matches, &ck)?;
            Some(ck)
        } else {
            None
        };
        let threads = stn::clamp_threads(args.threads);
        stn::in_pool(threads, move || {
            check_writable(&args.out, "--out")?;
            for (p, what) in [
                (&args.metrics, "--metrics"),
                (&args.visualize, "--visualize"),
                (&args.contact_sheet, "--contact-sheet"),
            ] {
                if let Some(p) = p {
                    check_writable(p, what)?;
                }
            }
            // The network: --spec, else the checkpoint's (resumed), else the seed family's
            // preset for --distort and --no-stn.
            let preset: Network = Arch {
                canvas: args.distort.canvas(),
                stn: !args.no_stn,
            }
            .into();
            let mut net = match (&spec_net, &resumed) {
                // A spec without normalisation resumes with the one its first run computed.
                (Some(n), Some(ck)) if n.spec().normalization().is_none() => {
                    let mut spec = n.spec().clone();
                    let stored = ck.params.net.spec();
                    (spec.input.mean, spec.input.std) =
                        (stored.input.mean.clone(), stored.input.std.clone());
                    Network::new(spec)?
                }
                (Some(n), _) => n.clone(),
                (None, Some(ck)) => ck.params.net.clone(),
                (None, None) => preset,
            };
            if let Some(ck) = &resumed {
                if ck.params.net != net {
                    bail!(
                        "--resume: {} holds {}, but --spec {} is {net}: that is another network (drop --spec, or train it with its own --out)",
                        args.out.display(),
                        ck.params.net,
                        args.spec.as_deref().unwrap_or("")
                    );
                }
            }

            // Data: loaded and verified before any training.
            let t0 = Instant::now();
            let image_folder = dataset == stn::DatasetKind::ImageFolder;
            if image_folder && args.distort != Distortion::None {
                bail!("--distort makes distorted MNIST; it does not apply to an image folder (--dataset image-folder)");
            }
            if args.fresh_distortions && args.distort == Distortion::None {
                bail!("--fresh-distortions needs --distort r, rts, t, p or e");
            }
            let mut plain_train = None;
            // An image folder's class names, kept in the checkpoint (and the ONNX file) so that
            // inference names classes and refuses a folder whose classes differ.
            let stored_names: Option<Vec<String>> = resumed
                .as_ref()
                .and_then(|ck| serde_json::from_value(ck.run["class_names"].clone()).ok());
            let mut class_names: Option<Vec<String>> = None;
            let (mut train, test, classes): (Split, Split, usize) = if image_folder {
                let folder = stn_data::ImageFolder::load(&data.dir, net.input_dims())?;
                let k = folder.classes.len();
                if let Some(stored) = stored_names.as_ref().filter(|s| **s != folder.classes) {
                    bail!(
                        "--resume: {} was trained on the classes {stored:?}, {} has {:?}",
                        args.out.display(),
                        data.dir.display(),
                        folder.classes
                    );
                }
                class_names = Some(folder.classes.clone());
                if spec_net.is_none() && resumed.is_none() && net.plan().classes != k {
                    // The seed network for the folder's classes, normalised with the folder's
                    // own statistics (MNIST's would be wrong for photos).
                    let mut spec = net.spec().clone();
                    spec.classes = k;
                    (spec.input.mean, spec.input.std) = (None, None);
                    if let Some(stn_model::Layer::Linear { out }) = spec.classifier.last_mut() {
                        *out = k;
                    }
                    net = Network::new(spec)?;
                    eprintln!("the seed network with {k} classes for the image folder (--spec gives another)");
                }
                let mut tr = folder.train;
                tr.truncate(args.limit);
                eprintln!(
                    "image folder {}: {} training and {} test images of {} classes ({}), as {}×{}×{}, ready in {:.2}s",
                    data.dir.display(),
                    tr.len(),
                    folder.test.len(),
                    k,
                    folder.classes.join(", "),
                    tr.dims[0],
                    tr.dims[1],
                    tr.dims[2],
                    t0.elapsed().as_secs_f64()
                );
                (
                    Split {
                        images: tr.images,
                        labels: tr.labels,
                    },
                    Split {
                        images: folder.test.images,
                        labels: folder.test.labels,
                    },
                    k,
                )
            } else {
                let mut mnist = if dataset == stn::DatasetKind::Idx {
                    Mnist::load_idx(&data.dir)?
                } else {
                    Mnist::load(&data, args.offline)?
                };
                mnist.train.truncate(args.limit);
                // The undistorted training set, for drawing new distortions every epoch.
                plain_train = args.fresh_distortions.then(|| mnist.train.clone());
                if args.distort != Distortion::None {
                    mnist.train =
                        distort_split(&mnist.train, args.distort, args.clutter as usize, args.seed);
                    mnist.test = distort_split(
                        &mnist.test,
                        args.distort,
                        args.clutter as usize,
                        args.seed ^ 0x7e57,
                    );
                }
                let (h, w) = (mnist.train.rows, mnist.train.cols);
                if net.input_dims() != [1, h, w] {
                    let [c, nh, nw] = net.input_dims();
                    bail!(
                        "--spec {}: the network takes {c}×{nh}×{nw} images, the data is 1×{h}×{w} ({}{}); \
                         make the spec's input match it",
                        args.spec.as_deref().unwrap_or(""),
                        if dataset == stn::DatasetKind::Idx { "IDX files" } else { "MNIST" },
                        match args.distort {
                            Distortion::None => String::new(),
                            d => format!(" with --distort {}", format!("{d:?}").to_lowercase()),
                        }
                    );
                }
                let max_label = mnist
                    .train
                    .labels
                    .iter()
                    .chain(&mnist.test.labels)
                    .max()
                    .copied()
                    .unwrap_or(0);
                eprintln!(
                    "{} from {}: {} training and {} test images of {h}×{w}, ready in {:.2}s",
                    if dataset == stn::DatasetKind::Idx {
                        "IDX set"
                    } else {
                        "MNIST"
                    },
                    data.dir.display(),
                    mnist.train.len(),
                    mnist.test.len(),
                    t0.elapsed().as_secs_f64()
                );
                let (tr, te) = (mnist.train, mnist.test);
                (
                    Split {
                        images: tr.images,
                        labels: tr.labels,
                    },
                    Split {
                        images: te.images,
                        labels: te.labels,
                    },
                    max_label as usize + 1,
                )
            };
            if classes > net.plan().classes {
                bail!(
                    "the data has {classes} classes, the network {}: set classes (and the classifier's last linear out) to {classes} in the spec",
                    net.plan().classes
                );
            }
            let dims = net.input_dims();
            let [channels, h, w] = dims;
            let plane = h * w;
            if let Some(path) = &args.contact_sheet {
                let imgs: Vec<&[u8]> = train.images.chunks(channels * plane).take(64).collect();
                contact_sheet_png(&imgs, dims, 8, path)
                    .with_context(|| format!("--contact-sheet {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            if args.epochs == 0 {
                eprintln!("--epochs 0: the data is loaded and verified; nothing to train");
                return Ok(());
            }
            // The spec's normalisation; a spec without one gets the training images' statistics,
            // which the checkpoint then carries.
            if net.spec().normalization().is_none() {
                let (mean, std) = stn_data::channel_stats(&train.images, channels, plane);
                let mut spec = net.spec().clone();
                (spec.input.mean, spec.input.std) = (Some(mean.clone()), Some(std.clone()));
                net = Network::new(spec)?;
                eprintln!("normalisation from the training images: mean {mean:?}, std {std:?}");
            }
            let (mean, std) = {
                let (m, s) = net.spec().normalization().expect("set above");
                (m.to_vec(), s.to_vec())
            };
            // The images stay bytes: the trainer normalises each batch as it gathers it.
            let mut train_x = std::mem::take(&mut train.images);
            let (test_px, test_labels) = (test.images, test.labels);
            let test = Batch {
                images: Pixels::Bytes {
                    pixels: &test_px,
                    mean: &mean,
                    std: &std,
                },
                labels: &test_labels,
                dims,
            };

            let device = match args.device {
                DeviceArg::Cpu => TrainDevice::Cpu,
                DeviceArg::Cuda => TrainDevice::Cuda(0),
            };
            let opts = TrainOptions {
                batch: args.batch,
                seed: args.seed,
                clip: (args.clip > 0.0).then_some(args.clip),
            };
            let (mut trainer, start, mut history) = match resumed {
                Some(ck) => {
                    let history = ck.run["history"].as_array().cloned().unwrap_or_default();
                    eprintln!(
                        "resuming from {} after epoch {}",
                        args.out.display(),
                        ck.epoch
                    );
                    let mut optimizer = ck.optimizer;
                    if optimizer.kind != args.optimizer {
                        // --override-recipe with another optimiser: its state starts afresh.
                        optimizer =
                            Optimizer::new(args.optimizer, args.lr, args.loc_lr_scale, &ck.params);
                    }
                    (optimizer.lr, optimizer.loc_lr_scale) = (args.lr, args.loc_lr_scale);
                    (
                        Trainer::new(ck.params, optimizer, opts),
                        ck.epoch + 1,
                        history,
                    )
                }
                None => {
                    let params = match &args.init_from {
                        Some(path) => {
                            let bytes = stn_data::read_regular(path, stn_onnx::MAX_MODEL_BYTES)
                                .context("--init-from")?;
                            let m = stn_onnx::read_model(&bytes, &path.display().to_string())
                                .context("--init-from")?;
                            if m.params.net != net {
                                bail!(
                                "--init-from {}: the model is {}, but these options ask for {net}",
                                path.display(),
                                m.params.net
                            );
                            }
                            eprintln!("starting from the parameters of {}", path.display());
                            m.params
                        }
                        None => Params::init(net.clone(), args.seed),
                    };
                    let opt = Optimizer::new(args.optimizer, args.lr, args.loc_lr_scale, &params);
                    (
                        Trainer::with_device(params, opt, opts, device)?,
                        1,
                        Vec::new(),
                    )
                }
            };
            eprintln!(
                "{net}: {} parameters, optimizer {:?}, lr {}",
                trainer.params.count(),
                trainer.optimizer.kind,
                trainer.optimizer.lr
            );

            let n = train.labels.len();
            let batches = n.div_ceil(args.batch) as u64;
            let bar = if std::io::stderr().is_terminal() && !args.json {
                let b = ProgressBar::new(batches * args.epochs.saturating_sub(start - 1));
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {pos}/{len} batches, {per_sec}, ETA {eta}",
                    )
                    .expect("static template")
                    .progress_chars("=> "),
                );
                b
            } else {
                ProgressBar::hidden()
            };
            let mut train_s = 0.0;
            let mut trained_images = 0usize;
            let mut last_eval = None;
            for epoch in start..=args.epochs {
                bar.set_message(format!("epoch {epoch}/{}", args.epochs));
                if let Some(plain) = plain_train.as_ref().filter(|_| epoch > 1) {
                    // Epoch 1 trains on the distortions drawn above (seed), epoch e on seed ⊕ e.
                    let seed = args.seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    // The last epoch's images go first: two copies of the set at once are
                    // twice the peak memory on large canvases.
                    drop(std::mem::take(&mut train_x));
                    train_x =
                        distort_split(plain, args.distort, args.clutter as usize, seed).images;
                }
                let train = Batch {
                    images: Pixels::Bytes {
                        pixels: &train_x,
                        mean: &mean,
                        std: &std,
                    },
                    labels: &train.labels,
                    dims,
                };
                trainer.optimizer.schedule = args.schedule.factor(epoch, args.epochs);
                let stats = trainer
                    .train_epoch(&train, epoch, |b, done, loss| {
                        bar.inc(1);
                        if b % 100 == 0 {
                            bar.suspend(|| {
                                println!("Train Epoch: {epoch} [{done}/{n}] Loss: {loss:.6}")
                            });
                        }
                    })
                    .map_err(|e| match e {
                        TrainError::NonFinite { .. } => {
                            anyhow::anyhow!("{e} ({})", args.out.display())
                        }
                        other => other.into(),
                    })?;
                train_s += stats.seconds;
                trained_images += stats.images;
                let ev = evaluate(&trainer.params, &test, EVAL_BATCH)?;
                bar.suspend(|| {
                    println!(
                        "Test set: Average loss: {:.4}, Accuracy: {}/{} ({:.2}%)",
                        ev.loss,
                        ev.correct,
                        ev.images,
                        100.0 * ev.accuracy()
                    )
                });
                let best = history
                    .iter()
                    .filter_map(|h| h["test_accuracy"].as_f64())
                    .fold(0.0, f64::max);
                let advice = if args.resume {
                    "resume from an earlier checkpoint with --override-recipe and a smaller --lr or --loc-lr-scale, or --clip"
                } else {
                    "try a smaller --lr or --loc-lr-scale, --clip, or --optimizer adam"
                };
                if let Some(name) = trainer.params.non_finite().first() {
                    bail!(
                        "training diverged at epoch {epoch}: parameter {name} is NaN or infinite although the loss is finite; \
                         {} is kept as it was. {advice}",
                        args.out.display()
                    );
                }
                if !ev.loss.is_finite() || (ev.accuracy() <= COLLAPSED && best >= LEARNED) {
                    bail!(
                    "training collapsed at epoch {epoch}: test accuracy {:.2}% after {:.2}% (chance is 10%); \
                     {} is kept as it was. {advice}",
                    100.0 * ev.accuracy(),
                    100.0 * best,
                    args.out.display()
                );
                }
                let line = serde_json::json!({
                    "epoch": epoch,
                    "train_loss": stats.mean_loss,
                    "train_img_per_s": stats.images as f64 / stats.seconds,
                    "test_loss": ev.loss,
                    "test_accuracy": ev.accuracy(),
                    "seconds": stats.seconds,
                });
                history.push(line.clone());
                let run = serde_json::json!({
                    "seed": args.seed, "batch": args.batch, "distort": format!("{:?}", args.distort).to_lowercase(),
                    "clutter": args.clutter, "fresh_distortions": args.fresh_distortions, "limit": args.limit, "clip": args.clip,
                    "schedule": format!("{:?}", args.schedule).to_lowercase(), "history": history,
                });
                let mut run = run;
                if let Some(names) = &class_names {
                    run["class_names"] = serde_json::json!(names);
                }
                let ck = Checkpoint {
                    params: trainer.params.clone(),
                    optimizer: trainer.optimizer.clone(),
                    epoch,
                    run,
                };
                ck.save(&args.out).context("--out")?;
                if let Some(m) = &args.metrics {
                    let mut f = OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(m)
                        .with_context(|| format!("--metrics {}", m.display()))?;
                    writeln!(f, "{line}").with_context(|| format!("--metrics {}", m.display()))?;
                }
                last_eval = Some(ev);
            }
            bar.finish_and_clear();
            let ev = match last_eval {
                Some(ev) => ev,
                None => {
                    eprintln!(
                        "{} already has {} epochs: nothing to train",
                        args.out.display(),
                        start - 1
                    );
                    evaluate(&trainer.params, &test, EVAL_BATCH)?
                }
            };
            if trained_images > 0 {
                eprintln!("wrote {}", args.out.display());
            }

            if let Some(path) = &args.visualize {
                let Some([ho, wo]) = net.spec().transform.output() else {
                    bail!("--visualize needs the spatial transformer (drop --no-stn)");
                };
                let k = test.len().min(32);
                let (_, _, warped) = predict(&trainer.params, &test, 0, k)?;
                let before = &test_px[..k * channels * plane];
                let after: Vec<u8> = denormalize(&warped, ho * wo, &net);
                let l: Vec<&[u8]> = before.chunks(channels * plane).collect();
                let r: Vec<&[u8]> = after.chunks(channels * ho * wo).collect();
                // The sampling grid over each input, in red: where the transformer looked.
                let lines = stn::sampling_lines(
                    &trainer.params,
                    &stn_data::normalize_planes(before, plane, &mean, &std),
                    k,
                );
                side_by_side_with_lines_png(&l, dims, &lines, &r, [channels, ho, wo], 8, path)
                    .with_context(|| format!("--visualize {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }

            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "epochs": args.epochs,
                        "train_images": n,
                        "trained_images": trained_images,
                        "train_seconds": train_s,
                        "train_img_per_s": if train_s > 0.0 { trained_images as f64 / train_s } else { 0.0 },
                        "test_loss": ev.loss,
                        "test_accuracy": ev.accuracy(),
                        "test_correct": ev.correct,
                        "threads": rayon::current_num_threads(),
                        "isa": stn_ops::isa::level().name(),
                        "peak_rss_mb": stn::peak_rss_mb(),
                        "checkpoint": args.out,
                    })
                );
            }
            Ok(())
        })
    })
}

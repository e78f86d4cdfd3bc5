//! A structure-aware fuzzing harness for every loader, run as an ordinary test.
//!
//! ```text
//! cargo test --release --test fuzz -- --nocapture                 # the default budget, counts printed
//! PATCHGRAPH_FUZZ_CASES=20 cargo test --release --test fuzz       # 20 times as many cases per loader
//! PATCHGRAPH_FUZZ_SEED=7 cargo test --release --test fuzz         # another master seed (default 0)
//! PATCHGRAPH_FUZZ_REPRO=npz:1234 cargo test --release --test fuzz -- --nocapture   # one case again
//! ```
//!
//! Each loader gets [`CASES`] inputs (times `PATCHGRAPH_FUZZ_CASES`), made from real seeds (the
//! fixtures in `tests/fixtures/`, `data/mnist5k/`, `data/images/`, and small files built here) by
//! mutations that know the format: truncations at random and at structural boundaries, bit flips,
//! byte overwrites, edits of header fields (a safetensors JSON header's shapes, dtypes and
//! offsets; an npy header's shape, descr and fortran_order; zip local and central header sizes;
//! IDX dimensions; a PNG's IHDR width and height with the CRC fixed up; a JPEG's frame size) and
//! huge sizes. PyTorch checkpoints (`.pth`: zip, legacy and TorchScript) get the zip mutations,
//! storages shrunk or grown, entries removed or moved, the legacy format's u64 element counts,
//! and pickle-aware edits of the object pickle (`data.pkl`), written back into a valid zip
//! (Stored) so that they reach the pickle machine: opcodes overwritten (GLOBAL `os system`, INST,
//! OBJ, REDUCE among them), refused globals inserted, length fields made huge, the pickle cut
//! short, MARKs duplicated, storage keys, classes and sizes and the tensors' offsets, sizes and
//! strides changed; the same pickles also go to the pickle machine (`unpickle`) alone. Every case
//! draws from its own `ChaCha8Rng`, seeded from a master `ChaCha8Rng` (seed 0), and its seed is
//! printed with any failure so that `PATCHGRAPH_FUZZ_REPRO` reruns it. A few loaders (IDX's gzip
//! bomb, `.pth` and pickle bombs) begin with fixed cases that random mutations do not build.
//!
//! For every case it asserts:
//!
//! - **no panic**: the call runs under `catch_unwind`; a panic is a failure naming the case;
//! - **no abort, no allocation beyond [`ALLOC_BOUND`] (1 GiB)**: the global allocator of this
//!   test binary wraps `System`, records the largest single request and *refuses* (returns
//!   null, after printing the size and the case to stderr) any single request above 1 GiB.
//!   A refused request aborts the process (`handle_alloc_error`), so the last line on stderr
//!   names the culprit; after each case the largest request is checked to be below the bound
//!   (and, for the gzip bomb, below 1 MiB; for the pickle machine, the total requested while
//!   reading is at most linear in the input);
//! - **no hang, no abort in the bombs**: the fixed cases that a faulty loader turns into a
//!   hang or an abort (a stack overflow, a refused allocation) run in a child process of this
//!   test binary (the ignored test `fuzz_child`), killed after 3 s;
//! - **typed errors**: every failure is a `patchgraph::Error` with a non-empty `Display`;
//! - **only valid loads succeed**: shapes' products equal the data lengths, labels are below
//!   the class count (and image-folder labels name the right class), graph sources are below
//!   the node count, decoded images have a nonzero size within the limits and values in
//!   `[0, 1]`; a checkpoint's pickle holds only opcodes the restricted machine reads, the state
//!   dict it read holds no refused global (`os.system`, `eval`, ...) and yields no more tensors
//!   than the pickle has dict entries, and a pickle tree's references stay within it. Where the
//!   validity of an input is simple to state (IDX, CIFAR-10, image folders, edge lists), an
//!   independent oracle decides whether it must load, and the loader must agree.
//!
//! At the end it prints, per loader, the cases, the successes, the errors by variant and the
//! largest allocation, then fails listing every failure if there was any.

use patchgraph::Error;
use patchgraph::checkpoint::pickle::{Node, Pickle, unpickle, unpickle_prefix};
use patchgraph::checkpoint::{Pth, PthFormat, TensorMap, read_npy, read_pth};
use patchgraph::data::{CIFAR10_RECORD_BYTES, Split, load_cifar10, load_dataset, load_image_folder_split, load_mnist};
use patchgraph::data::{load_mnist_with_classes, read_idx_bytes};
use patchgraph::graph::GraphSpec;
use patchgraph::image::{Channels, load_image_with};
use patchgraph::limits::{MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, MAX_TENSOR_ELEMENTS, MAX_TOKENS};
use patchgraph::nn::{Init, PatchGat, PatchGatConfig, Vig, VigConfig, Vit, VitConfig};
use patchgraph::train::AdamW;
use patchgraph::{Graph, Matrix};
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

// ---------------------------------------------------------------------------------------------
// The allocator guard.

/// The largest single allocation any case may request: 1 GiB. Above it the request is refused.
const ALLOC_BOUND: usize = 1 << 30;

/// The largest single request since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Every byte requested so far (never reset: cases read it before and after).
static TOTAL: AtomicUsize = AtomicUsize::new(0);

/// The current case's description, in a fixed buffer so that the allocator can print it
/// without allocating.
static CASE: Mutex<([u8; 400], usize)> = Mutex::new(([0; 400], 0));

struct Guard;

impl Guard {
    /// Records `size`; true (after printing the size and the case) if it must be refused.
    fn refuse(size: usize) -> bool {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        TOTAL.fetch_add(size, Ordering::Relaxed);
        if size <= ALLOC_BOUND {
            return false;
        }
        let mut err = std::io::stderr();
        let _ = write!(err, "\nfuzz: REFUSED an allocation of {size} bytes (bound {ALLOC_BOUND}) in case: ");
        if let Ok(case) = CASE.try_lock() {
            let _ = err.write_all(&case.0[..case.1]);
        }
        let _ = err.write_all(b"\n");
        true
    }
}

unsafe impl GlobalAlloc for Guard {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if Guard::refuse(layout.size()) { std::ptr::null_mut() } else { unsafe { System.alloc(layout) } }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Guard::refuse(layout.size()) { std::ptr::null_mut() } else { unsafe { System.alloc_zeroed(layout) } }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if Guard::refuse(new_size) { std::ptr::null_mut() } else { unsafe { System.realloc(ptr, layout, new_size) } }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Guard = Guard;

fn set_case(desc: &str) {
    let mut case = CASE.lock().unwrap_or_else(|e| e.into_inner());
    let n = desc.len().min(case.0.len());
    case.0[..n].copy_from_slice(&desc.as_bytes()[..n]);
    case.1 = n;
}

// ---------------------------------------------------------------------------------------------
// Budget and bookkeeping.

/// Cases per loader at `PATCHGRAPH_FUZZ_CASES=1` (the default): thousands in all, well under a
/// minute in release on two cores.
const CASES: &[(&str, usize)] = &[
    ("safetensors", 1500),
    ("npy", 1500),
    ("npz", 1000),
    ("pth", 1000),
    ("pickle", 1500),
    ("idx", 1500),
    ("mnist", 300),
    ("cifar10", 300),
    ("image_folder", 120),
    ("image", 800),
    ("adamw_state", 800),
    ("vit_config", 600),
    ("patch_model_config", 600),
    ("graph_spec", 1500),
    ("edge_index", 1500),
];

/// What one case came to.
enum Verdict {
    /// Loaded, and what was loaded is valid.
    Ok,
    /// A typed error.
    Err(Error),
    /// A failure of the loader: a wrong result, a valid input refused, an invalid one accepted.
    Bad(String),
}

impl From<Result<(), Error>> for Verdict {
    fn from(r: Result<(), Error>) -> Verdict {
        match r {
            Ok(()) => Verdict::Ok,
            Err(e) => Verdict::Err(e),
        }
    }
}

/// Checks a result against an oracle: `valid` says whether it must load.
fn agree<T>(r: Result<T, Error>, valid: Result<(), String>, check: impl FnOnce(T) -> Verdict) -> Verdict {
    match (r, valid) {
        (Ok(v), Ok(())) => check(v),
        (Ok(_), Err(why)) => Verdict::Bad(format!("loaded an invalid input ({why})")),
        (Err(e), Ok(())) => Verdict::Bad(format!("refused a valid input: {e}")),
        (Err(e), Err(_)) => Verdict::Err(e),
    }
}

fn variant(e: &Error) -> &'static str {
    match e {
        Error::Shape { .. } => "Shape",
        Error::NodeOutOfRange { .. } => "NodeOutOfRange",
        Error::NonFinite { .. } => "NonFinite",
        Error::Invalid { .. } => "Invalid",
        Error::Image { .. } => "Image",
        Error::MissingTensor { .. } => "MissingTensor",
        Error::UnexpectedTensors { .. } => "UnexpectedTensors",
        Error::DType { .. } => "DType",
        Error::Io { .. } => "Io",
        Error::Format { .. } => "Format",
        Error::Checkpoint { .. } => "Checkpoint",
        Error::Draw { .. } => "Draw",
        Error::Codec { .. } => "Codec",
        Error::RefusedGlobal { .. } => "RefusedGlobal",
        _ => "other",
    }
}

#[derive(Default)]
struct Stats {
    cases: usize,
    ok: usize,
    errors: BTreeMap<&'static str, usize>,
    largest: usize,
    seconds: f64,
}

struct Fuzz {
    factor: usize,
    master: u64,
    repro: Option<(String, u64)>,
    stats: Vec<(&'static str, Stats)>,
    failures: Vec<String>,
    tmp: PathBuf,
}

/// The last panic's message and location, kept by the hook installed for the run.
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

impl Fuzz {
    fn new() -> Fuzz {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let factor = env("PATCHGRAPH_FUZZ_CASES").map_or(1, |v| v.parse().expect("PATCHGRAPH_FUZZ_CASES: a number"));
        let master = env("PATCHGRAPH_FUZZ_SEED").map_or(0, |v| v.parse().expect("PATCHGRAPH_FUZZ_SEED: a number"));
        let repro = env("PATCHGRAPH_FUZZ_REPRO").map(|v| {
            let (l, s) = v.split_once(':').expect("PATCHGRAPH_FUZZ_REPRO=loader:seed");
            (l.to_string(), s.parse().expect("PATCHGRAPH_FUZZ_REPRO: the seed is a number"))
        });
        let tmp = std::env::temp_dir().join(format!("pg-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).unwrap();
        Fuzz { factor, master, repro, stats: Vec::new(), failures: Vec::new(), tmp }
    }

    /// A scratch folder for `loader`, created empty.
    fn dir(&self, loader: &str) -> PathBuf {
        let d = self.tmp.join(loader);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Runs `loader`'s cases: `case(rng)` builds one input and returns its description and the
    /// check, which is run under `catch_unwind` with the allocation record reset.
    fn run(
        &mut self,
        loader: &'static str,
        mut case: impl FnMut(&mut ChaCha8Rng) -> (String, Box<dyn FnOnce() -> Verdict>),
    ) {
        let base = CASES.iter().find(|(n, _)| *n == loader).map_or(100, |(_, c)| *c);
        let mut seeds = loader_seeds(self.master, loader, base * self.factor);
        if let Some((l, s)) = &self.repro {
            if l != loader {
                return;
            }
            seeds = vec![*s];
        }
        let start = Instant::now();
        let mut stats = Stats::default();
        for seed in seeds {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (desc, check) = case(&mut rng);
            let label = format!("{loader} seed {seed}: {desc}");
            set_case(&label);
            LARGEST.store(0, Ordering::Relaxed);
            IN_CASE.with(|c| c.set(true));
            let verdict = catch_unwind(AssertUnwindSafe(check));
            IN_CASE.with(|c| c.set(false));
            let largest = LARGEST.load(Ordering::Relaxed);
            stats.cases += 1;
            stats.largest = stats.largest.max(largest);
            let fail = |why: String| {
                format!("[{loader}] {why}\n    case: {desc}\n    repro: PATCHGRAPH_FUZZ_REPRO={loader}:{seed}")
            };
            match verdict {
                Err(_) => {
                    let msg = std::mem::take(&mut *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()));
                    self.failures.push(fail(format!("PANIC: {msg}")));
                }
                Ok(Verdict::Bad(why)) => self.failures.push(fail(why)),
                Ok(Verdict::Ok) => stats.ok += 1,
                Ok(Verdict::Err(e)) => {
                    *stats.errors.entry(variant(&e)).or_default() += 1;
                    if e.to_string().trim().is_empty() {
                        self.failures.push(fail(format!("an error with an empty message: {e:?}")));
                    }
                }
            }
            if largest > ALLOC_BOUND {
                self.failures.push(fail(format!("an allocation of {largest} bytes, above the bound")));
            }
        }
        stats.seconds = start.elapsed().as_secs_f64();
        self.stats.push((loader, stats));
    }

    fn report(&self) {
        println!("\n{:<20} {:>6} {:>6}  {:>10} {:>7}  errors by variant", "loader", "cases", "ok", "max alloc", "secs");
        for (name, s) in &self.stats {
            let errs: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!(
                "{name:<20} {:>6} {:>6}  {:>10} {:>7.2}  {}",
                s.cases,
                s.ok,
                human(s.largest),
                s.seconds,
                errs.join(", ")
            );
        }
        let total: usize = self.stats.iter().map(|(_, s)| s.cases).sum();
        println!(
            "{total} cases, {} failures (master seed {}, factor {})",
            self.failures.len(),
            self.master,
            self.factor
        );
    }
}

/// The first `n` case seeds of `loader`: each loader its own stream from the master seed, so that
/// loaders do not shift each other's cases.
fn loader_seeds(master: u64, loader: &str, n: usize) -> Vec<u64> {
    let mut master = ChaCha8Rng::seed_from_u64(master);
    master.set_stream(loader.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    (0..n).map(|_| master.next_u64()).collect()
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

// ---------------------------------------------------------------------------------------------
// Generic mutations.

/// Numbers that break size arithmetic.
const HUGE: &[u64] = &[
    0,
    1,
    2,
    255,
    65_535,
    65_536,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    &xs[rng.random_range(0..xs.len())]
}

/// One random byte-level mutation of `bytes`; `bounds` are structural offsets (header ends,
/// field positions) that truncations and overwrites favour. Returns the description.
fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>, bounds: &[usize]) -> String {
    let len = bytes.len();
    let at = |rng: &mut ChaCha8Rng| -> usize {
        if !bounds.is_empty() && rng.random_bool(0.5) {
            let b = *pick(rng, bounds) as i64 + rng.random_range(-2i64..=2);
            b.clamp(0, len as i64) as usize
        } else {
            rng.random_range(0..=len)
        }
    };
    match rng.random_range(0..9) {
        0 => {
            let cut = at(rng);
            bytes.truncate(cut);
            format!("truncate to {cut} of {len} bytes")
        }
        1 if len > 0 => {
            let flips = rng.random_range(1..=8);
            for _ in 0..flips {
                let i = rng.random_range(0..len);
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            format!("{flips} bit flips")
        }
        2 if len > 0 => {
            let i = at(rng).min(len - 1);
            let n = rng.random_range(1..=8).min(len - i);
            let v = *pick(rng, &[0u8, 0xff, 0x7f, 0x80, b'9', b'"', b'-']);
            bytes[i..i + n].fill(v);
            format!("overwrite {n} bytes at {i} with {v:#x}")
        }
        3 if len >= 8 => {
            let i = at(rng).min(len - 8);
            let v = *pick(rng, HUGE);
            let (w, be) = (*pick(rng, &[2usize, 4, 8]), rng.random_bool(0.5));
            let b = if be { v.to_be_bytes() } else { v.to_le_bytes() };
            let b = if be { &b[8 - w..] } else { &b[..w] };
            bytes[i..i + w].copy_from_slice(b);
            format!("u{} {} {v:#x} at {i}", w * 8, if be { "BE" } else { "LE" })
        }
        4 => {
            let i = at(rng);
            let n = rng.random_range(1..=16);
            let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            bytes.splice(i..i, ins);
            format!("insert {n} random bytes at {i}")
        }
        5 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=64).min(len - i);
            bytes.drain(i..i + n);
            format!("delete {n} bytes at {i}")
        }
        6 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=256).min(len - i);
            let copy = bytes[i..i + n].to_vec();
            let j = at(rng);
            bytes.splice(j..j, copy);
            format!("copy {n} bytes from {i} to {j}")
        }
        7 => {
            let n = rng.random_range(1..=64);
            bytes.extend((0..n).map(|_| rng.random::<u8>()));
            format!("append {n} random bytes")
        }
        _ if len > 0 => {
            let i = rng.random_range(0..len);
            bytes[i] = rng.random();
            format!("random byte at {i}")
        }
        _ => "unchanged (empty)".to_string(),
    }
}

/// `mutate` applied 1 to 3 times.
fn mutate_some(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>, bounds: &[usize]) -> String {
    let n = *pick(rng, &[1, 1, 1, 2, 3]);
    (0..n).map(|_| mutate(rng, bytes, bounds)).collect::<Vec<_>>().join("; ")
}

fn read(path: &str) -> Vec<u8> {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&full).unwrap_or_else(|e| panic!("fuzz seed {}: {e}", full.display()))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

// ---------------------------------------------------------------------------------------------
// Safetensors, npy, npz, and the optimiser state.

/// Splits safetensors bytes into the JSON header and the data.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Map<String, Value>, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header.as_object().unwrap().clone(), bytes[8 + n..].to_vec())
}

fn join_safetensors(header: &serde_json::Map<String, Value>, data: &[u8]) -> Vec<u8> {
    let text = serde_json::to_vec(header).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(data);
    out
}

/// One structure-aware mutation of a safetensors file (its header's fields, its length field),
/// sometimes followed by byte-level ones.
fn mutate_safetensors(rng: &mut ChaCha8Rng, seed: &[u8]) -> (Vec<u8>, String) {
    let (mut header, data) = split_safetensors(seed);
    let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
    let name = pick(rng, &names).clone();
    let tensor = header.get_mut(&name).and_then(Value::as_object_mut).unwrap();
    let begin = tensor["data_offsets"][0].as_u64().unwrap_or(0);
    let end = tensor["data_offsets"][1].as_u64().unwrap_or(0);
    let mut desc = match rng.random_range(0..8) {
        0 => {
            let shape = pick(
                rng,
                &[
                    json!([4294967296u64, 4294967296u64]),
                    json!([u64::MAX]),
                    json!([u64::MAX, 2]),
                    json!([0]),
                    json!([]),
                    json!([1u64 << 62, 4]),
                    json!([-1]),
                    json!(["a"]),
                    json!([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
                    json!(null),
                ],
            )
            .clone();
            let d = format!("{name}: shape -> {shape}");
            tensor.insert("shape".into(), shape);
            d
        }
        1 => {
            let dtype = *pick(
                rng,
                &["F32", "F64", "F16", "BF16", "I64", "I32", "U8", "I8", "BOOL", "F8_E4M3", "U64", "C64", "XYZ", ""],
            );
            tensor.insert("dtype".into(), json!(dtype));
            format!("{name}: dtype -> {dtype}")
        }
        2 => {
            let offs = pick(
                rng,
                &[
                    json!([0, u64::MAX]),
                    json!([end, begin]),
                    json!([begin, begin]),
                    json!([begin + 1, end]),
                    json!([begin, end + 8]),
                    json!([u64::MAX, u64::MAX]),
                    json!([begin]),
                    json!([0, 1u64 << 40]),
                ],
            )
            .clone();
            let d = format!("{name}: data_offsets -> {offs}");
            tensor.insert("data_offsets".into(), offs);
            d
        }
        3 => {
            let key = *pick(rng, &["shape", "dtype", "data_offsets"]);
            tensor.remove(key);
            format!("{name}: remove `{key}`")
        }
        4 => {
            let n = rng.random_range(1u64..6);
            let shape: Vec<u64> = (0..rng.random_range(0..4)).map(|_| rng.random_range(0..n + 3)).collect();
            let d = format!("{name}: shape -> {shape:?}");
            tensor.insert("shape".into(), json!(shape));
            d
        }
        5 => {
            let value = pick(rng, &[json!({"k": "v"}), json!({"k": 1}), json!([]), json!("x"), json!(null)]).clone();
            let d = format!("__metadata__ -> {value}");
            header.insert("__metadata__".into(), value);
            d
        }
        6 => {
            header.remove(&name);
            format!("remove tensor {name}")
        }
        _ => {
            // Another tensor at the same offsets (an overlap).
            let copy = tensor.clone();
            header.insert(format!("{name}.copy"), Value::Object(copy));
            format!("{name} duplicated at the same offsets")
        }
    };
    let mut bytes = join_safetensors(&header, &data);
    let text_end = bytes.len() - data.len();
    if rng.random_bool(0.15) {
        let n = *pick(rng, &[0u64, 1, (text_end - 8) as u64 + 1, (text_end - 8) as u64 - 1, u64::MAX, 1 << 40]);
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        desc.push_str(&format!("; header length -> {n}"));
    }
    if rng.random_bool(0.25) {
        desc.push_str("; ");
        desc.push_str(&mutate_some(
            rng,
            &mut bytes,
            &[8, text_end, text_end + begin as usize, text_end + end as usize],
        ));
    }
    (bytes, desc)
}

/// What a successfully read tensor map must be: every tensor's values as many as its shape
/// says, and a non-finite value handed out only as an error.
fn check_map(mut map: TensorMap) -> Verdict {
    let shapes: Vec<(String, Vec<usize>)> = map.shapes().map(|(n, s)| (n.to_string(), s.to_vec())).collect();
    for (name, shape) in shapes {
        let Ok(t) = map.get(&name) else { return Verdict::Bad(format!("`{name}` listed but not found")) };
        if product(&shape) != Some(t.data.len()) {
            return Verdict::Bad(format!("`{name}`: shape {shape:?} with {} values", t.data.len()));
        }
        if product(&shape).is_none_or(|p| p > MAX_TENSOR_ELEMENTS) {
            return Verdict::Bad(format!("`{name}`: shape {shape:?} beyond the tensor limit"));
        }
        let finite = t.data.iter().all(|v| v.is_finite());
        match map.take_any(&name) {
            Ok(_) if !finite => return Verdict::Bad(format!("`{name}`: non-finite values handed out by take_any")),
            Err(Error::NonFinite { .. }) if !finite => {}
            Err(e) => return Verdict::Bad(format!("`{name}`: take_any failed on a listed tensor: {e}")),
            Ok(_) => {}
        }
    }
    for name in map.remaining() {
        if let Ok((shape, data)) = map.take_ints(&name) {
            if product(&shape) != Some(data.len()) {
                return Verdict::Bad(format!("int `{name}`: shape {shape:?} with {} values", data.len()));
            }
        }
    }
    Verdict::Ok
}

fn fuzz_safetensors(f: &mut Fuzz) {
    let seeds: Vec<Vec<u8>> = [
        "tests/fixtures/vit/tiny_token.safetensors",
        "tests/fixtures/timm_attention.safetensors",
        "tests/fixtures/gat_mean_selfloops.safetensors",
        "tests/fixtures/npz/google_vit_tiny_timm.safetensors",
        "tests/fixtures/vit/tiny_token_16.io.safetensors",
    ]
    .iter()
    .map(|p| read(p))
    .collect();
    f.run("safetensors", |rng| {
        let seed = pick(rng, &seeds);
        let (bytes, desc) = if rng.random_bool(0.8) {
            mutate_safetensors(rng, seed)
        } else {
            let mut b = seed.clone();
            let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
            let len = b.len();
            let d = mutate_some(rng, &mut b, &[0, 8, 8 + n, len]);
            (b, d)
        };
        (
            desc,
            Box::new(move || match TensorMap::from_safetensors_bytes(&bytes, "fuzz.safetensors") {
                Ok(map) => check_map(map),
                Err(e) => Verdict::Err(e),
            }),
        )
    });
}

/// The `.npy` entries of an `.npz`: (name, bytes, compressed).
fn npz_entries(bytes: &[u8]) -> Vec<(String, Vec<u8>, bool)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut e = zip.by_index(i).unwrap();
            let mut out = Vec::new();
            e.read_to_end(&mut out).unwrap();
            (e.name().to_string(), out, e.compression() != zip::CompressionMethod::Stored)
        })
        .collect()
}

/// One structure-aware mutation of an `.npy` array: its header dict's shape, descr or
/// fortran_order, its version or header length, or its bytes.
fn mutate_npy(rng: &mut ChaCha8Rng, seed: &[u8]) -> (Vec<u8>, String) {
    let (hlen_size, hlen) = match seed[6] {
        1 => (2, u16::from_le_bytes([seed[8], seed[9]]) as usize),
        _ => (4, u32::from_le_bytes(seed[8..12].try_into().unwrap()) as usize),
    };
    let start = 8 + hlen_size;
    let header = String::from_utf8_lossy(&seed[start..start + hlen]).to_string();
    let data = &seed[start + hlen..];
    let replace = |h: &str, key: &str, value: &str| -> String {
        let Some(k) = h.find(key) else { return h.to_string() };
        let from = k + key.len();
        let rest = &h[from..];
        // The value ends at the top-level comma after it (tuples hold commas).
        let mut depth = 0;
        let end = rest
            .char_indices()
            .find(|&(_, c)| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                (c == ',' || c == '}') && depth == 0
            })
            .map_or(rest.len(), |(i, _)| i);
        format!("{}{value}{}", &h[..from], &rest[end..])
    };
    let (new_header, mut desc) = match rng.random_range(0..5) {
        0 => {
            let v = *pick(
                rng,
                &[
                    "(4294967296, 4294967296)",
                    "(18446744073709551615,)",
                    "(18446744073709551616,)",
                    "(-1,)",
                    "()",
                    "(0,)",
                    "(1, 2, 3)",
                    "(3,)",
                    "(2, 2)",
                    "(1073741825,)",
                    "((((((((((((((((((((((((((((((((((((1,),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),),)",
                    "[2, 2]",
                    "(2 2)",
                    "'x'",
                ],
            );
            (replace(&header, "'shape': ", v), format!("shape -> {v}"))
        }
        1 => {
            let v = *pick(
                rng,
                &[
                    "'<f4'",
                    "'>f4'",
                    "'<f8'",
                    "'<f2'",
                    "'|u1'",
                    "'<i8'",
                    "'|b1'",
                    "'|O'",
                    "'<c8'",
                    "'<f16'",
                    "'<U3'",
                    "'V8'",
                    "'<f'",
                    "''",
                    "'<i4'",
                    "[('a', '<f4')]",
                    "3",
                ],
            );
            (replace(&header, "'descr': ", v), format!("descr -> {v}"))
        }
        2 => {
            let v = *pick(rng, &["True", "False", "1", "'yes'", "None"]);
            (replace(&header, "'fortran_order': ", v), format!("fortran_order -> {v}"))
        }
        3 => (header.replace("'shape'", "'shape2'"), "no shape key".to_string()),
        _ => (header.clone(), "header unchanged".to_string()),
    };
    let mut out = seed[..8].to_vec();
    let nh = new_header.as_bytes();
    if hlen_size == 2 {
        out.extend_from_slice(&(nh.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(nh.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(nh);
    out.extend_from_slice(data);
    let data_start = 8 + hlen_size + nh.len();
    if rng.random_bool(0.15) {
        let v = *pick(rng, &[0u8, 1, 2, 3, 4, 0xff]);
        out[6] = v;
        desc.push_str(&format!("; major version -> {v}"));
    }
    if rng.random_bool(0.4) {
        desc.push_str("; ");
        let len = out.len();
        desc.push_str(&mutate_some(rng, &mut out, &[6, 8, 8 + hlen_size, data_start, len]));
    }
    (out, desc)
}

fn npy_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for p in [
        "tests/fixtures/npz/numpy_dtypes.npz",
        "tests/fixtures/npz/numpy_versions.npz",
        "tests/fixtures/npz/numpy_bigendian.npz",
        "tests/fixtures/npz/google_vit_tiny.npz",
    ] {
        seeds.extend(npz_entries(&read(p)).into_iter().map(|(_, b, _)| b));
    }
    seeds
}

fn fuzz_npy(f: &mut Fuzz) {
    let seeds = npy_seeds();
    f.run("npy", |rng| {
        let seed: &Vec<u8> = pick(rng, &seeds);
        let (bytes, desc) = mutate_npy(rng, seed);
        (
            desc,
            Box::new(move || match read_npy(&bytes, "fuzz.npy") {
                Ok(t) if product(&t.shape) != Some(t.data.len()) => {
                    Verdict::Bad(format!("shape {:?} with {} values", t.shape, t.data.len()))
                }
                Ok(_) => Verdict::Ok,
                Err(e) => Verdict::Err(e),
            }),
        )
    });
}

/// Offsets of the zip structures' size and count fields: local headers (compressed size,
/// uncompressed size, name and extra lengths), central headers (sizes, name length, local
/// offset) and the end record (entry counts, directory size and offset).
fn zip_fields(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut fields = Vec::new();
    for i in 0..bytes.len().saturating_sub(4) {
        match &bytes[i..i + 4] {
            b"PK\x03\x04" => fields.extend([(i + 18, 4), (i + 22, 4), (i + 26, 2), (i + 28, 2), (i + 8, 2)]),
            b"PK\x01\x02" => fields.extend([(i + 20, 4), (i + 24, 4), (i + 28, 2), (i + 42, 4), (i + 10, 2)]),
            b"PK\x05\x06" => fields.extend([(i + 8, 2), (i + 10, 2), (i + 12, 4), (i + 16, 4)]),
            _ => {}
        }
    }
    fields.retain(|&(o, w)| o + w <= bytes.len());
    fields
}

/// An `.npz` of `entries` (name, npy bytes, deflated).
fn write_npz(entries: &[(String, Vec<u8>, bool)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, deflated) in entries {
        let method = if *deflated { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default().compression_method(method)).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn fuzz_npz(f: &mut Fuzz) {
    let files: Vec<Vec<u8>> = [
        "tests/fixtures/npz/numpy_dtypes.npz",
        "tests/fixtures/npz/numpy_dtypes_compressed.npz",
        "tests/fixtures/npz/numpy_versions.npz",
        "tests/fixtures/npz/numpy_bigendian.npz",
        "tests/fixtures/npz/google_vit_tiny.npz",
        "tests/fixtures/npz/google_vit_bigvision.npz",
        "tests/fixtures/vit/tiny_token.npz",
    ]
    .iter()
    .map(|p| read(p))
    .collect();
    let entries: Vec<Vec<(String, Vec<u8>, bool)>> = files[..4].iter().map(|b| npz_entries(b)).collect();
    f.run("npz", |rng| {
        let (bytes, desc) = match rng.random_range(0..4) {
            // Header fields of the archive itself.
            0 | 1 => {
                // The big fixture rarely: it is 280 KB.
                let upto = if rng.random_bool(0.1) { 7 } else { 6 };
                let mut b = pick(rng, &files[..upto]).clone();
                let fields = zip_fields(&b);
                let mut desc = Vec::new();
                for _ in 0..rng.random_range(1..=2) {
                    if fields.is_empty() || rng.random_bool(0.3) {
                        let bounds: Vec<usize> = fields.iter().map(|f| f.0).collect();
                        desc.push(mutate(rng, &mut b, &bounds));
                    } else {
                        let (o, w) = *pick(rng, &fields);
                        let v = *pick(rng, HUGE);
                        if o + w > b.len() {
                            continue; // an earlier truncation removed the field
                        }
                        b[o..o + w].copy_from_slice(&v.to_le_bytes()[..w]);
                        desc.push(format!("zip field at {o} ({w} bytes) -> {v:#x}"));
                    }
                }
                (b, desc.join("; "))
            }
            // A rebuilt archive with one mutated array.
            2 => {
                let mut es = pick(rng, &entries).clone();
                let k = rng.random_range(0..es.len());
                let (npy, d) = mutate_npy(rng, &es[k].1);
                es[k].1 = npy;
                let desc = format!("entry {}: {d}", es[k].0);
                (write_npz(&es), desc)
            }
            // Duplicate names (written under distinct names, then renamed in the headers).
            _ => {
                let es = pick(rng, &entries);
                let (name, npy, deflated) = es[0].clone();
                // The same length, so that renaming it in place keeps every offset.
                let twin = format!("{}{}", if name.starts_with('#') { '$' } else { '#' }, &name[1..]);
                let mut b = write_npz(&[(name.clone(), npy.clone(), deflated), (twin.clone(), npy, !deflated)]);
                let (from, to) = (twin.as_bytes().to_vec(), name.as_bytes().to_vec());
                let mut i = 0;
                while i + from.len() <= b.len() {
                    if b[i..i + from.len()] == from[..] {
                        b[i..i + from.len()].copy_from_slice(&to);
                    }
                    i += 1;
                }
                (b, format!("two entries named {name}"))
            }
        };
        (
            desc,
            Box::new(move || match TensorMap::from_npz_bytes(&bytes, "fuzz.npz") {
                Ok(map) => check_map(map),
                Err(e) => Verdict::Err(e),
            }),
        )
    });
}

/// A valid optimiser state: 3 slots of 4, 1 and 6 values after two steps.
fn adamw_seed() -> Vec<u8> {
    let mut opt = AdamW::new(1e-3, 0.01);
    let mut params = [vec![0.5f32; 4], vec![1.0], vec![-0.25; 6]];
    for step in 0..2 {
        opt.begin_step();
        for (slot, p) in params.iter_mut().enumerate() {
            let g: Vec<f32> = (0..p.len()).map(|i| (i + step) as f32 * 0.1 - 0.2).collect();
            opt.update(slot, p, &g, slot != 1);
        }
        opt.end_step().unwrap();
    }
    opt.state_dict().unwrap().to_safetensors_bytes().unwrap()
}

fn fuzz_adamw(f: &mut Fuzz) {
    let seed = adamw_seed();
    f.run("adamw_state", |rng| {
        let (bytes, desc) = if rng.random_bool(0.5) {
            let (mut header, data) = split_safetensors(&seed);
            let key = *pick(rng, &["adamw.slots", "adamw.step"]);
            let v =
                *pick(rng, &["18446744073709551615", "4294967296", "1099511627776", "9", "3", "2", "0", "-1", "x", ""]);
            let meta = header.entry("__metadata__").or_insert(json!({}));
            let mut desc = if rng.random_bool(0.15) {
                meta.as_object_mut().unwrap().remove(key);
                format!("remove {key}")
            } else {
                meta[key] = json!(v);
                format!("{key} -> {v}")
            };
            if rng.random_bool(0.3) {
                let names: Vec<String> = header.keys().filter(|k| *k != "__metadata__").cloned().collect();
                let name = pick(rng, &names).clone();
                let t = header.remove(&name).unwrap();
                if rng.random_bool(0.5) {
                    header.insert(format!("{name}9"), t);
                    desc.push_str(&format!("; rename {name}"));
                } else {
                    desc.push_str(&format!("; remove {name}"));
                }
            }
            (join_safetensors(&header, &data), desc)
        } else {
            mutate_safetensors(rng, &seed)
        };
        (
            desc,
            Box::new(move || {
                let map = match TensorMap::from_safetensors_bytes(&bytes, "fuzz-adamw.safetensors") {
                    Ok(map) => map,
                    Err(e) => return Verdict::Err(e),
                };
                let mut opt = AdamW::new(1e-3, 0.01);
                match opt.load_state(map, "fuzz-adamw.safetensors") {
                    Ok(()) => {
                        // What was restored writes back as a state of as many slots, m and v alike.
                        let back = match opt.state_dict() {
                            Ok(b) => b,
                            Err(e) => return Verdict::Bad(format!("state_dict after a load failed: {e}")),
                        };
                        let slots: usize = back.metadata().get("adamw.slots").and_then(|v| v.parse().ok()).unwrap_or(0);
                        if back.remaining().len() != 2 * slots {
                            return Verdict::Bad(format!("{slots} slots restored, {} tensors", back.remaining().len()));
                        }
                        check_map(back)
                    }
                    Err(e) => Verdict::Err(e),
                }
            }),
        )
    });
}

// ---------------------------------------------------------------------------------------------
// PyTorch checkpoints (`.pth`) and the restricted pickle machine.

/// How a pickle opcode's argument is laid out, for the opcodes the restricted machine reads.
#[derive(Clone, Copy)]
enum PickleArg {
    /// A fixed number of bytes (none for most opcodes).
    Fixed(usize),
    /// A little-endian length of that many bytes, then that many bytes.
    Counted(usize),
    /// LONG4: a signed 4-byte length (negative is invalid), then that many bytes.
    Long4,
    /// GLOBAL: two newline-terminated lines.
    Lines,
}

/// The layout of opcode `op`'s argument, `None` for an opcode the machine does not read
/// (protocol 0's text opcodes, INST, OBJ, EXT*, out-of-band buffers, unknown bytes).
fn pickle_arg(op: u8) -> Option<PickleArg> {
    use PickleArg::{Counted, Fixed, Lines, Long4};
    Some(match op {
        b'.' | b'(' | b'0' | b'1' | b'2' | b'N' | b')' | b't' | b']' | b'l' | b'a' | b'e' => Fixed(0),
        b'}' | b'd' | b's' | b'u' | b'R' | b'b' | b'Q' | 0x81 | 0x85..=0x89 | 0x8f..=0x94 => Fixed(0),
        0x80 | b'K' | b'h' | b'q' => Fixed(1),
        b'M' => Fixed(2),
        b'J' | b'j' | b'r' => Fixed(4),
        b'G' | 0x95 => Fixed(8),
        0x8a | 0x8c | b'U' | b'C' => Counted(1),
        b'X' | b'T' | b'B' => Counted(4),
        0x8d | 0x8e | 0x96 => Counted(8),
        0x8b => Long4,
        b'c' => Lines,
        _ => return None,
    })
}

/// A pickle's opcodes as byte ranges, in order, up to and including STOP, and whether STOP was
/// reached with every opcode one that the machine reads (when not, the machine must refuse the
/// bytes).
fn pickle_ops(b: &[u8]) -> (Vec<(usize, usize)>, bool) {
    let mut ops = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let rest = &b[at + 1..];
        let le = |w: usize| (rest.len() >= w).then(|| rest[..w].iter().rev().fold(0u64, |a, &x| a << 8 | u64::from(x)));
        let n = match pickle_arg(b[at]) {
            None => None,
            Some(PickleArg::Fixed(n)) => Some(n),
            Some(PickleArg::Counted(w)) => le(w).and_then(|n| usize::try_from(n).ok()).and_then(|n| n.checked_add(w)),
            Some(PickleArg::Long4) => le(4).filter(|&n| n <= i32::MAX as u64).map(|n| n as usize + 4),
            Some(PickleArg::Lines) => rest.iter().enumerate().filter(|&(_, &c)| c == b'\n').nth(1).map(|(i, _)| i + 1),
        };
        let Some(n) = n.filter(|&n| n <= rest.len()) else { return (ops, false) };
        ops.push((at, at + 1 + n));
        if b[at] == b'.' {
            return (ops, true);
        }
        at += 1 + n;
    }
    (ops, false)
}

/// The persistent ids `('storage', class, key, location, numel[, view])` before each BINPERSID:
/// the BINPERSID's op index and the op indices of the tuple's items (memo puts skipped).
fn pickle_persids(b: &[u8], ops: &[(usize, usize)]) -> Vec<(usize, Vec<usize>)> {
    let memo_put = |i: usize| matches!(b[ops[i].0], b'q' | b'r' | 0x94);
    let mut out = Vec::new();
    for q in (0..ops.len()).filter(|&q| b[ops[q].0] == b'Q') {
        let Some(t) = (0..q).rev().find(|&i| !memo_put(i)) else { continue };
        if b[ops[t].0] != b't' {
            continue;
        }
        let (mut items, mut depth) = (Vec::new(), 0);
        for i in (0..t).rev() {
            match b[ops[i].0] {
                b'(' if depth == 0 => {
                    items.reverse();
                    out.push((q, items));
                    break;
                }
                b'(' => depth -= 1,
                b't' | b'l' | b'd' | b'u' | b'e' | b'1' | 0x90 | 0x91 => depth += 1,
                _ if depth == 0 && !memo_put(i) => items.push(i),
                _ => {}
            }
        }
    }
    out
}

/// The integer ops after BINPERSID op `q`: the tensor's offset, sizes and strides (up to its
/// `requires_grad` bool).
fn tensor_ints(b: &[u8], ops: &[(usize, usize)], q: usize) -> Vec<usize> {
    (q + 1..ops.len().min(q + 24))
        .take_while(|&i| !matches!(b[ops[i].0], 0x88 | 0x89))
        .filter(|&i| matches!(b[ops[i].0], b'K' | b'M' | b'J' | 0x8a))
        .collect()
}

/// The value of a BININT1 / BININT2 / BININT op.
fn pickle_int_value(b: &[u8], (s, e): (usize, usize)) -> Option<i128> {
    let arg = &b[s + 1..e];
    match b[s] {
        b'K' => Some(i128::from(arg[0])),
        b'M' => Some(i128::from(u16::from_le_bytes([arg[0], arg[1]]))),
        b'J' => Some(i128::from(i32::from_le_bytes(arg.try_into().ok()?))),
        _ => None,
    }
}

/// The shortest opcode for `v`: BININT1, BININT2, BININT, LONG1 (9 bytes beyond 64 bits).
fn pickle_int(v: i128) -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(x) = u8::try_from(v) {
        out.extend([b'K', x]);
    } else if let Ok(x) = u16::try_from(v) {
        out.push(b'M');
        out.extend(x.to_le_bytes());
    } else if let Ok(x) = i32::try_from(v) {
        out.push(b'J');
        out.extend(x.to_le_bytes());
    } else {
        let n = if i64::try_from(v).is_ok() { 8 } else { 9 };
        out.extend([0x8a, n as u8]);
        out.extend(&v.to_le_bytes()[..n]);
    }
    out
}

/// BINUNICODE of `s`.
fn pickle_str(s: &[u8]) -> Vec<u8> {
    let mut out = vec![b'X'];
    out.extend((s.len() as u32).to_le_bytes());
    out.extend_from_slice(s);
    out
}

/// GLOBAL `module.name`.
fn pickle_global(module: &str, name: &str) -> Vec<u8> {
    format!("c{module}\n{name}\n").into_bytes()
}

/// Globals that a weights file never needs: the machine must refuse them wherever they appear.
const REFUSED_GLOBALS: &[(&str, &str)] = &[
    ("os", "system"),
    ("posix", "system"),
    ("nt", "system"),
    ("builtins", "eval"),
    ("__builtin__", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("subprocess", "Popen"),
    ("torch", "load"),
    ("argparse", "Namespace"),
];

/// Globals the machine interprets (or refuses by name: complex and quantised storages).
const KNOWN_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "FloatStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "DoubleStorage"),
    ("torch", "LongStorage"),
    ("torch", "BoolStorage"),
    ("torch", "ByteStorage"),
    ("torch", "ComplexFloatStorage"),
    ("torch", "QInt8Storage"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch", "float32"),
    ("_codecs", "encode"),
    ("builtins", "set"),
    ("builtins", "bytearray"),
    ("torch.jit._pickle", "build_intlist"),
    ("__torch__.m", "M"),
];

/// Fragments that name or call a refused global: GLOBAL alone, REDUCE, INST, OBJ, STACK_GLOBAL,
/// NEWOBJ, BUILD.
const EVIL_FRAGMENTS: &[&[u8]] = &[
    b"cos\nsystem\n",
    b"cposix\nsystem\n",
    b"c__builtin__\neval\n",
    b"cos\nsystem\nX\x02\x00\x00\x00ls\x85R",
    b"(X\x02\x00\x00\x00lsios\nsystem\n",
    b"(cos\nsystem\nX\x02\x00\x00\x00lso",
    b"X\x08\x00\x00\x00builtinsX\x04\x00\x00\x00eval\x93X\x03\x00\x00\x001+1\x85R",
    b"cbuiltins\neval\n)\x81",
    b"cos\nsystem\n}b",
];

/// Values made by a refused global, to be set in a dict: called, inside a list, a dict, a tuple,
/// or the bare global.
const EVIL_VALUES: &[&[u8]] = &[
    b"cposix\nsystem\nX\x02\x00\x00\x00ls\x85R",
    b"](cposix\nsystem\nX\x02\x00\x00\x00ls\x85Re",
    b"}X\x01\x00\x00\x00kcbuiltins\neval\nX\x03\x00\x00\x001+1\x85Rs",
    b"cos\nsystem\n\x85",
    b"cnt\nsystem\n",
];

/// Opcodes written over others: the machine's own, the dangerous ones (GLOBAL, INST, OBJ,
/// REDUCE, BUILD, STACK_GLOBAL, NEWOBJ), protocol 0's, EXT1, out-of-band buffers, unknown.
const OPCODES: &[u8] = &[
    b'c', b'i', b'o', b'R', b'b', 0x93, 0x81, 0x92, b'Q', b'(', b'.', b'0', b'1', b'2', b'a', b'e', b's', b'u', b't',
    b'l', b'd', 0x85, 0x86, 0x87, b'h', b'j', b'q', b'r', 0x94, b'N', b')', b']', b'}', 0x8f, 0x90, 0x91, 0x95, 0x80,
    b'P', b'S', b'V', b'I', 0x82, 0x97, 0xff,
];

/// Values for storage sizes and tensor offsets, sizes and strides.
const PICKLE_INTS: &[i128] = &[
    0,
    1,
    2,
    3,
    47,
    48,
    255,
    256,
    65_535,
    i32::MAX as i128,
    1 << 30,
    (1 << 30) + 1,
    1 << 32,
    1 << 40,
    1 << 61,
    1 << 62,
    i64::MAX as i128,
    -1,
    i64::MIN as i128,
    u64::MAX as i128,
];

/// One to three structure-aware mutations of a pickle; `keys` are the storage keys the archive
/// holds.
fn mutate_pickle(rng: &mut ChaCha8Rng, seed: &[u8], keys: &[String]) -> (Vec<u8>, String) {
    let mut b = seed.to_vec();
    let n = *pick(rng, &[1, 1, 1, 2, 3]);
    let desc: Vec<String> = (0..n).map(|_| mutate_pickle_once(rng, &mut b, keys)).collect();
    (b, desc.join("; "))
}

fn mutate_pickle_once(rng: &mut ChaCha8Rng, b: &mut Vec<u8>, keys: &[String]) -> String {
    let (ops, _) = pickle_ops(b);
    if ops.is_empty() {
        return mutate(rng, b, &[]);
    }
    let mut starts: Vec<usize> = ops.iter().map(|o| o.0).collect();
    starts.push(ops[ops.len() - 1].1);
    let persids = pickle_persids(b, &ops);
    let set = |b: &mut Vec<u8>, i: usize, with: &[u8]| {
        b.splice(ops[i].0..ops[i].1, with.iter().copied());
    };
    let name = |b: &[u8], i: usize| String::from_utf8_lossy(&b[ops[i].0..ops[i].1.min(ops[i].0 + 40)]).into_owned();
    let persid = |rng: &mut ChaCha8Rng| pick(rng, &persids).clone();
    match rng.random_range(0..15) {
        0 => mutate_some(rng, b, &starts),
        1 => {
            let i = rng.random_range(0..ops.len());
            let (was, v) = (b[ops[i].0], *pick(rng, OPCODES));
            b[ops[i].0] = v;
            format!("opcode {i} at {}: {was:#04x} -> {v:#04x}", ops[i].0)
        }
        2 => {
            let at = *pick(rng, &starts);
            let frag = *pick(rng, EVIL_FRAGMENTS);
            b.splice(at..at, frag.iter().copied());
            format!("insert {:?} at {at}", String::from_utf8_lossy(frag))
        }
        3 => {
            let globals: Vec<usize> = (0..ops.len()).filter(|&i| b[ops[i].0] == b'c').collect();
            let Some(&i) = (!globals.is_empty()).then(|| pick(rng, &globals)) else {
                return mutate_some(rng, b, &starts);
            };
            let (m, n) = if rng.random_bool(0.6) { *pick(rng, REFUSED_GLOBALS) } else { *pick(rng, KNOWN_GLOBALS) };
            let was = name(b, i);
            set(b, i, &pickle_global(m, n));
            format!("GLOBAL {was:?} -> {m}.{n}")
        }
        4 => {
            let fields: Vec<usize> = (0..ops.len())
                .filter(|&i| matches!(b[ops[i].0], b'X' | b'T' | b'B' | b'J' | b'M' | b'K' | 0x8c | b'U' | b'C' | 0x8a))
                .collect();
            if fields.is_empty() || rng.random_bool(0.3) {
                let huge: &[&[u8]] = &[
                    b"\x8d\xff\xff\xff\xff\xff\xff\xff\xff",
                    b"\x8d\x00\x00\x00\x00\x00\x01\x00\x00",
                    b"\x8e\x00\x00\x00\x00\x00\x00\x00\x40",
                    b"\x96\x00\x00\x00\x80\x00\x00\x00\x00",
                    b"\x8b\xff\xff\xff\x7f",
                    b"\x8b\xff\xff\xff\xff",
                    b"\x8a\xff",
                    b"X\xff\xff\xff\xff",
                    b"\x95\xff\xff\xff\xff\xff\xff\xff\xff",
                ];
                let (at, v) = (*pick(rng, &starts), *pick(rng, huge));
                b.splice(at..at, v.iter().copied());
                format!("insert {v:02x?} at {at}")
            } else {
                let s = ops[*pick(rng, &fields)].0;
                match b[s] {
                    b'X' | b'T' | b'B' | b'J' => {
                        let cur = u32::from_le_bytes(b[s + 1..s + 5].try_into().unwrap());
                        let v = *pick(rng, &[u32::MAX, 0x7fff_ffff, 0x8000_0000, 1 << 30, 0, cur.wrapping_add(1)]);
                        b[s + 1..s + 5].copy_from_slice(&v.to_le_bytes());
                        format!("{:?} at {s}: length/value {cur} -> {v}", b[s] as char)
                    }
                    b'M' => {
                        b[s + 1..s + 3].copy_from_slice(&[0xff, 0xff]);
                        format!("BININT2 at {s} -> 65535")
                    }
                    _ => {
                        let cur = b[s + 1];
                        let v = *pick(rng, &[0xffu8, 0x80, 9, 16, 0, cur.wrapping_add(1)]);
                        b[s + 1] = v;
                        format!("{:#04x} at {s}: length {cur} -> {v}", b[s])
                    }
                }
            }
        }
        5 => {
            let cut = if rng.random_bool(0.7) {
                *pick(rng, &starts) + rng.random_range(0..2)
            } else {
                rng.random_range(0..b.len())
            };
            let cut = cut.min(b.len());
            b.truncate(cut);
            format!("cut to {cut} bytes")
        }
        6 => {
            let marks: Vec<usize> = ops.iter().filter(|o| b[o.0] == b'(').map(|o| o.0).collect();
            if !marks.is_empty() && rng.random_bool(0.3) {
                let at = *pick(rng, &marks);
                b.remove(at);
                format!("remove the MARK at {at}")
            } else {
                let at =
                    if !marks.is_empty() && rng.random_bool(0.5) { *pick(rng, &marks) } else { *pick(rng, &starts) };
                let n = rng.random_range(1..=3);
                b.splice(at..at, std::iter::repeat_n(b'(', n));
                format!("{n} MARKs at {at}")
            }
        }
        7 if !persids.is_empty() => {
            let (q, items) = persid(rng);
            let Some(&numel) = items.get(4) else { return format!("persistent id at op {q} without a size") };
            if rng.random_bool(0.1) {
                let alts: [&[u8]; 4] = [b"N", b"X\x01\x00\x00\x005", b"\x88", b")"];
                let v = *pick(rng, &alts);
                set(b, numel, v);
                return format!("storage size at op {numel} -> {v:02x?}");
            }
            let cur = pickle_int_value(b, ops[numel]).unwrap_or(0);
            let v = *pick(rng, &[PICKLE_INTS, &[cur - 1, cur + 1, 2 * cur][..]].concat());
            set(b, numel, &pickle_int(v));
            format!("storage size at op {numel}: {cur} -> {v}")
        }
        8 if !persids.is_empty() => {
            let (q, _) = persid(rng);
            let ints = tensor_ints(b, &ops, q);
            let Some(&i) = (!ints.is_empty()).then(|| pick(rng, &ints)) else {
                return format!("no tensor ints after op {q}");
            };
            let cur = pickle_int_value(b, ops[i]).unwrap_or(0);
            let v = *pick(rng, &[PICKLE_INTS, &[cur - 1, cur + 1][..]].concat());
            set(b, i, &pickle_int(v));
            format!("tensor int at op {i} (after the storage at op {q}): {cur} -> {v}")
        }
        9 if !persids.is_empty() => {
            let (q, items) = persid(rng);
            let Some(&key) = items.get(2) else { return format!("persistent id at op {q} without a key") };
            let mut choices: Vec<String> = keys.to_vec();
            choices.extend(["999", "", "../data.pkl", "constants/0", "data/0", "0/../1", "0\u{0}"].map(String::from));
            let v = pick(rng, &choices).clone();
            set(b, key, &pickle_str(v.as_bytes()));
            format!("storage key at op {key} -> {v:?}")
        }
        10 if !persids.is_empty() => {
            let (q, items) = persid(rng);
            let Some(&class) = items.get(1) else { return format!("persistent id at op {q} without a class") };
            let (m, n) =
                if rng.random_bool(0.8) { *pick(rng, &KNOWN_GLOBALS[4..13]) } else { *pick(rng, REFUSED_GLOBALS) };
            set(b, class, &pickle_global(m, n));
            format!("storage class at op {class} -> {m}.{n}")
        }
        11 if !persids.is_empty() => {
            // A view reaching the end of a storage declared bigger than its bytes.
            let (q, items) = persid(rng);
            let (Some(&numel), Some(&offset)) = (items.get(4), tensor_ints(b, &ops, q).first()) else {
                return format!("persistent id at op {q} without a size or offset");
            };
            let v = *pick(rng, &[48i128, 1000, 1 << 20, 1 << 30, 1 << 61, 1 << 62, i64::MAX as i128]);
            let at = if rng.random_bool(0.5) { v - 1 } else { v / 2 };
            set(b, offset, &pickle_int(at)); // the later op first: the earlier one's position holds
            set(b, numel, &pickle_int(v));
            format!("storage size at op {numel} -> {v}, offset at op {offset} -> {at}")
        }
        12 if !persids.is_empty() => {
            // A broadcast view: one stride 0, its size grown (torch's `expand`), a little: the
            // other dimensions multiply it (the big expansion is bomb 2, in a child process).
            let (q, _) = persid(rng);
            let ints = tensor_ints(b, &ops, q);
            if ints.len() < 3 || ints.len() % 2 == 0 {
                return format!("no sizes and strides after op {q}");
            }
            let dims = (ints.len() - 1) / 2;
            let d = rng.random_range(0..dims);
            let v = *pick(rng, &[0i128, 2, 16]);
            set(b, ints[1 + dims + d], &pickle_int(0));
            set(b, ints[1 + d], &pickle_int(v));
            format!("dim {d} of the tensor after op {q}: stride 0, size {v}")
        }
        13 => {
            let i = rng.random_range(0..ops.len());
            let j = (i + rng.random_range(1..=40)).min(ops.len());
            let (s, e) = (ops[i].0, ops[j - 1].1);
            if rng.random_bool(0.3) {
                b.drain(s..e);
                format!("delete ops {i}..{j} (bytes {s}..{e})")
            } else {
                let copy = b[s..e].to_vec();
                let at = *pick(rng, &starts);
                b.splice(at..at, copy);
                format!("copy ops {i}..{j} (bytes {s}..{e}) to {at}")
            }
        }
        _ => {
            // A refused global's value set in the last dict that SETITEMS fills.
            let Some(u) = (0..ops.len()).rev().find(|&i| b[ops[i].0] == b'u') else {
                return mutate_some(rng, b, &starts);
            };
            let value = *pick(rng, EVIL_VALUES);
            let mut ins = pickle_str(b"payload");
            ins.extend_from_slice(value);
            let at = ops[u].0;
            b.splice(at..at, ins);
            format!("`payload`: {:?} set before the SETITEMS at {at}", String::from_utf8_lossy(value))
        }
    }
}

/// One or two mutations of a zip archive's own structure: a size, count or offset field of a
/// local header, the central directory or the end record set to an edge value, a truncation at
/// (or near) one of those structures, or a byte-level mutation favouring them.
fn mutate_zip(rng: &mut ChaCha8Rng, b: &mut Vec<u8>) -> String {
    let mut desc = Vec::new();
    for _ in 0..rng.random_range(1..=2) {
        let fields = zip_fields(b);
        let bounds: Vec<usize> = fields.iter().map(|f| f.0).collect();
        match rng.random_range(0..3) {
            0 if !bounds.is_empty() => {
                let cut = (*pick(rng, &bounds)).saturating_sub(rng.random_range(0..32)).min(b.len());
                b.truncate(cut);
                desc.push(format!("truncate to {cut} (near a zip structure)"));
            }
            1 if !fields.is_empty() => {
                let (o, w) = *pick(rng, &fields);
                let v = *pick(rng, HUGE);
                b[o..o + w].copy_from_slice(&v.to_le_bytes()[..w]);
                desc.push(format!("zip field at {o} ({w} bytes) -> {v:#x}"));
            }
            _ => desc.push(mutate(rng, b, &bounds)),
        }
    }
    desc.join("; ")
}

/// The storage keys (`<prefix>data/<key>`) of a `.pth` archive's entries, and its `data.pkl`'s
/// index.
fn pth_keys(entries: &[(String, Vec<u8>, bool)]) -> (Vec<String>, usize) {
    let pkl = entries.iter().position(|e| e.0.ends_with("/data.pkl")).expect("a .pth seed without data.pkl");
    let data = format!("{}data/", entries[pkl].0.trim_end_matches("data.pkl"));
    (entries.iter().filter_map(|e| e.0.strip_prefix(&data).map(str::to_string)).collect(), pkl)
}

/// One structure-aware mutation of a `.pth` zip archive: (a) its zip structure, (b) its
/// `data.pkl` (rebuilt into a valid archive, Stored, so that the mutation reaches the pickle
/// machine), (c) a storage's size, or its entries (removed, moved, byteorder, TorchScript).
fn mutate_pth_zip(rng: &mut ChaCha8Rng, file: &[u8], entries: &[(String, Vec<u8>, bool)]) -> (Vec<u8>, String) {
    let (keys, pkl) = pth_keys(entries);
    let prefix = entries[pkl].0.trim_end_matches("data.pkl").to_string();
    let mut es = entries.to_vec();
    let desc = match rng.random_range(0..8) {
        0 | 1 => {
            let mut b = file.to_vec();
            let d = mutate_zip(rng, &mut b);
            return (b, d);
        }
        2..=4 => {
            let (p, d) = mutate_pickle(rng, &es[pkl].1, &keys);
            es[pkl].1 = p;
            format!("data.pkl: {d}")
        }
        5 if !keys.is_empty() => {
            let key = pick(rng, &keys).clone();
            let i = es.iter().position(|e| e.0 == format!("{prefix}data/{key}")).unwrap();
            let n = es[i].1.len();
            let new = match rng.random_range(0..6) {
                0 => 0,
                1 => n.saturating_sub(1),
                2 => n / 2,
                3 => n + 1,
                4 => n + rng.random_range(1..=64),
                _ => 2 * n,
            };
            es[i].1.resize(new, 0x41);
            format!("storage `{key}`: {n} -> {new} bytes")
        }
        _ => match rng.random_range(0..6) {
            0 => {
                let i = if rng.random_bool(0.5) { pkl } else { rng.random_range(0..es.len()) };
                let (name, ..) = es.remove(i);
                format!("remove entry {name}")
            }
            1 => {
                let v = *pick(rng, &["big", "little", "", "middle", "BIG", "little\n"]);
                es.retain(|e| e.0 != format!("{prefix}byteorder"));
                es.push((format!("{prefix}byteorder"), v.as_bytes().to_vec(), false));
                format!("byteorder -> {v:?}")
            }
            2 => {
                let copy = es[pkl].1.clone();
                es.push(("other/data.pkl".into(), copy, false));
                "a second data.pkl (other/data.pkl)".into()
            }
            3 => {
                let to = *pick(rng, &["a/b/data.pkl", "data.pkl", "other/data.pkl"]);
                es[pkl].0 = to.to_string();
                format!("data.pkl moved to {to}")
            }
            4 => {
                es.retain(|e| e.0 != format!("{prefix}constants.pkl"));
                es.push((format!("{prefix}constants.pkl"), b"\x80\x02).".to_vec(), false));
                "constants.pkl added (a TorchScript archive)".into()
            }
            _ => {
                es.iter_mut().for_each(|e| e.2 = true);
                "every entry deflated".into()
            }
        },
    };
    (write_npz(&es), desc)
}

/// Where a legacy checkpoint's five pickles lie, and each storage's u64 element count (its
/// offset) and byte length.
struct LegacyLayout {
    pickles: Vec<(usize, usize)>,
    counts: Vec<(usize, usize)>,
}

fn legacy_layout(b: &[u8]) -> LegacyLayout {
    let mut pos = 15; // the magic number's pickle
    let mut pickles = vec![(0, pos)];
    for _ in 0..4 {
        let (ops, complete) = pickle_ops(&b[pos..]);
        assert!(complete, "a legacy seed whose pickles do not parse");
        pickles.push((pos, pos + ops[ops.len() - 1].1));
        pos += ops[ops.len() - 1].1;
    }
    let object = unpickle(&b[pickles[3].0..pickles[3].1], "seed").unwrap();
    let keys = unpickle(&b[pickles[4].0..pickles[4].1], "seed").unwrap();
    let sizes: BTreeMap<&str, usize> = object
        .nodes
        .iter()
        .filter_map(|n| match n {
            Node::Storage { key, dtype, .. } => Some((key.as_str(), dtype.size())),
            _ => None,
        })
        .collect();
    let mut counts = Vec::new();
    for &k in keys.seq(keys.root).unwrap() {
        let n = u64::from_le_bytes(b[pos..pos + 8].try_into().unwrap()) as usize * sizes[keys.str(k).unwrap()];
        counts.push((pos, n));
        pos += 8 + n;
    }
    assert_eq!(pos, b.len(), "a legacy seed with bytes after its storages");
    LegacyLayout { pickles, counts }
}

/// A legacy checkpoint's storage keys, from its last pickle.
fn legacy_keys(b: &[u8], layout: &LegacyLayout) -> Vec<String> {
    let (s, e) = layout.pickles[4];
    let keys = unpickle(&b[s..e], "seed").unwrap();
    keys.seq(keys.root).unwrap().iter().map(|&k| keys.str(k).unwrap().to_string()).collect()
}

/// One structure-aware mutation of a legacy checkpoint: a storage's u64 element count, its
/// object, key or header pickles (pickle-aware, or bytes anywhere in the pickle region), the
/// little-endian flag, or a truncation among the storages.
fn mutate_legacy(rng: &mut ChaCha8Rng, b: &[u8], layout: &LegacyLayout, keys: &[String]) -> (Vec<u8>, String) {
    let pickles_end = layout.pickles[4].1;
    match rng.random_range(0..6) {
        0 | 1 => {
            let k = rng.random_range(0..layout.counts.len());
            let (at, bytes) = layout.counts[k];
            let n = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
            let v = *pick(
                rng,
                &[0, n.saturating_sub(1), n + 1, 2 * n, 1 << 30, (1 << 30) + 1, 1 << 61, 1 << 62, 1 << 63, u64::MAX],
            );
            let mut out = b.to_vec();
            out[at..at + 8].copy_from_slice(&v.to_le_bytes());
            (out, format!("storage {k} ({bytes} bytes): element count {n} -> {v}"))
        }
        2 | 3 => {
            // The object pickle mostly, else the storage keys, system info or protocol pickle.
            let p = if rng.random_bool(0.7) { 3 } else { *pick(rng, &[1usize, 2, 4]) };
            let (s, e) = layout.pickles[p];
            let (m, d) = mutate_pickle(rng, &b[s..e], keys);
            let mut out = b[..s].to_vec();
            out.extend_from_slice(&m);
            out.extend_from_slice(&b[e..]);
            (out, format!("{} pickle: {d}", ["magic", "protocol", "system info", "object", "storage keys"][p]))
        }
        4 => {
            let mut head = b[..pickles_end].to_vec();
            let bounds: Vec<usize> = layout.pickles.iter().map(|p| p.1).collect();
            let d = mutate_some(rng, &mut head, &bounds);
            head.extend_from_slice(&b[pickles_end..]);
            (head, format!("the pickles' bytes: {d}"))
        }
        _ => {
            if rng.random_bool(0.3) {
                // sys_info's little_endian: True -> False
                let (s, e) = layout.pickles[2];
                let mut out = b.to_vec();
                if let Some(i) = out[s..e].iter().position(|&x| x == 0x88) {
                    out[s + i] = 0x89;
                }
                return (out, "little_endian -> False".into());
            }
            let (at, _) = *pick(rng, &layout.counts);
            let cut = (at + rng.random_range(0..12)).min(b.len());
            (b[..cut].to_vec(), format!("truncate to {cut}, near a storage's count at {at}"))
        }
    }
}

/// The object pickle of a `.pth` file as the loader finds it, and the format it implies.
fn pth_object_pickle(bytes: &[u8]) -> Option<(Vec<u8>, PthFormat)> {
    if bytes.starts_with(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.") {
        let mut pos = 15;
        for _ in 0..2 {
            pos += unpickle_prefix(&bytes[pos..], "oracle").ok()?.1;
        }
        let used = unpickle_prefix(&bytes[pos..], "oracle").ok()?.1;
        return Some((bytes[pos..pos + used].to_vec(), PthFormat::Legacy));
    }
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let pkl = names.iter().find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)?;
    let prefix = pkl.trim_end_matches("data.pkl");
    let script =
        names.iter().any(|n| *n == format!("{prefix}constants.pkl") || n.starts_with(&format!("{prefix}code/")));
    let mut out = Vec::new();
    zip.by_name(pkl).ok()?.read_to_end(&mut out).ok()?;
    Some((out, if script { PthFormat::TorchScript } else { PthFormat::Zip }))
}

/// The first node under `id` that `hit` picks, through what the loader walks (dict keys and
/// values, objects' states; lists and tuples are not read), each node visited once.
fn find_under<'a>(p: &'a Pickle, id: usize, hit: impl Fn(&'a Node) -> bool) -> Option<&'a Node> {
    let mut seen = vec![false; p.nodes.len()];
    let mut todo = vec![id];
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        match p.node(i) {
            node if hit(node) => return Some(node),
            Node::Dict(items) => todo.extend(items.iter().flat_map(|&(k, v)| [k, v])),
            Node::Object { state: Some(s), .. } => todo.push(*s),
            _ => {}
        }
    }
    None
}

/// What a successfully read checkpoint must be: its pickle one the machine reads (no refused
/// opcode before STOP), its format the one its entries imply, no refused global in the state
/// dict it chose, no more tensors than the pickle has dict entries (shared dicts are not
/// multiplied), and its tensors valid ([`check_map`]).
fn check_pth(bytes: &[u8], r: Result<Pth, Error>) -> Verdict {
    let pth = match r {
        Ok(pth) => pth,
        Err(e) => return Verdict::Err(e),
    };
    let Some((pkl, format)) = pth_object_pickle(bytes) else {
        return Verdict::Bad("loaded, but the harness finds no object pickle in it".into());
    };
    if !pickle_ops(&pkl).1 {
        return Verdict::Bad("loaded a pickle holding an opcode the machine does not read (or no STOP)".into());
    }
    if pth.format != format {
        return Verdict::Bad(format!("format {:?}, the entries say {format:?}", pth.format));
    }
    let Ok(tree) = unpickle(&pkl, "oracle") else {
        return Verdict::Bad("loaded a pickle that the machine alone refuses".into());
    };
    let under = pth.notes.iter().find_map(|n| n.strip_prefix("state dict under `")?.strip_suffix('`'));
    let mut chosen = tree.root;
    if let (Some(key), Node::Dict(items)) = (under, tree.node(tree.root)) {
        let named = |k: usize| match tree.node(k) {
            Node::Str(s) => s == key,
            Node::Int(i) => i.to_string() == key,
            _ => false,
        };
        // the first entry of that name that holds a tensor, as the loader chooses
        let tensor = |v: usize| find_under(&tree, v, |n| matches!(n, Node::Tensor { .. })).is_some();
        match items.iter().find(|&&(k, v)| named(k) && tensor(v)) {
            Some(&(_, v)) => chosen = v,
            None => return Verdict::Bad(format!("a note names the state dict `{key}`, the pickle has none")),
        }
    }
    if let Some(Node::Refused(name)) = find_under(&tree, chosen, |n| matches!(n, Node::Refused(_))) {
        return Verdict::Bad(format!("loaded a state dict that holds `{name}`, a refused global"));
    }
    let entries: usize = tree.nodes.iter().map(|n| if let Node::Dict(items) = n { items.len() } else { 0 }).sum();
    let tensors = pth.map.remaining().len();
    if tensors > entries {
        return Verdict::Bad(format!(
            "{tensors} tensors from {entries} dict entries: shared dicts flattened once per path"
        ));
    }
    check_map(pth.map)
}

/// What a successfully read pickle must be: opcodes the machine reads up to STOP, every node's
/// children within the tree, tensors of a storage with as many strides as sizes, at most one
/// node per input byte.
fn check_pickle(bytes: &[u8], r: Result<Pickle, Error>) -> Verdict {
    let p = match r {
        Ok(p) => p,
        Err(e) => return Verdict::Err(e),
    };
    if !pickle_ops(bytes).1 {
        return Verdict::Bad("read a pickle holding an opcode the machine does not read (or no STOP)".into());
    }
    let n = p.nodes.len();
    if p.root >= n || n > bytes.len() {
        return Verdict::Bad(format!("root {} of {n} nodes from {} bytes", p.root, bytes.len()));
    }
    for (i, node) in p.nodes.iter().enumerate() {
        let children: Vec<usize> = match node {
            Node::Tuple(xs) | Node::List(xs) | Node::Set(xs) => xs.clone(),
            Node::Dict(items) => items.iter().flat_map(|&(k, v)| [k, v]).collect(),
            Node::Tensor { storage, .. } => vec![*storage],
            Node::Object { state: Some(s), .. } => vec![*s],
            _ => Vec::new(),
        };
        if let Some(c) = children.iter().find(|&&c| c >= n) {
            return Verdict::Bad(format!("node {i} refers to node {c} of {n}"));
        }
        if let Node::Tensor { storage, shape, stride, .. } = node {
            if !matches!(p.node(*storage), Node::Storage { .. }) || shape.len() != stride.len() {
                return Verdict::Bad(format!("node {i}: {node:?}"));
            }
        }
    }
    Verdict::Ok
}

/// A zip archive's entries: (name, bytes, deflated).
type ZipEntries = Vec<(String, Vec<u8>, bool)>;

/// The `.pth` seeds: (file name, bytes, zip entries (none for the legacy one)); the big ones
/// last.
fn pth_seeds() -> Vec<(&'static str, Vec<u8>, ZipEntries)> {
    [
        "views.pth",
        "evil.pth",
        "evil_builtins.pth",
        "vit_tiny_fp16.pth",
        "vit_tiny.pth",
        "vit_tiny_legacy.pth",
        "clip_tiny_jit.pt",
        "dino_full.pth",
    ]
    .into_iter()
    .map(|name| {
        let bytes = read(&format!("tests/fixtures/checkpoints/{name}"));
        let entries = if bytes.starts_with(b"PK") { npz_entries(&bytes) } else { Vec::new() };
        (name, bytes, entries)
    })
    .collect()
}

/// `d_depth` (with `wrap`, under `{"model": ...}`), where `d_i = {"a": d_(i-1), "b": d_(i-1)}`
/// (one dict, shared) and `d_0 = {"w": leaf}`: 2^depth paths to one leaf in a pickle of 30 bytes
/// a level. With `cycle`, `d = {"a": d, "b": d}` instead (a dict that holds itself twice).
fn shared_dicts_pickle(depth: u32, leaf: &[u8], wrap: bool, cycle: bool) -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    if wrap {
        p.extend_from_slice(b"}q\x00");
        p.extend(pickle_str(b"model"));
    }
    let put = |p: &mut Vec<u8>, k: u32| {
        p.push(b'r');
        p.extend((k + 8).to_le_bytes());
    };
    let get = |p: &mut Vec<u8>, k: u32| {
        p.push(b'j');
        p.extend((k + 8).to_le_bytes());
    };
    if cycle {
        p.push(b'}');
        put(&mut p, 1);
        p.push(b'(');
        for k in [&b"a"[..], b"b"] {
            p.extend(pickle_str(k));
            get(&mut p, 1);
        }
        p.push(b'u');
    } else {
        p.push(b'}');
        p.extend(pickle_str(b"w"));
        p.extend_from_slice(leaf);
        p.push(b's');
        put(&mut p, 0);
        for i in 1..=depth {
            p.extend_from_slice(b"0}(");
            for k in [&b"a"[..], b"b"] {
                p.extend(pickle_str(k));
                get(&mut p, i - 1);
            }
            p.push(b'u');
            put(&mut p, i);
        }
    }
    if wrap {
        p.push(b's');
    }
    p.push(b'.');
    p
}

/// `_rebuild_tensor_v2` of a float storage `key` of `numel` elements: offset 0, `shape`,
/// `stride`.
fn tensor_pickle(key: &str, numel: i128, shape: &[i128], stride: &[i128]) -> Vec<u8> {
    let mut p = pickle_global("torch._utils", "_rebuild_tensor_v2");
    p.extend_from_slice(b"((");
    p.extend(pickle_str(b"storage"));
    p.extend(pickle_global("torch", "FloatStorage"));
    p.extend(pickle_str(key.as_bytes()));
    p.extend(pickle_str(b"cpu"));
    p.extend(pickle_int(numel));
    p.extend_from_slice(b"tQK\x00(");
    shape.iter().for_each(|&s| p.extend(pickle_int(s)));
    p.extend_from_slice(b"t(");
    stride.iter().for_each(|&s| p.extend(pickle_int(s)));
    p.extend_from_slice(b"t\x89)tR");
    p
}

/// `views.pth` with its `data.pkl` replaced (its storage `3` holds one float).
fn views_with_pickle(pkl: Vec<u8>) -> Vec<u8> {
    let mut es = npz_entries(&read("tests/fixtures/checkpoints/views.pth"));
    let (_, i) = pth_keys(&es);
    es[i].1 = pkl;
    write_npz(&es)
}

/// The fixed `.pth` cases, run as the loader's first cases: inputs that random mutations rarely
/// or never build. Those that a faulty loader turns into a hang or an abort run in a child
/// process ([`in_child`]).
const PTH_BOMBS: &[&str] = &[
    "shared dicts 12 deep: 4096 paths to one tensor",
    "a dict holding itself twice, under `model` (a child process)",
    "a 4-byte storage viewed as [2^30] with stride 0 (a child process)",
    "views.pth: storage `0` read for `t` (48 floats), then `slice` declares it 1000 with offset 500",
    "vit_tiny_legacy.pth: a storage's size 2^62 (times 4 bytes wraps to 0), its tensor at offset 10^6",
];

/// `pkl` with persistent id `n`'s storage size set to `numel` and its tensor's offset to
/// `offset`.
fn resize_storage(pkl: &[u8], n: usize, numel: i128, offset: i128) -> Vec<u8> {
    let (ops, _) = pickle_ops(pkl);
    let (q, items) = pickle_persids(pkl, &ops)[n].clone();
    let (size, off) = (ops[items[4]], ops[tensor_ints(pkl, &ops, q)[0]]);
    let mut out = pkl[..size.0].to_vec();
    out.extend(pickle_int(numel));
    out.extend_from_slice(&pkl[size.1..off.0]);
    out.extend(pickle_int(offset));
    out.extend_from_slice(&pkl[off.1..]);
    out
}

fn pth_bomb(k: usize, dir: &Path) -> (String, Box<dyn FnOnce() -> Verdict>) {
    let desc = format!("bomb {k}: {}", PTH_BOMBS[k]);
    match k {
        1 | 2 => {
            let dir = dir.to_path_buf();
            (desc, Box::new(move || in_child(&dir, &format!("pth{k}"), 3)))
        }
        _ => {
            let bytes = match k {
                0 => views_with_pickle(shared_dicts_pickle(12, &tensor_pickle("3", 1, &[], &[]), false, false)),
                3 => {
                    let es = npz_entries(&read("tests/fixtures/checkpoints/views.pth"));
                    views_with_pickle(resize_storage(&es[pth_keys(&es).1].1, 1, 1000, 500))
                }
                _ => {
                    let b = read("tests/fixtures/checkpoints/vit_tiny_legacy.pth");
                    let (s, e) = legacy_layout(&b).pickles[3];
                    let mut out = b[..s].to_vec();
                    out.extend(resize_storage(&b[s..e], 0, 1 << 62, 1_000_000));
                    out.extend_from_slice(&b[e..]);
                    out
                }
            };
            (desc, Box::new(move || check_pth(&bytes, read_pth(&bytes, "bomb.pth"))))
        }
    }
}

/// The fixed pickle cases (as [`PTH_BOMBS`]).
const PICKLE_BOMBS: &[&str] = &[
    "a 10000-item list copied 4000 times by _rebuild_parameter (38 KB)",
    "_rebuild_from_type_v2 nested 50000 deep (a child process)",
];

/// A list of `items` Nones, then `copies` REDUCEs of `_rebuild_parameter` on it.
fn clone_pickle(items: usize, copies: usize) -> Vec<u8> {
    let mut p = b"\x80\x02ctorch._utils\n_rebuild_parameter\nq\x00]q\x01(N".to_vec();
    p.extend(std::iter::repeat_n(b'2', items - 1));
    p.push(b'e');
    for _ in 0..copies {
        p.extend_from_slice(b"h\x00h\x01\x85R0");
    }
    p.push(b'.');
    p
}

/// `_rebuild_from_type_v2(f, None, (f, None, (... (OrderedDict, None, ()))))`, `depth` deep.
fn nested_pickle(depth: u32) -> Vec<u8> {
    let mut p =
        b"\x80\x02ctorch._tensor\n_rebuild_from_type_v2\nq\x00ccollections\nOrderedDict\nq\x01h\x01N)\x87".to_vec();
    for i in 0..=depth {
        // memo the tuple made last, pop it, and (but after the last one) make (f, None, it)
        p.push(b'r');
        p.extend((i + 2).to_le_bytes());
        p.extend_from_slice(if i < depth { b"0h\x00Nj" } else { b"0h\x00j" });
        p.extend((i + 2).to_le_bytes());
        p.push(if i < depth { 0x87 } else { b'R' });
    }
    p.push(b'.');
    p
}

fn pickle_bomb(k: usize, dir: &Path) -> (String, Box<dyn FnOnce() -> Verdict>) {
    let desc = format!("bomb {k}: {}", PICKLE_BOMBS[k]);
    match k {
        0 => {
            let bytes = clone_pickle(10_000, 4000);
            (desc, Box::new(move || pickle_case(&bytes)))
        }
        _ => {
            let dir = dir.to_path_buf();
            (desc, Box::new(move || in_child(&dir, &format!("pickle{k}"), 3)))
        }
    }
}

/// One pickle case: [`check_pickle`], and the bytes allocated while reading at most linear in
/// the input (1 MiB + 512 per byte).
fn pickle_case(bytes: &[u8]) -> Verdict {
    let before = TOTAL.load(Ordering::Relaxed);
    let r = unpickle(bytes, "fuzz.pkl");
    let used = TOTAL.load(Ordering::Relaxed) - before;
    let bound = (1 << 20) + 512 * bytes.len();
    match check_pickle(bytes, r) {
        Verdict::Err(_) | Verdict::Ok if used > bound => {
            Verdict::Bad(format!("{} allocated reading {} bytes (bound {})", human(used), bytes.len(), human(bound)))
        }
        v => v,
    }
}

/// The bombs of a loader to run, popped from the end: all of them, as its first cases, in a
/// normal run; for `PATCHGRAPH_FUZZ_REPRO`, the one whose case seed it names, if any.
fn bombs(f: &Fuzz, loader: &str, n: usize) -> Vec<usize> {
    match &f.repro {
        None => (0..n).rev().collect(),
        Some((l, s)) if l == loader => {
            loader_seeds(f.master, loader, n).iter().position(|x| x == s).into_iter().collect()
        }
        Some(_) => Vec::new(),
    }
}

/// Runs bomb `name` in a child process (this test binary's ignored test `fuzz_child`), for the
/// inputs that a faulty loader turns into an abort (a stack overflow, a refused allocation) or
/// a hang, which would end the whole run: the child's verdict, how it died, or a hang after
/// `secs` seconds (the child is then killed).
fn in_child(dir: &Path, name: &str, secs: u64) -> Verdict {
    let (out, err) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.err")));
    let spawned = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["fuzz_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("PATCHGRAPH_FUZZ_CHILD", name)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Verdict::Bad(format!("the child process did not start: {e}")),
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    // what the child said before dying: a refused allocation, a stack overflow, a panic
    let said = |l: &&str| {
        !(l.trim().is_empty() || l.starts_with(' ') || l.starts_with("stack backtrace") || l.starts_with("note:"))
    };
    let tail: Vec<&str> = stderr.lines().filter(said).collect();
    let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
    match (status, stdout.lines().find_map(|l| l.split_once("fuzz child: ").map(|(_, said)| said.trim()))) {
        (None, _) => Verdict::Bad(format!("no result after {secs} s: a hang (the child was killed)")),
        (Some(_), Some("ok")) => Verdict::Ok,
        (Some(_), Some(why)) => Verdict::Bad(format!("{why} [{tail}]")),
        (Some(status), None) => Verdict::Bad(format!("the child process died ({status}): {tail}")),
    }
}

/// A child process's bomb (see [`in_child`]), run on a thread with the default 2 MiB stack:
/// "ok", or what was wrong.
fn child_bomb(name: &str) -> String {
    let verdict = match name {
        "pth1" => {
            let bytes = views_with_pickle(shared_dicts_pickle(1, b"", true, true));
            match read_pth(&bytes, "bomb.pth") {
                Ok(p) => Verdict::Bad(format!(
                    "loaded {} tensors from a dict that holds only itself",
                    p.map.remaining().len()
                )),
                Err(e) => Verdict::Err(e),
            }
        }
        "pth2" => {
            let pkl = shared_dicts_pickle(0, &tensor_pickle("3", 1, &[1 << 30], &[0]), false, false);
            let bytes = views_with_pickle(pkl);
            check_pth(&bytes, read_pth(&bytes, "bomb.pth"))
        }
        "pickle1" => {
            let bytes = nested_pickle(50_000);
            check_pickle(&bytes, unpickle(&bytes, "bomb.pkl"))
        }
        other => Verdict::Bad(format!("no child bomb `{other}`")),
    };
    match verdict {
        Verdict::Ok | Verdict::Err(_) => "ok".into(),
        Verdict::Bad(why) => why,
    }
}

fn fuzz_pth(f: &mut Fuzz) {
    let dir = f.dir("pth");
    let seeds = pth_seeds();
    let legacy_file = &seeds.iter().find(|s| s.2.is_empty()).unwrap().1;
    let legacy = legacy_layout(legacy_file);
    let legacy_keys = legacy_keys(legacy_file, &legacy);
    let mut bombs = bombs(f, "pth", PTH_BOMBS.len());
    f.run("pth", |rng| {
        if let Some(k) = bombs.pop() {
            return pth_bomb(k, &dir);
        }
        // The big TorchScript and DINO files rarely: 318 and 227 KB.
        let upto = if rng.random_bool(0.1) { seeds.len() } else { seeds.len() - 2 };
        let (name, file, entries) = &seeds[rng.random_range(0..upto)];
        let (bytes, desc) = if entries.is_empty() {
            mutate_legacy(rng, file, &legacy, &legacy_keys)
        } else {
            mutate_pth_zip(rng, file, entries)
        };
        let desc = format!("{name}: {desc}");
        (desc, Box::new(move || check_pth(&bytes, read_pth(&bytes, "fuzz.pth"))))
    });
}

fn fuzz_pickle(f: &mut Fuzz) {
    let dir = f.dir("pickle");
    // Every seed's data.pkl (the legacy file's object pickle) with its storage keys.
    let seeds: Vec<(&str, Vec<u8>, Vec<String>)> = pth_seeds()
        .into_iter()
        .map(|(name, file, entries)| {
            if entries.is_empty() {
                let layout = legacy_layout(&file);
                let (s, e) = layout.pickles[3];
                (name, file[s..e].to_vec(), legacy_keys(&file, &layout))
            } else {
                let (keys, i) = pth_keys(&entries);
                (name, entries[i].1.clone(), keys)
            }
        })
        .collect();
    let mut bombs = bombs(f, "pickle", PICKLE_BOMBS.len());
    f.run("pickle", |rng| {
        if let Some(k) = bombs.pop() {
            return pickle_bomb(k, &dir);
        }
        let (name, pkl, keys) = pick(rng, &seeds);
        let (bytes, desc) = mutate_pickle(rng, pkl, keys);
        (format!("{name} data.pkl: {desc}"), Box::new(move || pickle_case(&bytes)))
    });
}

// ---------------------------------------------------------------------------------------------
// IDX, MNIST, CIFAR-10, image folders.

/// Whether raw (not gzipped) IDX bytes are valid, decided from the format's definition.
fn idx_oracle(bytes: &[u8]) -> Result<(Vec<usize>, usize), String> {
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 8 {
        return Err("bad magic".into());
    }
    let ndim = bytes[3] as usize;
    if bytes.len() < 4 + 4 * ndim {
        return Err("short header".into());
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let count: u128 = dims.iter().map(|&d| d as u128).product();
    if count > MAX_TENSOR_ELEMENTS as u128 {
        return Err(format!("{count} elements"));
    }
    if bytes.len() - (4 + 4 * ndim) != count as usize {
        return Err("body length".into());
    }
    Ok((dims, 4 + 4 * ndim))
}

/// Inflates a whole gzip stream for the oracle (bounded: the harness's own inputs are small).
fn gunzip(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).take(64 << 20).read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// IDX bytes of `dims` and `data`.
fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// A mutation of IDX bytes: a dimension, the dimension count or the type code set to an edge
/// value, or byte-level; gzipped afterwards or not.
fn mutate_idx(rng: &mut ChaCha8Rng, seed: &[u8]) -> (Vec<u8>, String) {
    let mut b = seed.to_vec();
    let ndim = b[3] as usize;
    let desc = match rng.random_range(0..4) {
        0 if ndim > 0 => {
            let k = rng.random_range(0..ndim);
            let v = *pick(rng, &[0u32, 1, 2, 27, 28, 29, 0xffff_ffff, 0x8000_0000, 0x4000_0000, 0x10000]);
            b[4 + 4 * k..8 + 4 * k].copy_from_slice(&v.to_be_bytes());
            format!("dim {k} -> {v:#x}")
        }
        1 => {
            let v = *pick(rng, &[0u8, 1, 2, 3, 4, 255]);
            b[3] = v;
            format!("ndim -> {v}")
        }
        2 => {
            let v = *pick(rng, &[0x08u8, 0x09, 0x0b, 0x0c, 0x0d, 0x0e, 0]);
            b[2] = v;
            format!("type -> {v:#x}")
        }
        _ => {
            let bounds = [0, 2, 3, 4, 4 + 4 * ndim, b.len()];
            mutate_some(rng, &mut b, &bounds)
        }
    };
    if rng.random_bool(0.3) {
        let mut z = gzip(&b);
        let d = if rng.random_bool(0.3) {
            {
                let zl = z.len();
                format!("; in the gzip: {}", mutate(rng, &mut z, &[10, zl - 8]))
            }
        } else {
            String::new()
        };
        (z, format!("{desc}; gzipped{d}"))
    } else {
        (b, desc)
    }
}

/// The first `n` test digits and labels of the bundled subset, raw IDX.
fn mnist_subset(n: usize) -> (Vec<u8>, Vec<u8>) {
    let dir = "data/mnist5k";
    let images = read_idx_bytes(&read(&format!("{dir}/t10k-images-idx3-ubyte.gz")), "images").unwrap();
    let labels = read_idx_bytes(&read(&format!("{dir}/t10k-labels-idx1-ubyte.gz")), "labels").unwrap();
    (idx(&[n as u32, 28, 28], &images.data[..n * 784]), idx(&[n as u32], &labels.data[..n]))
}

fn fuzz_idx(f: &mut Fuzz) {
    let (images, labels) = mnist_subset(20);
    let real = read("data/mnist5k/t10k-labels-idx1-ubyte.gz");
    let seeds = [images.clone(), labels, idx(&[2, 3], &[1, 2, 3, 4, 5, 6]), idx(&[], &[7]), idx(&[0, 5], &[])];
    // A gzip bomb: the header announces 16 values, the stream inflates to 64 MiB.
    let mut bomb = idx(&[16], &[]);
    bomb.resize(64 << 20, 0);
    let bomb = gzip(&bomb);
    let mut first = true;
    f.run("idx", |rng| {
        if std::mem::take(&mut first) {
            let bomb = bomb.clone();
            return (
                "gzip bomb: 16 values announced, 64 MiB inflated".to_string(),
                Box::new(move || {
                    let r = read_idx_bytes(&bomb, "bomb.gz");
                    let largest = LARGEST.load(Ordering::Relaxed);
                    match r {
                        _ if largest > 1 << 20 => {
                            Verdict::Bad(format!("inflated a gzip bomb: an allocation of {largest} bytes"))
                        }
                        Ok(_) => Verdict::Bad("loaded a gzip bomb".into()),
                        Err(e) => Verdict::Err(e),
                    }
                }),
            );
        }
        let (bytes, desc) = if rng.random_bool(0.05) {
            let mut b = real.clone();
            let bl = b.len();
            let d = mutate(rng, &mut b, &[10, bl - 8]);
            (b, format!("real labels .gz: {d}"))
        } else {
            {
                let seed: &Vec<u8> = pick(rng, &seeds);
                mutate_idx(rng, seed)
            }
        };
        (
            desc,
            Box::new(move || {
                let valid = if bytes.starts_with(&[0x1f, 0x8b]) { gunzip(&bytes) } else { Ok(bytes.clone()) };
                let expect = valid.clone().and_then(|raw| idx_oracle(&raw).map(|_| ()));
                agree(read_idx_bytes(&bytes, "fuzz.idx"), expect, |a| {
                    let raw = valid.unwrap_or_default();
                    let (dims, header) = idx_oracle(&raw).unwrap_or_default();
                    if a.dims != dims || a.data != raw[header..] {
                        Verdict::Bad(format!(
                            "read dims {:?}, {} values; the file holds {dims:?}",
                            a.dims,
                            a.data.len()
                        ))
                    } else {
                        Verdict::Ok
                    }
                })
            }),
        )
    });
}

fn fuzz_mnist(f: &mut Fuzz) {
    let dir = f.dir("mnist");
    let (images, labels) = mnist_subset(12);
    f.run("mnist", |rng| {
        let mut img = images.clone();
        let mut lab = labels.clone();
        let mut desc = Vec::new();
        // Labels: a few set to values at and past the class count.
        for _ in 0..rng.random_range(0..3) {
            let i = rng.random_range(8..lab.len());
            let v = *pick(rng, &[9u8, 10, 11, 200, 255, 0]);
            lab[i] = v;
            desc.push(format!("label[{}] -> {v}", i - 8));
        }
        if rng.random_bool(0.3) {
            let images = rng.random_bool(0.5);
            let (b, d) = mutate_idx(rng, if images { &img } else { &lab });
            desc.push(format!("{}: {d}", if images { "images" } else { "labels" }));
            if images { img = b } else { lab = b }
        }
        let classes = if rng.random_bool(0.5) { None } else { Some(*pick(rng, &[0usize, 1, 5, 10, 11, 201, 256])) };
        let gz = rng.random_bool(0.3);
        let (iname, lname) = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte");
        for n in [iname, lname] {
            let _ = std::fs::remove_file(dir.join(n));
            let _ = std::fs::remove_file(dir.join(format!("{n}.gz")));
        }
        let write = |name: &str, b: &[u8]| {
            if gz && !b.starts_with(&[0x1f, 0x8b]) {
                std::fs::write(dir.join(format!("{name}.gz")), gzip(b)).unwrap();
            } else {
                std::fs::write(dir.join(name), b).unwrap();
            }
        };
        write(iname, &img);
        write(lname, &lab);
        let via_dataset = classes.is_none() && rng.random_bool(0.3);
        let desc = format!("{}; classes {classes:?}; gz {gz}; via load_dataset {via_dataset}", desc.join("; "));
        let dir = dir.clone();
        (
            desc,
            Box::new(move || {
                let k = classes.unwrap_or(10);
                // The oracle: both files valid, 3 and 1 dimensions, equal counts, labels below k.
                let parse = |b: &[u8]| {
                    let raw = if b.starts_with(&[0x1f, 0x8b]) { gunzip(b)? } else { b.to_vec() };
                    idx_oracle(&raw).map(|(d, h)| (d, raw[h..].to_vec()))
                };
                let expect = (|| {
                    let ((idims, _), (ldims, ldata)) = (parse(&img)?, parse(&lab)?);
                    if idims.len() != 3 || ldims.len() != 1 || idims[0] != ldims[0] {
                        return Err(format!("dims {idims:?} and {ldims:?}"));
                    }
                    if k == 0 {
                        return Err("0 classes".into());
                    }
                    if let Some(l) = ldata.iter().find(|&&l| usize::from(l) >= k) {
                        return Err(format!("label {l} of {k} classes"));
                    }
                    Ok(ldata)
                })();
                let r = match (via_dataset, classes) {
                    (true, _) => load_dataset(&dir, Split::Test, None, None),
                    (false, None) => load_mnist(&dir, Split::Test),
                    (false, Some(k)) => load_mnist_with_classes(&dir, Split::Test, k),
                };
                let want = expect.clone().unwrap_or_default();
                agree(r, expect.map(|_| ()), |d| {
                    let labels: Vec<usize> = want.iter().map(|&l| usize::from(l)).collect();
                    if d.labels() != labels || d.classes != k {
                        Verdict::Bad(format!(
                            "labels {:?} of {} classes; the file says {labels:?} of {k}",
                            d.labels(),
                            d.classes
                        ))
                    } else {
                        Verdict::Ok
                    }
                })
            }),
        )
    });
}

fn fuzz_cifar(f: &mut Fuzz) {
    let dir = f.dir("cifar");
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    f.run("cifar10", |rng| {
        let n = rng.random_range(0..4);
        let mut labels: Vec<u8> = (0..n).map(|_| rng.random_range(0..10)).collect();
        let mut desc = vec![format!("{n} records")];
        if n > 0 && rng.random_bool(0.4) {
            let i = rng.random_range(0..n);
            labels[i] = *pick(rng, &[9u8, 10, 11, 200, 255]);
            desc.push(format!("label[{i}] -> {}", labels[i]));
        }
        let mut bytes = Vec::new();
        for (k, &l) in labels.iter().enumerate() {
            bytes.push(l);
            bytes.extend((0..3072).map(|i| ((i * 7 + k * 13) % 256) as u8));
        }
        if rng.random_bool(0.3) {
            let bounds: Vec<usize> = (0..=n).map(|k| k * CIFAR10_RECORD_BYTES).collect();
            desc.push(mutate(rng, &mut bytes, &bounds));
        }
        let meta = match rng.random_range(0..5) {
            0 => Some(names.as_bytes().to_vec()),
            1 => Some(b"cat\ndog\n".to_vec()),
            2 => Some(vec![0xff, 0xfe, b'\n']),
            _ => None,
        };
        desc.push(format!("meta {:?}", meta.as_ref().map(|m| m.len())));
        std::fs::write(dir.join("test_batch.bin"), &bytes).unwrap();
        match &meta {
            Some(m) => std::fs::write(dir.join("batches.meta.txt"), m).unwrap(),
            None => {
                let _ = std::fs::remove_file(dir.join("batches.meta.txt"));
            }
        }
        let dir = dir.clone();
        (
            desc.join("; "),
            Box::new(move || {
                let expect = if bytes.is_empty() || bytes.len() % CIFAR10_RECORD_BYTES != 0 {
                    Err("length".to_string())
                } else if bytes.chunks(CIFAR10_RECORD_BYTES).any(|r| r[0] >= 10) {
                    Err("label".to_string())
                } else if meta.as_ref().is_some_and(|m| m != names.as_bytes()) {
                    Err("class names".to_string())
                } else {
                    Ok(())
                };
                let r = if rng_free_choice(&bytes) {
                    load_dataset(&dir, Split::Test, None, None)
                } else {
                    load_cifar10(&dir, Split::Test)
                };
                agree(r, expect, |d| {
                    let want: Vec<usize> = bytes.chunks(CIFAR10_RECORD_BYTES).map(|r| usize::from(r[0])).collect();
                    if d.labels() != want || d.classes != 10 || d.shape() != (3, 32, 32) {
                        return Verdict::Bad(format!("labels {:?}, want {want:?}", d.labels()));
                    }
                    // A few pixels, by the documented layout: record k, byte 1 + i.
                    for (k, i) in [(0, 0), (0, 3071), (d.len() - 1, 1500)] {
                        let (img, _) = d.get(k).unwrap();
                        let (c, y, x) = (i / 1024, i % 1024 / 32, i % 32);
                        let want = f32::from(bytes[k * CIFAR10_RECORD_BYTES + 1 + i]) / 255.0;
                        if img.get(c, y, x) != want {
                            return Verdict::Bad(format!("record {k} pixel {i}: {} != {want}", img.get(c, y, x)));
                        }
                    }
                    Verdict::Ok
                })
            }),
        )
    });
}

/// Either entry point, chosen by the input (so the choice needs no generator in the check).
fn rng_free_choice(bytes: &[u8]) -> bool {
    bytes.len() % 3 == 0
}

/// Class names of the image-folder cases, with the gray level of their images.
const POOL: [(&str, u8); 5] = [("ant", 10), ("bee", 60), ("cat", 110), ("dog", 160), ("eel", 210)];

fn fuzz_image_folder(f: &mut Fuzz) {
    let root = f.dir("folder");
    f.run("image_folder", |rng| {
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let subset =
            |rng: &mut ChaCha8Rng| -> Vec<usize> { (0..POOL.len()).filter(|_| rng.random_bool(0.5)).collect() };
        let train = rng.random_bool(0.85).then(|| subset(rng));
        let test_name = *pick(rng, &["test", "val", "none"]);
        let test = (test_name != "none").then(|| subset(rng));
        let mut bad: Vec<String> = Vec::new(); // what makes a split unloadable, with the split's folder
        let mut write_split = |rng: &mut ChaCha8Rng, split: &str, classes: &[usize]| {
            for &c in classes {
                let (name, gray) = POOL[c];
                let folder = root.join(split).join(name);
                std::fs::create_dir_all(&folder).unwrap();
                match rng.random_range(0..12) {
                    0 => bad.push(format!("{split}: empty {name}")),
                    1 => {
                        std::fs::write(folder.join("broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
                        bad.push(format!("{split}: broken image in {name}"));
                    }
                    k => {
                        for i in 0..(k % 2 + 1) {
                            ::image::GrayImage::from_pixel(3, 2, ::image::Luma([gray]))
                                .save(folder.join(format!("{i}.png")))
                                .unwrap();
                        }
                        std::fs::write(folder.join("notes.txt"), b"not an image").unwrap();
                        std::fs::write(folder.join(".hidden.png"), b"hidden").unwrap();
                    }
                }
            }
            std::fs::create_dir_all(root.join(split)).unwrap();
        };
        if let Some(t) = &train {
            write_split(rng, "train", t);
        }
        if let Some(t) = &test {
            write_split(rng, test_name, t);
        }
        let split = if rng.random_bool(0.5) { Split::Train } else { Split::Test };
        let via_dataset = rng.random_bool(0.3);
        let desc = format!(
            "train {train:?}, {test_name} {test:?}, {split:?}, problems {bad:?}, via load_dataset {via_dataset}"
        );
        let root = root.clone();
        (
            desc,
            Box::new(move || {
                // The oracle, from the documented rules.
                let names = |c: &[usize]| -> Vec<&str> { c.iter().map(|&i| POOL[i].0).collect() };
                let expect: Result<Vec<&str>, String> = (|| {
                    let (wanted, folder) = match split {
                        Split::Train => (train.as_ref(), "train"),
                        Split::Test => (test.as_ref(), test_name),
                    };
                    let wanted = wanted.ok_or("no folder")?;
                    if wanted.is_empty() {
                        return Err("no classes".into());
                    }
                    if let (Some(tr), Some(te)) = (&train, &test) {
                        if tr.is_empty() {
                            return Err("train/ has no classes".into());
                        }
                        if te.iter().any(|c| !tr.contains(c)) {
                            return Err("a test class not in train".into());
                        }
                        if te.is_empty() && split == Split::Train {
                            return Err("test/ has no classes".into());
                        }
                    }
                    if bad.iter().any(|b| b.starts_with(&format!("{folder}:"))) {
                        return Err("empty or broken".into());
                    }
                    Ok(names(train.as_deref().unwrap_or(wanted)))
                })();
                let r = if via_dataset && (train.is_some() || test.is_some()) {
                    load_dataset(&root, split, Some((2, 2)), Some(1))
                } else {
                    load_image_folder_split(&root, split, (2, 2), Channels::Gray)
                };
                let want = expect.clone().unwrap_or_default();
                agree(r, expect.map(|_| ()), |d| {
                    let got: Vec<&str> = d.class_names().unwrap_or_default().iter().map(String::as_str).collect();
                    if got != want || d.classes != want.len() {
                        return Verdict::Bad(format!("classes {got:?}, want {want:?}"));
                    }
                    for i in 0..d.len() {
                        let (img, label) = d.get(i).unwrap();
                        let gray = (img.get(0, 0, 0) * 255.0).round() as u8;
                        let Some(&(name, _)) = POOL.iter().find(|p| p.1 == gray) else {
                            return Verdict::Bad(format!("image {i}: gray {gray} is no class's"));
                        };
                        if label >= d.classes || want[label] != name {
                            return Verdict::Bad(format!(
                                "image {i} of class {name} labelled {label} ({:?})",
                                want.get(label)
                            ));
                        }
                    }
                    Verdict::Ok
                })
            }),
        )
    });
}

// ---------------------------------------------------------------------------------------------
// Images.

/// The CRC-32 (IEEE) of PNG chunks (flate2's, the one gzip uses).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// Chunk boundaries of a PNG, and the IHDR data offset.
fn png_chunks(b: &[u8]) -> Vec<usize> {
    let mut out = vec![8];
    let mut i = 8;
    while i + 8 <= b.len() {
        let n = u32::from_be_bytes(b[i..i + 4].try_into().unwrap()) as usize;
        i = i.saturating_add(12).saturating_add(n);
        out.push(i.min(b.len()));
    }
    out
}

fn encode(img: ::image::DynamicImage, format: ::image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), format).unwrap();
    out
}

fn fuzz_image(f: &mut Fuzz) {
    use ::image::{DynamicImage, ImageBuffer, ImageFormat, Luma, Rgb, Rgba};
    let dir = f.dir("image");
    let rgb = DynamicImage::ImageRgb8(ImageBuffer::from_fn(8, 6, |x, y| Rgb([(x * 30) as u8, (y * 40) as u8, 7])));
    let seeds: Vec<(Vec<u8>, &str)> = vec![
        (encode(rgb.clone(), ImageFormat::Png), "png"),
        (encode(DynamicImage::ImageLuma8(ImageBuffer::from_pixel(5, 3, Luma([99]))), ImageFormat::Png), "png"),
        (encode(DynamicImage::ImageRgba8(ImageBuffer::from_pixel(4, 4, Rgba([1, 2, 3, 4]))), ImageFormat::Png), "png"),
        (encode(DynamicImage::ImageLuma16(ImageBuffer::from_pixel(3, 3, Luma([40000]))), ImageFormat::Png), "png"),
        (encode(rgb.clone(), ImageFormat::Jpeg), "jpg"),
        (encode(rgb.clone(), ImageFormat::Bmp), "bmp"),
        (encode(rgb, ImageFormat::Gif), "gif"),
        (read("data/images/rocket.jpg"), "jpg"),
        (read("data/images/chelsea.png"), "png"),
    ];
    f.run("image", |rng| {
        // The two real photographs rarely: each costs a full decode.
        let k = if rng.random_bool(0.06) { rng.random_range(7..9) } else { rng.random_range(0..7) };
        let (seed, ext) = &seeds[k];
        let mut b = seed.clone();
        let sides = [0u32, 1, 2, 65_535, 65_536, 65_537, 1 << 20, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff];
        let desc = match rng.random_range(0..3) {
            // PNG: IHDR width and height, CRC fixed up so that the decoder trusts them.
            0 if *ext == "png" => {
                let (w, h) = (*pick(rng, &sides), *pick(rng, &[1u32, 2, 2048, 2049, 65_536, 0x7fff_ffff]));
                b[16..20].copy_from_slice(&w.to_be_bytes());
                b[20..24].copy_from_slice(&h.to_be_bytes());
                let crc = crc32(&b[12..29]);
                b[29..33].copy_from_slice(&crc.to_be_bytes());
                format!("seed {k} IHDR {w} x {h}")
            }
            // JPEG: the frame header's height and width.
            0 if *ext == "jpg" => match b.windows(2).position(|w| w[0] == 0xff && matches!(w[1], 0xc0 | 0xc2)) {
                Some(sof) if sof + 9 <= b.len() => {
                    let (h, w) = (*pick(rng, &[0u16, 1, 65_535, 30_000]), *pick(rng, &[0u16, 1, 65_535, 30_000]));
                    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
                    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
                    format!("seed {k} SOF {w} x {h}")
                }
                _ => format!("seed {k} no SOF"),
            },
            0 if *ext == "bmp" => {
                let (w, h) = (*pick(rng, &sides), *pick(rng, &sides));
                b[18..22].copy_from_slice(&w.to_le_bytes());
                b[22..26].copy_from_slice(&h.to_le_bytes());
                format!("seed {k} BMP {w} x {h}")
            }
            _ => {
                let bounds = if *ext == "png" { png_chunks(&b) } else { vec![2, 20, b.len() / 2] };
                format!("seed {k}: {}", mutate_some(rng, &mut b, &bounds))
            }
        };
        let ext = if rng.random_bool(0.1) { "dat" } else { *ext };
        let path = dir.join(format!("case.{ext}"));
        std::fs::write(&path, &b).unwrap();
        let channels = if rng.random_bool(0.5) { Channels::Rgb } else { Channels::Gray };
        (
            desc,
            Box::new(move || match load_image_with(&path, channels) {
                Ok(img) => {
                    let (c, h, w) = img.shape();
                    if c != channels.count()
                        || h == 0
                        || w == 0
                        || h > MAX_IMAGE_SIDE
                        || w > MAX_IMAGE_SIDE
                        || h * w > MAX_IMAGE_PIXELS
                    {
                        return Verdict::Bad(format!("decoded {c} x {h} x {w}"));
                    }
                    match img.as_slice().iter().position(|v| !(0.0..=1.0).contains(v)) {
                        Some(i) => Verdict::Bad(format!("value {} at {i} outside [0, 1]", img.as_slice()[i])),
                        None => Verdict::Ok,
                    }
                }
                Err(e) => Verdict::Err(e),
            }),
        )
    });
}

// ---------------------------------------------------------------------------------------------
// JSON configs.

/// Values that break sizes and types in a JSON config.
fn json_values() -> Vec<Value> {
    vec![
        json!(0),
        json!(1),
        json!(-1),
        json!(3),
        json!(65_536),
        json!(1 << 20),
        json!(4_294_967_296u64),
        json!(u64::MAX),
        json!(1e300),
        json!(1.5),
        json!(-0.0),
        json!("NaN"),
        json!(null),
        json!(true),
        json!("token"),
        json!("avg"),
        json!([]),
        json!({}),
        json!([1, 28, 28]),
        json!([3, 1 << 20, 1 << 20]),
        json!([u64::MAX, 2, 2]),
    ]
}

/// A JSON mutation: a field set to an edge value, removed, an unknown field added, or bytes.
fn mutate_json(rng: &mut ChaCha8Rng, seed: &Value) -> (Vec<u8>, String) {
    let mut v = seed.clone();
    let obj = v.as_object_mut().unwrap();
    let keys: Vec<String> = obj.keys().cloned().collect();
    let mut desc = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let key = pick(rng, &keys).clone();
        match rng.random_range(0..8) {
            0 => {
                obj.remove(&key);
                desc.push(format!("remove {key}"));
            }
            1 => {
                obj.insert("unknown_field".into(), json!(1));
                desc.push("add unknown_field".into());
            }
            _ => {
                let value = pick(rng, &json_values()).clone();
                desc.push(format!("{key} -> {value}"));
                obj.insert(key, value);
            }
        }
    }
    let mut bytes = serde_json::to_vec(&v).unwrap();
    if rng.random_bool(0.15) {
        desc.push(mutate(rng, &mut bytes, &[]));
    }
    (bytes, desc.join("; "))
}

fn fuzz_vit_config(f: &mut Fuzz) {
    let dir = f.dir("vit_config");
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vit");
    let mut seeds: Vec<Value> = std::fs::read_dir(&fixtures)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect();
    seeds.sort_by_key(|v| v.to_string());
    f.run("vit_config", |rng| {
        let seed = pick(rng, &seeds[..]);
        let (bytes, desc) = mutate_json(rng, seed);
        let path = dir.join("config.json");
        std::fs::write(&path, &bytes).unwrap();
        (
            desc,
            Box::new(move || match VitConfig::from_json_file(&path) {
                Ok(c) => {
                    // What a valid config implies, computed here: a whole number of patches, heads
                    // dividing the width, sizes within the limits.
                    let (img, patch) = (c.img_size, c.patch_size);
                    if patch.h == 0
                        || patch.w == 0
                        || img.h % patch.h != 0
                        || img.w % patch.w != 0
                        || c.num_heads == 0
                        || c.embed_dim % c.num_heads != 0
                    {
                        return Verdict::Bad(format!("accepted {c:?}"));
                    }
                    let grid = (img.h / patch.h).checked_mul(img.w / patch.w);
                    let prefix = usize::from(c.class_token).checked_add(c.reg_tokens);
                    let tokens = grid.zip(prefix).and_then(|(g, p)| g.checked_add(p));
                    let pos = tokens.and_then(|t| t.checked_mul(c.embed_dim));
                    let embed = product(&[c.embed_dim, c.in_chans, patch.h, patch.w]);
                    let square = c.embed_dim.checked_mul(c.embed_dim).and_then(|d| d.checked_mul(4));
                    let image = product(&[c.in_chans, img.h, img.w]);
                    for (what, n, limit) in [
                        ("tokens", tokens, MAX_TOKENS),
                        ("pos_embed", pos, MAX_TENSOR_ELEMENTS),
                        ("patch embedding", embed, MAX_TENSOR_ELEMENTS),
                        ("a block weight", square, MAX_TENSOR_ELEMENTS),
                        ("the input image", image, MAX_TENSOR_ELEMENTS),
                    ] {
                        if n.is_none_or(|n| n > limit) {
                            return Verdict::Bad(format!(
                                "accepted a config whose {what} ({n:?}) exceeds {limit}: {c:?}"
                            ));
                        }
                    }
                    // Small enough to build cheaply: it must build.
                    let params = embed
                        .unwrap_or(usize::MAX)
                        .saturating_add(square.unwrap_or(usize::MAX).saturating_mul(c.depth));
                    if params <= 1 << 20 && pos.is_some_and(|p| p <= 1 << 20) {
                        if let Err(e) = Vit::new(c.clone(), &mut Init::new(0)) {
                            return Verdict::Bad(format!("a valid config does not build: {e}"));
                        }
                    }
                    Verdict::Ok
                }
                Err(e) => Verdict::Err(e),
            }),
        )
    });
}

fn fuzz_patch_model_config(f: &mut Fuzz) {
    let seeds =
        [serde_json::to_value(PatchGatConfig::mnist()).unwrap(), serde_json::to_value(VigConfig::mnist()).unwrap()];
    f.run("patch_model_config", |rng| {
        let k = rng.random_range(0..2);
        let (bytes, desc) = mutate_json(rng, &seeds[k]);
        let desc = format!("{}: {desc}", ["PatchGat", "Vig"][k]);
        (
            desc,
            Box::new(move || {
                // Only models that are cheap to build are built; a bigger one that parses counts as
                // a success of the parser (its size checks are what the ViT case asserts for ViT).
                let small = |image: (usize, usize, usize), dim: usize, depth: usize| {
                    product(&[image.0, image.1, image.2]).is_some_and(|n| n <= 1 << 16)
                        && product(&[dim, dim, depth.max(1), 16]).is_some_and(|n| n <= 1 << 22)
                };
                let bad_json = |e: serde_json::Error| {
                    Verdict::Err(Error::Format { path: "config.json".into(), reason: e.to_string() })
                };
                if k == 0 {
                    match serde_json::from_slice::<PatchGatConfig>(&bytes) {
                        Ok(c) if small(c.image, c.dim, c.depth) => {
                            PatchGat::new(c, &mut Init::new(0)).map(|_| ()).into()
                        }
                        Ok(_) => Verdict::Ok,
                        Err(e) => bad_json(e),
                    }
                } else {
                    match serde_json::from_slice::<VigConfig>(&bytes) {
                        Ok(c) if small(c.image, c.dim, c.depth) => Vig::new(c, &mut Init::new(0)).map(|_| ()).into(),
                        Ok(_) => Verdict::Ok,
                        Err(e) => bad_json(e),
                    }
                }
            }),
        )
    });
}

// ---------------------------------------------------------------------------------------------
// Graphs.

/// Checks a built graph: every source below the node count, offsets consistent.
fn check_graph(g: &Graph) -> Result<(), String> {
    let n = g.num_nodes();
    let mut edges = 0usize;
    for i in 0..n {
        for j in g.incoming(i) {
            if j >= n {
                return Err(format!("node {i} has source {j} of {n} nodes"));
            }
            edges += 1;
        }
    }
    if edges != g.num_edges() {
        return Err(format!("{edges} edges listed, num_edges says {}", g.num_edges()));
    }
    Ok(())
}

fn fuzz_graph_spec(f: &mut Fuzz) {
    let names = [
        "complete",
        "grid4",
        "grid8",
        "grid",
        "window",
        "nat",
        "knn",
        "fknn",
        "fknn-cos",
        "random",
        "knn-feature",
        "graph",
        "",
    ];
    let fields = [
        "0",
        "1",
        "2",
        "3",
        "4",
        "5",
        "7",
        "8",
        "16",
        "17",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "99999999999999999999",
        "-1",
        "",
        "dilation=2",
        "dilation=",
        "x",
        "1.5",
        " 3",
        "+3",
    ];
    f.run("graph_spec", |rng| {
        let mut s = pick(rng, &names).to_string();
        for _ in 0..*pick(rng, &[0, 1, 1, 2, 2, 3]) {
            s.push(':');
            let field: &&str = pick(rng, &fields[..]);
            s.push_str(field);
        }
        let (rows, cols) = (rng.random_range(1..=6), rng.random_range(1..=6));
        let token = rng.random_bool(0.5);
        let nan = rng.random_bool(0.05);
        let features: Vec<f32> =
            (0..rows * cols * 3).map(|i| if nan && i == 4 { f32::NAN } else { rng.random_range(-1.0..1.0) }).collect();
        let with_features = rng.random_bool(0.9);
        let desc = format!("`{s}` on {rows} x {cols}, token {token}, features {with_features}, NaN {nan}");
        (
            desc,
            Box::new(move || {
                let spec: GraphSpec = match s.parse() {
                    Ok(spec) => spec,
                    Err(e) => return Verdict::Err(e),
                };
                // The canonical form parses back to the same spec.
                match spec.to_string().parse::<GraphSpec>() {
                    Ok(back) if back == spec => {}
                    other => return Verdict::Bad(format!("`{spec}` does not round-trip: {other:?}")),
                }
                let x = Matrix::from_vec(rows * cols, 3, features).unwrap();
                match spec.build(rows, cols, with_features.then_some(&x), token) {
                    Ok(g) => {
                        let want = rows * cols + usize::from(token);
                        if g.num_nodes() != want {
                            return Verdict::Bad(format!("{} nodes, want {want}", g.num_nodes()));
                        }
                        check_graph(&g).map_or_else(Verdict::Bad, |()| Verdict::Ok)
                    }
                    Err(e) => Verdict::Err(e),
                }
            }),
        )
    });
}

fn fuzz_edge_index(f: &mut Fuzz) {
    f.run("edge_index", |rng| {
        let n = *pick(rng, &[0usize, 1, 2, 3, 5, 8, 5000, usize::MAX]);
        let e = rng.random_range(0..12);
        let index = |rng: &mut ChaCha8Rng| -> i64 {
            match rng.random_range(0..20) {
                0 => -1,
                1 => i64::MIN,
                2 => n.min(i64::MAX as usize) as i64,
                3 => i64::MAX,
                _ => rng.random_range(0..n.clamp(1, 8) as i64),
            }
        };
        let mut data: Vec<i64> = (0..2 * e).map(|_| index(rng)).collect();
        let mut shape = vec![2, e];
        let mut desc = format!("{n} nodes, {e} edges");
        match rng.random_range(0..10) {
            0 => {
                shape[1] = *pick(rng, &[e + 1, usize::MAX / 2 + 1, usize::MAX, 0]);
                desc.push_str(&format!(", shape[1] -> {}", shape[1]));
            }
            1 => {
                shape = vec![*pick(rng, &[1usize, 3]), e];
                desc.push_str(&format!(", shape {shape:?}"));
            }
            2 => {
                data.pop();
                desc.push_str(", one value short");
            }
            _ => {}
        }
        let tensor = rng.random_bool(0.5);
        desc.push_str(if tensor { ", as a tensor" } else { ", as usize rows" });
        (
            desc,
            Box::new(move || {
                // The oracle: shape [2, E] with 2E values, every index in 0..n, n within u32.
                let expect = if shape.len() != 2 || shape[0] != 2 || shape[1].checked_mul(2) != Some(data.len()) {
                    Err("shape".to_string())
                } else if data.iter().any(|&v| v < 0 || v as u64 >= n as u64) {
                    Err("index".to_string())
                } else if n > u32::MAX as usize {
                    Err("nodes".to_string())
                } else {
                    Ok(())
                };
                let r = if tensor {
                    Graph::from_edge_index_tensor(n, &shape, &data)
                } else {
                    // As usize rows: a negative index wraps to a huge one, which must be refused as
                    // out of range; a short row is a length mismatch.
                    let e = data.len() / 2 + data.len() % 2;
                    let src: Vec<usize> = data[..e.min(data.len())].iter().map(|&v| v as usize).collect();
                    let dst: Vec<usize> = data[e.min(data.len())..].iter().map(|&v| v as usize).collect();
                    Graph::from_edge_index(n, &src, &dst)
                };
                // The usize form has no shape: only its length and indices count.
                let expect = if tensor {
                    expect
                } else if data.len() % 2 != 0 {
                    Err("lengths".into())
                } else if data.iter().any(|&v| v < 0 || v as u64 >= n as u64) {
                    Err("index".into())
                } else if n > u32::MAX as usize {
                    Err("nodes".into())
                } else {
                    Ok(())
                };
                let pairs: Vec<(usize, usize)> = {
                    let e = data.len() / 2;
                    (0..e).map(|k| (data[k] as usize, data[e + k] as usize)).collect()
                };
                agree(r, expect, |g| {
                    if let Err(why) = check_graph(&g) {
                        return Verdict::Bad(why);
                    }
                    // The same multiset of edges, in the input order within each destination.
                    let mut got: Vec<(usize, usize)> = Vec::new();
                    for i in 0..g.num_nodes().min(64) {
                        got.extend(g.incoming(i).map(|j| (j, i)));
                    }
                    let mut want = pairs.clone();
                    want.sort_by_key(|&(_, t)| t);
                    if got != want {
                        return Verdict::Bad(format!("edges {got:?}, want {want:?}"));
                    }
                    Verdict::Ok
                })
            }),
        )
    });
}

// ---------------------------------------------------------------------------------------------

thread_local! {
    /// Whether a case's check is running (its panics are recorded, not printed).
    static IN_CASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The whole run: every loader in turn (one test, so that the allocation record is not shared
/// with another test's thread).
#[test]
fn fuzz_every_loader() {
    let start = Instant::now();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = info.to_string();
        // the harness's own panics (outside a case) are printed, not swallowed
        if !IN_CASE.with(|c| c.get()) {
            eprintln!("{info}");
        }
    }));
    let mut f = Fuzz::new();
    fuzz_safetensors(&mut f);
    fuzz_npy(&mut f);
    fuzz_npz(&mut f);
    fuzz_adamw(&mut f);
    fuzz_pth(&mut f);
    fuzz_pickle(&mut f);
    fuzz_idx(&mut f);
    fuzz_mnist(&mut f);
    fuzz_cifar(&mut f);
    fuzz_image_folder(&mut f);
    fuzz_image(&mut f);
    fuzz_vit_config(&mut f);
    fuzz_patch_model_config(&mut f);
    fuzz_graph_spec(&mut f);
    fuzz_edge_index(&mut f);
    std::panic::set_hook(previous);
    f.report();
    println!("run time {:.1} s", start.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&f.tmp);
    assert!(f.failures.is_empty(), "{} fuzz failures:\n{}", f.failures.len(), f.failures.join("\n"));
}

/// The bombs that may abort or hang, run by [`in_child`] in a child process; anywhere else
/// (`cargo test -- --ignored`) it does nothing.
#[test]
#[ignore = "run by fuzz_every_loader in a child process"]
fn fuzz_child() {
    let Ok(name) = std::env::var("PATCHGRAPH_FUZZ_CHILD") else { return };
    set_case(&format!("child bomb {name}"));
    let run = std::thread::Builder::new().name(format!("fuzz child {name}")).stack_size(2 << 20);
    let verdict = run.spawn(move || child_bomb(&name)).unwrap().join();
    println!("fuzz child: {}", verdict.unwrap_or_else(|_| "PANIC (the child's stderr has it)".into()));
}

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
//! huge sizes. Every case draws from its own `ChaCha8Rng`, seeded from a master `ChaCha8Rng`
//! (seed 0), and its seed is printed with any failure so that `PATCHGRAPH_FUZZ_REPRO` reruns it.
//!
//! For every case it asserts:
//!
//! - **no panic**: the call runs under `catch_unwind`; a panic is a failure naming the case;
//! - **no abort, no allocation beyond [`ALLOC_BOUND`] (1 GiB)**: the global allocator of this
//!   test binary wraps `System`, records the largest single request and *refuses* (returns
//!   null, after printing the size and the case to stderr) any single request above 1 GiB.
//!   A refused request aborts the process (`handle_alloc_error`), so the last line on stderr
//!   names the culprit; after each case the largest request is checked to be below the bound
//!   (and, for the gzip bomb, below 1 MiB);
//! - **typed errors**: every failure is a `patchgraph::Error` with a non-empty `Display`;
//! - **only valid loads succeed**: shapes' products equal the data lengths, labels are below
//!   the class count (and image-folder labels name the right class), graph sources are below
//!   the node count, decoded images have a nonzero size within the limits and values in
//!   `[0, 1]`. Where the validity of an input is simple to state (IDX, CIFAR-10, image folders,
//!   edge lists), an independent oracle decides whether it must load, and the loader must agree.
//!
//! At the end it prints, per loader, the cases, the successes, the errors by variant and the
//! largest allocation, then fails listing every failure if there was any.

use patchgraph::Error;
use patchgraph::checkpoint::{TensorMap, read_npy};
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

/// The current case's description, in a fixed buffer so that the allocator can print it
/// without allocating.
static CASE: Mutex<([u8; 400], usize)> = Mutex::new(([0; 400], 0));

struct Guard;

impl Guard {
    /// Records `size`; true (after printing the size and the case) if it must be refused.
    fn refuse(size: usize) -> bool {
        LARGEST.fetch_max(size, Ordering::Relaxed);
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
        let mut seeds: Vec<u64> = {
            // Each loader its own stream from the master seed, so that loaders do not shift
            // each other's cases.
            let mut master = ChaCha8Rng::seed_from_u64(self.master);
            master.set_stream(loader.bytes().fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
            (0..base * self.factor).map(|_| master.next_u64()).collect()
        };
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

//! A restricted pickle machine: it builds a tree of plain values from a pickle and never calls,
//! imports or constructs anything the file names.
//!
//! PyTorch checkpoints (`torch.save`) are pickles. Python's own unpickler resolves every
//! `GLOBAL` it meets by importing it and calls whatever `REDUCE` names, so a `.pth` file can run
//! any code. This machine understands the same subset as `torch.load(weights_only=True)` and no
//! more:
//!
//! ```text
//! values   NONE NEWTRUE NEWFALSE BININT BININT1 BININT2 LONG1 LONG4 BINFLOAT
//!          BINUNICODE SHORT_BINUNICODE BINUNICODE8 SHORT_BINSTRING BINSTRING
//!          SHORT_BINBYTES BINBYTES BINBYTES8 BYTEARRAY8
//! builders EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 EMPTY_LIST LIST APPEND APPENDS
//!          EMPTY_DICT DICT SETITEM SETITEMS EMPTY_SET ADDITEMS FROZENSET
//! stack    MARK POP POP_MARK DUP   memo  BINPUT LONG_BINPUT MEMOIZE BINGET LONG_BINGET
//! framing  PROTO FRAME STOP       storages  BINPERSID -> Storage { key, dtype, numel }
//! globals  GLOBAL STACK_GLOBAL -> a known global (below), or Refused(name)
//! applying REDUCE NEWOBJ NEWOBJ_EX BUILD: interpreted for the known globals only
//! ```
//!
//! Known globals are data, interpreted here, never looked up: `collections.OrderedDict`,
//! `torch._utils._rebuild_tensor{,_v2}` (-> [`Node::Tensor`], a view of a storage with an
//! offset and strides), `torch._utils._rebuild_parameter{,_with_state}`,
//! `torch.nn.parameter.Parameter`, `torch._tensor._rebuild_from_type_v2`, the storage classes
//! (`torch.FloatStorage`, `torch.HalfStorage`, ...), `torch.Size`, `torch.device`,
//! `_codecs.encode` (bytes in protocol 2), `builtins.set` / `bytearray`, the `torch.jit._pickle`
//! helpers (identity on their data), and the `__torch__.*` classes of a TorchScript archive
//! (objects whose `BUILD` state holds their attributes). Any other global (`os.system`,
//! `builtins.eval`, `argparse.Namespace`, a model class) becomes [`Node::Refused`] naming it:
//! applying or building it only yields the same refusal, and whoever reads a value that holds
//! one reports an error naming the global. Text-protocol opcodes and `INST` / `OBJ` / `EXT*` are
//! refused outright.
//!
//! ```
//! use patchgraph::checkpoint::pickle::{Node, unpickle};
//! // pickle.dumps({"a": 1}, protocol=2)
//! let bytes = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.";
//! let tree = unpickle(bytes, "example").unwrap();
//! let Node::Dict(items) = tree.node(tree.root) else { panic!() };
//! assert!(matches!(tree.node(items[0].1), Node::Int(1)));
//! // pickle.dumps(os.system) names a global that weights never need: refused, never called
//! let evil = b"\x80\x02cposix\nsystem\nq\x00.";
//! let tree = unpickle(evil, "evil").unwrap();
//! assert!(matches!(tree.node(tree.root), Node::Refused(name) if name == "posix.system"));
//! ```

use crate::error::{Error, Result};
use std::collections::BTreeMap;

/// A node of the tree, by index into [`Pickle::nodes`].
pub type Id = usize;

/// The element type of a storage, from its class name (`torch.FloatStorage` -> `F32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StorageDtype {
    /// `FloatStorage`
    F32,
    /// `DoubleStorage`
    F64,
    /// `HalfStorage`
    F16,
    /// `BFloat16Storage`
    BF16,
    /// `LongStorage`
    I64,
    /// `IntStorage`
    I32,
    /// `ShortStorage`
    I16,
    /// `CharStorage`
    I8,
    /// `ByteStorage`
    U8,
    /// `BoolStorage`
    Bool,
}

impl StorageDtype {
    /// The storage class name's dtype, or `None` for one that is not read (complex, quantised).
    pub fn from_class(name: &str) -> Option<StorageDtype> {
        Some(match name {
            "FloatStorage" => StorageDtype::F32,
            "DoubleStorage" => StorageDtype::F64,
            "HalfStorage" => StorageDtype::F16,
            "BFloat16Storage" => StorageDtype::BF16,
            "LongStorage" => StorageDtype::I64,
            "IntStorage" => StorageDtype::I32,
            "ShortStorage" => StorageDtype::I16,
            "CharStorage" => StorageDtype::I8,
            "ByteStorage" => StorageDtype::U8,
            "BoolStorage" => StorageDtype::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F64 | StorageDtype::I64 => 8,
            StorageDtype::F32 | StorageDtype::I32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 | StorageDtype::I16 => 2,
            StorageDtype::I8 | StorageDtype::U8 | StorageDtype::Bool => 1,
        }
    }

    /// Whether the elements are floating point (read as f32).
    pub fn is_float(self) -> bool {
        matches!(self, StorageDtype::F32 | StorageDtype::F64 | StorageDtype::F16 | StorageDtype::BF16)
    }
}

/// A global the machine interprets (never imports).
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    /// `collections.OrderedDict`, `collections.Counter`: a dict.
    Dict,
    /// `torch._utils._rebuild_tensor_v2` / `_rebuild_tensor`: a strided view of a storage.
    RebuildTensor,
    /// `torch._utils._rebuild_parameter{,_with_state}`, `torch.nn.parameter.Parameter`: its data.
    Parameter,
    /// `torch._tensor._rebuild_from_type_v2(func, type, args, state)`: `func(*args)`.
    RebuildFromType,
    /// A storage class (`torch.FloatStorage`, ...), or one that is not read (its name).
    Storage(Result<StorageDtype, String>),
    /// `torch.Size`: a tuple.
    Size,
    /// `torch.device`: its string.
    Device,
    /// `_codecs.encode(str, "latin1")`: bytes.
    Encode,
    /// `builtins.set` / `builtins.frozenset`.
    Set,
    /// `builtins.bytearray`.
    Bytearray,
    /// `torch.jit._pickle.*` and `torch.serialization._get_layout`: their first argument.
    Identity(String),
    /// A dtype or layout constant (`torch.float32`, `torch.strided`): a name, nothing to call.
    Constant(String),
    /// A TorchScript class (`__torch__.*`): objects with attributes.
    Class(String),
}

/// One value of the tree.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// `None`
    None,
    /// `True` / `False`
    Bool(bool),
    /// An integer (beyond 64 bits: an error).
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Id>),
    /// A list.
    List(Vec<Id>),
    /// A dict (in insertion order; keys are nodes).
    Dict(Vec<(Id, Id)>),
    /// A set.
    Set(Vec<Id>),
    /// A known global, not applied.
    Global(Global),
    /// A storage named by a persistent id `('storage', class, key, location, numel)`.
    Storage {
        /// The archive's key (`data/<key>` in a zip archive).
        key: String,
        /// Element type.
        dtype: StorageDtype,
        /// Elements.
        numel: usize,
    },
    /// A tensor: `shape` / `stride` (in elements) view of storage node `storage` from `offset`.
    Tensor {
        /// The [`Node::Storage`] it views.
        storage: Id,
        /// First element.
        offset: usize,
        /// Shape.
        shape: Vec<usize>,
        /// Strides in elements.
        stride: Vec<usize>,
    },
    /// An object of a TorchScript class: its attributes (a dict node) once built.
    Object {
        /// The class (`__torch__.torch.nn.modules.linear.Linear`).
        class: String,
        /// The `BUILD` state, usually a dict of attributes.
        state: Option<Id>,
    },
    /// Something made from a global that is not allowed: the global's dotted name. Nothing was
    /// imported or called.
    Refused(String),
}

/// The tree of one pickle.
#[derive(Clone, Debug)]
pub struct Pickle {
    /// Every node; children refer to earlier or later nodes by index.
    pub nodes: Vec<Node>,
    /// The pickled object.
    pub root: Id,
}

impl Pickle {
    /// The node `id`.
    pub fn node(&self, id: Id) -> &Node {
        &self.nodes[id]
    }

    /// The string of a [`Node::Str`], else `None`.
    pub fn str(&self, id: Id) -> Option<&str> {
        match &self.nodes[id] {
            Node::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer of a [`Node::Int`] (or a bool), else `None`.
    pub fn int(&self, id: Id) -> Option<i64> {
        match self.nodes[id] {
            Node::Int(i) => Some(i),
            Node::Bool(b) => Some(b as i64),
            _ => None,
        }
    }

    /// The items of a tuple or list, else `None`.
    pub fn seq(&self, id: Id) -> Option<&[Id]> {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) => Some(items),
            _ => None,
        }
    }
}

/// Interprets the known global `module.name`, or refuses it.
fn global(module: &str, name: &str) -> Node {
    let full = format!("{module}.{name}");
    let g = match (module, name) {
        ("collections", "OrderedDict" | "Counter") => Global::Dict,
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Global::Parameter,
        ("torch.nn.parameter", "Parameter") => Global::Parameter,
        ("torch._tensor", "_rebuild_from_type_v2") => Global::RebuildFromType,
        ("torch", n) if n.ends_with("Storage") => {
            Global::Storage(StorageDtype::from_class(n).ok_or_else(|| full.clone()))
        }
        ("torch", "Size") => Global::Size,
        ("torch", "device") => Global::Device,
        ("torch", _) if is_torch_constant(name) => Global::Constant(full),
        ("_codecs", "encode") => Global::Encode,
        ("builtins" | "__builtin__", "set" | "frozenset") => Global::Set,
        ("builtins" | "__builtin__", "bytearray") => Global::Bytearray,
        ("torch.jit._pickle", _) | ("torch.serialization", "_get_layout") => Global::Identity(full),
        (m, _) if m == "__torch__" || m.starts_with("__torch__.") => Global::Class(full),
        _ => return Node::Refused(full),
    };
    Node::Global(g)
}

/// dtype and layout names that torch pickles as plain globals.
fn is_torch_constant(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "float32",
        "float",
        "float64",
        "double",
        "float16",
        "half",
        "bfloat16",
        "int64",
        "long",
        "int32",
        "int",
        "int16",
        "short",
        "int8",
        "uint8",
        "bool",
        "strided",
        "sparse_coo",
        "contiguous_format",
        "preserve_format",
    ];
    NAMES.contains(&name)
}

/// The machine's state while reading.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: BTreeMap<u32, Id>,
    what: &'a str,
    /// Bytes the tree may still grow by: values a pickle can copy (a memoised string encoded
    /// again and again) would otherwise grow quadratically in the input.
    budget: usize,
}

/// The tree may hold this many bytes per input byte (plus 1 MiB): a real checkpoint's pickle
/// is a small fraction of this.
const GROWTH: usize = 64;

/// `_rebuild_from_type_v2` may nest this deep (torch nests it once).
const MAX_NESTING: usize = 16;

/// A tensor may have this many dimensions.
const MAX_DIMS: usize = 64;

/// Reads one pickle (`bytes` must end at or after its `STOP`). `what` names the source in
/// errors. Returns the tree; nothing the pickle names is ever executed.
pub fn unpickle(bytes: &[u8], what: &str) -> Result<Pickle> {
    let mut m = Machine::new(bytes, what);
    let root = m.run()?;
    Ok(Pickle { nodes: m.nodes, root })
}

/// Reads one pickle starting at `bytes[0]` and returns the tree and the number of bytes it
/// took (for files holding several pickles one after another, like torch's legacy format).
pub fn unpickle_prefix(bytes: &[u8], what: &str) -> Result<(Pickle, usize)> {
    let mut m = Machine::new(bytes, what);
    let root = m.run()?;
    Ok((Pickle { nodes: m.nodes, root }, m.pos))
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], what: &'a str) -> Machine<'a> {
        let budget = data.len().saturating_mul(GROWTH).saturating_add(1 << 20);
        Machine {
            data,
            pos: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: BTreeMap::new(),
            what,
            budget,
        }
    }

    /// Spends `bytes` of the growth budget.
    fn spend(&mut self, bytes: usize) -> Result<()> {
        match self.budget.checked_sub(bytes) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => {
                Err(self
                    .err(format!("the pickle expands beyond {GROWTH} times its size (values copied over and over)")))
            }
        }
    }

    /// The bytes a node holds, for the budget.
    fn weight(node: &Node) -> usize {
        16 + match node {
            Node::Str(s) => s.len(),
            Node::Bytes(b) => b.len(),
            Node::Tuple(v) | Node::List(v) | Node::Set(v) => 8 * v.len(),
            Node::Dict(d) => 16 * d.len(),
            Node::Tensor { shape, .. } => 16 * shape.len(),
            Node::Storage { key, .. } => key.len(),
            Node::Object { class, .. } | Node::Refused(class) => class.len(),
            Node::Global(_) => 64,
            _ => 0,
        }
    }

    /// Adds `node` to the tree (not to the stack).
    fn add(&mut self, node: Node) -> Result<Id> {
        self.spend(Self::weight(&node))?;
        self.nodes.push(node);
        Ok(self.nodes.len() - 1)
    }

    fn err(&self, reason: impl std::fmt::Display) -> Error {
        Error::Format { path: self.what.to_string(), reason: format!("pickle at byte {}: {reason}", self.pos) }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if n > self.data.len() - self.pos {
            return Err(self.err(format!("truncated: {n} bytes wanted, {} left", self.data.len() - self.pos)));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn len_u64(&mut self) -> Result<usize> {
        let n = u64::from_le_bytes(self.le()?);
        usize::try_from(n).map_err(|_| self.err(format!("length {n} does not fit in memory")))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let end =
            rest.iter().position(|&b| b == b'\n').ok_or_else(|| self.err("truncated: a GLOBAL without its newline"))?;
        let s = String::from_utf8(rest[..end].to_vec()).map_err(|_| self.err("a GLOBAL name that is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }

    fn push(&mut self, node: Node) -> Result<()> {
        let id = self.add(node)?;
        self.stack.push(id);
        Ok(())
    }

    fn pop(&mut self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Id> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn seq(&self, id: Id) -> Option<&[Id]> {
        match &self.nodes[id] {
            Node::Tuple(items) | Node::List(items) | Node::Set(items) => Some(items),
            _ => None,
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let mark = self.marks.pop().ok_or_else(|| self.err("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn string(&mut self, n: usize) -> Result<()> {
        let bytes = self.take(n)?.to_vec();
        let s = String::from_utf8(bytes).map_err(|_| self.err("a string that is not UTF-8"))?;
        self.push(Node::Str(s))?;
        Ok(())
    }

    fn bytes(&mut self, n: usize) -> Result<()> {
        let b = self.take(n)?.to_vec();
        self.push(Node::Bytes(b))?;
        Ok(())
    }

    /// Little-endian two's complement of `LONG1` / `LONG4`.
    fn long(&mut self, n: usize) -> Result<()> {
        if n > 8 {
            // Zero-extended encodings of small numbers are fine; anything wider is not a weight.
            let b = self.take(n)?;
            let fill = if b[n - 1] & 0x80 != 0 { 0xff } else { 0 };
            if b[8..].iter().any(|&x| x != fill) || (b[7] & 0x80 != 0) != (fill == 0xff) {
                return Err(self.err(format!("an integer of {n} bytes (beyond 64 bits)")));
            }
            let v = i64::from_le_bytes(b[..8].try_into().unwrap_or([0; 8]));
            self.push(Node::Int(v))?;
            return Ok(());
        }
        let b = self.take(n)?;
        let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) { [0xffu8; 8] } else { [0u8; 8] };
        buf[..n].copy_from_slice(b);
        self.push(Node::Int(i64::from_le_bytes(buf)))?;
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let id = *self.memo.get(&key).ok_or_else(|| self.err(format!("memo key {key} read before it was written")))?;
        self.stack.push(id);
        Ok(())
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn run(&mut self) -> Result<Id> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?; // PROTO
                    if proto > 5 {
                        return Err(self.err(format!("pickle protocol {proto} (at most 5 exists)")));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => {
                    // STOP
                    let root = self.pop()?;
                    return Ok(root);
                }
                b'(' => self.marks.push(self.stack.len()), // MARK
                b'0' => {
                    self.pop()?; // POP
                }
                b'1' => {
                    self.pop_mark()?; // POP_MARK
                }
                b'2' => {
                    let id = self.top()?; // DUP
                    self.stack.push(id);
                }
                b'N' => self.push(Node::None)?,
                0x88 => self.push(Node::Bool(true))?,
                0x89 => self.push(Node::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Node::Int(v as i64))?;
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Node::Int(v as i64))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Node::Int(v as i64))?;
                }
                0x8a => {
                    let n = self.u8()? as usize; // LONG1
                    self.long(n)?;
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.le()?); // LONG4
                    let n = usize::try_from(n).map_err(|_| self.err("LONG4 with a negative length"))?;
                    self.long(n)?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?); // BINFLOAT is big-endian
                    self.push(Node::Float(v))?;
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as usize; // BINUNICODE
                    self.string(n)?;
                }
                0x8c => {
                    let n = self.u8()? as usize; // SHORT_BINUNICODE
                    self.string(n)?;
                }
                0x8d => {
                    let n = self.len_u64()?; // BINUNICODE8
                    self.string(n)?;
                }
                b'U' => {
                    // SHORT_BINSTRING: Python 2 str, read as latin-1 text
                    let n = self.u8()? as usize;
                    let s = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.push(Node::Str(s))?;
                }
                b'T' => {
                    let n = u32::from_le_bytes(self.le()?) as usize; // BINSTRING
                    let s = self.take(n)?.iter().map(|&b| b as char).collect();
                    self.push(Node::Str(s))?;
                }
                b'C' => {
                    let n = self.u8()? as usize; // SHORT_BINBYTES
                    self.bytes(n)?;
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le()?) as usize; // BINBYTES
                    self.bytes(n)?;
                }
                0x8e | 0x96 => {
                    let n = self.len_u64()?; // BINBYTES8, BYTEARRAY8
                    self.bytes(n)?;
                }
                b')' => self.push(Node::Tuple(Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?; // TUPLE
                    self.push(Node::Tuple(items))?;
                }
                0x85..=0x87 => {
                    // TUPLE1..3
                    let n = (op - 0x84) as usize;
                    let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>>>()?;
                    items.reverse();
                    self.push(Node::Tuple(items))?;
                }
                b']' => self.push(Node::List(Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?; // LIST
                    self.push(Node::List(items))?;
                }
                b'a' => {
                    let item = self.pop()?; // APPEND
                    let list = self.top()?;
                    self.extend(list, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?; // APPENDS
                    let list = self.top()?;
                    self.extend(list, items)?;
                }
                b'}' => self.push(Node::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?; // DICT
                    let pairs = self.pairs(items)?;
                    self.push(Node::Dict(pairs))?;
                }
                b's' => {
                    let v = self.pop()?; // SETITEM
                    let k = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, vec![(k, v)])?;
                }
                b'u' => {
                    let items = self.pop_mark()?; // SETITEMS
                    let pairs = self.pairs(items)?;
                    let dict = self.top()?;
                    self.set_items(dict, pairs)?;
                }
                0x8f => self.push(Node::Set(Vec::new()))?, // EMPTY_SET
                0x90 => {
                    let items = self.pop_mark()?; // ADDITEMS
                    self.spend(8 * items.len())?;
                    let set = self.top()?;
                    match &mut self.nodes[set] {
                        Node::Set(s) => s.extend(items),
                        _ => return Err(self.err("ADDITEMS to something that is not a set")),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?; // FROZENSET
                    self.push(Node::Set(items))?;
                }
                b'c' => {
                    let module = self.line()?; // GLOBAL
                    let name = self.line()?;
                    self.push(global(&module, &name))?;
                }
                0x93 => {
                    let name = self.pop()?; // STACK_GLOBAL
                    let module = self.pop()?;
                    let (Node::Str(module), Node::Str(name)) = (&self.nodes[module], &self.nodes[name]) else {
                        return Err(self.err("STACK_GLOBAL without two strings"));
                    };
                    let node = global(module, name);
                    self.push(node)?;
                }
                b'R' => {
                    let args = self.pop()?; // REDUCE
                    let func = self.pop()?;
                    let id = self.apply(func, args, 0)?;
                    self.stack.push(id);
                }
                0x81 => {
                    let args = self.pop()?; // NEWOBJ
                    let cls = self.pop()?;
                    let id = self.apply(cls, args, 0)?;
                    self.stack.push(id);
                }
                0x92 => {
                    let _kwargs = self.pop()?; // NEWOBJ_EX
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let id = self.apply(cls, args, 0)?;
                    self.stack.push(id);
                }
                b'b' => {
                    let state = self.pop()?; // BUILD
                    let inst = self.top()?;
                    self.build(inst, state)?;
                }
                b'Q' => {
                    let pid = self.pop()?; // BINPERSID
                    let node = self.persistent(pid)?;
                    self.push(node)?;
                }
                b'h' => {
                    let k = self.u8()? as u32; // BINGET
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.le()?); // LONG_BINGET
                    self.memo_get(k)?;
                }
                b'q' => {
                    let k = self.u8()? as u32; // BINPUT
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.le()?); // LONG_BINPUT
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32; // MEMOIZE
                    self.memo_put(k)?;
                }
                other => {
                    let name = match other {
                        b'i' => "INST (instantiates a class)",
                        b'o' => "OBJ (instantiates a class)",
                        0x82..=0x84 => "EXT (the copyreg extension registry)",
                        b'P' | b'g' | b'p' | b'I' | b'L' | b'F' | b'S' | b'V' => "a text-protocol opcode (protocol 0)",
                        0x97 | 0x98 => "an out-of-band buffer (protocol 5)",
                        _ => "an unknown opcode",
                    };
                    self.pos -= 1;
                    return Err(self.err(format!("opcode 0x{other:02x}: {name} is not read")));
                }
            }
        }
    }

    fn extend(&mut self, list: Id, items: Vec<Id>) -> Result<()> {
        self.spend(8 * items.len())?;
        match &mut self.nodes[list] {
            Node::List(l) => {
                l.extend(items);
                Ok(())
            }
            Node::Refused(_) => Ok(()),
            _ => Err(self.err("APPEND to something that is not a list")),
        }
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>> {
        if items.len() % 2 != 0 {
            return Err(self.err("a dict with an odd number of keys and values"));
        }
        Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
    }

    fn set_items(&mut self, dict: Id, pairs: Vec<(Id, Id)>) -> Result<()> {
        self.spend(16 * pairs.len())?;
        match &mut self.nodes[dict] {
            Node::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            Node::Refused(_) => Ok(()),
            _ => Err(self.err("SETITEM on something that is not a dict")),
        }
    }

    /// `('storage', class, key, location, numel[, view])` -> [`Node::Storage`].
    fn persistent(&mut self, pid: Id) -> Result<Node> {
        let Node::Tuple(items) = &self.nodes[pid] else {
            return Err(self.err("a persistent id that is not a tuple"));
        };
        let items: Vec<Id> = items.iter().take(6).copied().collect();
        let tag = items.first().and_then(|&i| match &self.nodes[i] {
            Node::Str(s) => Some(s.clone()),
            Node::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        });
        if tag.as_deref() != Some("storage") || !(5..=6).contains(&items.len()) {
            return Err(self.err("a persistent id other than ('storage', class, key, location, numel)"));
        }
        let dtype = match &self.nodes[items[1]] {
            Node::Global(Global::Storage(Ok(d))) => *d,
            Node::Global(Global::Storage(Err(name))) => {
                return Err(self.err(format!("storage class `{name}` is not read (complex or quantised tensors)")));
            }
            Node::Refused(name) => return Err(self.err(format!("storage class `{name}` is not a torch storage"))),
            _ => return Err(self.err("a persistent id whose class is not a storage class")),
        };
        let key = match &self.nodes[items[2]] {
            Node::Str(s) => s.clone(),
            Node::Int(i) => i.to_string(),
            _ => return Err(self.err("a storage key that is neither a string nor an integer")),
        };
        let numel = match self.nodes[items[4]] {
            Node::Int(n) if n >= 0 => n as usize,
            _ => return Err(self.err("a storage size that is not a non-negative integer")),
        };
        if items.len() > 5 && !matches!(self.nodes[items[5]], Node::None) {
            return Err(self.err("a legacy storage view (torch < 0.4 files) is not read"));
        }
        Ok(Node::Storage { key, dtype, numel })
    }

    /// `func(*args)` (REDUCE) or `cls.__new__(cls, *args)` (NEWOBJ), for the known globals:
    /// the result's id (an argument's own id where the result is that argument: nothing is
    /// copied). `depth` counts nested `_rebuild_from_type_v2`.
    fn apply(&mut self, func: Id, args: Id, depth: usize) -> Result<Id> {
        let g = match &self.nodes[func] {
            Node::Global(g) => g.clone(),
            Node::Refused(_) => return Ok(func),
            _ => return Err(self.err("REDUCE or NEWOBJ on something that is not a global")),
        };
        // No known global takes more than 7 arguments: only those are looked at.
        let args: Vec<Id> = match &self.nodes[args] {
            Node::Tuple(a) => a.iter().take(8).copied().collect(),
            Node::Refused(_) => return Ok(args),
            _ => return Err(self.err("REDUCE or NEWOBJ whose arguments are not a tuple")),
        };
        // A refused value among the arguments makes the result refused too.
        if let Some(&refused) = args.iter().find(|&&a| matches!(self.nodes[a], Node::Refused(_))) {
            return Ok(refused);
        }
        let arg = |i: usize| args.get(i).copied();
        let node = match g {
            Global::Dict => match arg(0) {
                None => Node::Dict(Vec::new()),
                Some(a) => match &self.nodes[a] {
                    Node::Dict(_) => return Ok(a),
                    Node::List(items) | Node::Tuple(items) => {
                        let mut pairs = Vec::with_capacity(items.len());
                        for &p in items {
                            match &self.nodes[p] {
                                Node::Tuple(kv) | Node::List(kv) if kv.len() == 2 => pairs.push((kv[0], kv[1])),
                                _ => return Err(self.err("OrderedDict(items) with an item that is not a pair")),
                            }
                        }
                        Node::Dict(pairs)
                    }
                    _ => return Err(self.err("OrderedDict of something that is not a list of pairs")),
                },
            },
            Global::RebuildTensor => self.tensor(&args)?,
            Global::Parameter => return arg(0).ok_or_else(|| self.err("a Parameter without its data")),
            Global::RebuildFromType => {
                // (func, type, args, state): func(*args)
                let (Some(f), Some(a)) = (arg(0), arg(2)) else {
                    return Err(self.err("_rebuild_from_type_v2 with fewer than 3 arguments"));
                };
                if depth >= MAX_NESTING {
                    return Err(self.err(format!("_rebuild_from_type_v2 nested deeper than {MAX_NESTING}")));
                }
                return self.apply(f, a, depth + 1);
            }
            Global::Storage(_) => return Err(self.err("a storage class called directly (not through a persistent id)")),
            Global::Size | Global::Set => match arg(0) {
                None => Node::Tuple(Vec::new()),
                Some(a) => match &self.nodes[a] {
                    // the sequence itself: readers take tuples, lists and sets alike
                    Node::Tuple(_) | Node::List(_) | Node::Set(_) => return Ok(a),
                    _ => return Err(self.err("torch.Size or set of something that is not a sequence")),
                },
            },
            Global::Device => match arg(0) {
                Some(a) if matches!(self.nodes[a], Node::Str(_)) => return Ok(a),
                _ => return Err(self.err("torch.device without a name")),
            },
            Global::Encode => match arg(0).map(|a| &self.nodes[a]) {
                // _codecs.encode(text, "latin1"): protocol 2's bytes, one char per byte
                Some(Node::Str(s)) => Node::Bytes(s.chars().map(|c| c as u32 as u8).collect()),
                _ => return Err(self.err("_codecs.encode without a string")),
            },
            Global::Bytearray => match arg(0) {
                Some(a) if matches!(self.nodes[a], Node::Bytes(_)) => return Ok(a),
                None => Node::Bytes(Vec::new()),
                _ => return Err(self.err("bytearray of something that is not bytes")),
            },
            Global::Identity(_) => match arg(0) {
                Some(a) => return Ok(a),
                None => Node::None,
            },
            Global::Constant(name) => return Err(self.err(format!("`{name}` is a constant, not something to call"))),
            Global::Class(class) => Node::Object { class, state: None },
        };
        self.add(node)
    }

    /// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
    fn tensor(&self, args: &[Id]) -> Result<Node> {
        if args.len() < 4 {
            return Err(self.err("_rebuild_tensor with fewer than 4 arguments"));
        }
        let storage = args[0];
        if !matches!(self.nodes[storage], Node::Storage { .. }) {
            return Err(self.err("_rebuild_tensor of something that is not a storage"));
        }
        let offset = match self.nodes[args[1]] {
            Node::Int(o) if o >= 0 => o as usize,
            _ => return Err(self.err("a tensor offset that is not a non-negative integer")),
        };
        let dims = |id: Id, what: &str| -> Result<Vec<usize>> {
            let items = match &self.nodes[id] {
                Node::Tuple(items) | Node::List(items) => items,
                _ => return Err(self.err(format!("a tensor {what} that is not a tuple"))),
            };
            items
                .iter()
                .map(|&i| match self.nodes[i] {
                    Node::Int(v) if v >= 0 => Ok(v as usize),
                    _ => Err(self.err(format!("a tensor {what} with an entry that is not a non-negative integer"))),
                })
                .collect()
        };
        for (id, what) in [(args[2], "size"), (args[3], "stride")] {
            if self.seq(id).is_some_and(|d| d.len() > MAX_DIMS) {
                return Err(self.err(format!("a tensor {what} of more than {MAX_DIMS} dimensions")));
            }
        }
        let (shape, stride) = (dims(args[2], "size")?, dims(args[3], "stride")?);
        if shape.len() != stride.len() {
            return Err(self.err(format!("a tensor of {} dimensions with {} strides", shape.len(), stride.len())));
        }
        Ok(Node::Tensor { storage, offset, shape, stride })
    }

    /// `BUILD`: sets an object's state; a dict's attributes (`_metadata`) and a parameter's
    /// state are dropped, they carry no weights.
    fn build(&mut self, inst: Id, state: Id) -> Result<()> {
        match &mut self.nodes[inst] {
            Node::Object { state: s, .. } => {
                *s = Some(state);
                Ok(())
            }
            Node::Dict(_) | Node::Refused(_) | Node::Set(_) => Ok(()),
            Node::Tensor { .. } => Ok(()), // a tensor's Python attributes
            _ => Err(self.err("BUILD on something that is neither an object nor a dict")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_containers_are_one_node() {
        // x = []; pickle.dumps([x, x], protocol=2): the memo hands out the same list twice.
        let bytes = b"\x80\x02]q\x00(]q\x01h\x01e.";
        let t = unpickle(bytes, "t").unwrap();
        let items = t.seq(t.root).unwrap();
        assert_eq!(items[0], items[1]);
    }

    #[test]
    fn integers_of_every_width() {
        // pickle.dumps([-1, 255, 65535, 2**31 - 1, -2**63, 2**40], protocol=2)
        let bytes = b"\x80\x02]q\x00(J\xff\xff\xff\xffK\xffM\xff\xffJ\xff\xff\xff\x7f\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80\x8a\x06\x00\x00\x00\x00\x00\x01e.";
        let t = unpickle(bytes, "t").unwrap();
        let v: Vec<i64> = t.seq(t.root).unwrap().iter().map(|&i| t.int(i).unwrap()).collect();
        assert_eq!(v, vec![-1, 255, 65535, i32::MAX as i64, i64::MIN, 1 << 40]);
    }

    #[test]
    fn refused_globals_stay_refused_when_applied() {
        // pickle.dumps of an object whose __reduce__ is (builtins.eval, ("1+1",))
        let bytes = b"\x80\x02cbuiltins\neval\nq\x00X\x03\x00\x00\x001+1q\x01\x85q\x02Rq\x03.";
        let t = unpickle(bytes, "t").unwrap();
        assert_eq!(t.node(t.root), &Node::Refused("builtins.eval".into()));
    }

    #[test]
    fn instantiating_opcodes_and_truncation_are_errors() {
        for (bytes, needle) in [
            (&b"\x80\x02(cos\nsystem\nX\x02\x00\x00\x00lsi."[..], "INST"),
            (&b"\x80\x02X\x05\x00\x00\x00ab"[..], "truncated"),
            (&b"\x80\x02]q\x00h\x05."[..], "memo key 5"),
            (&b"\x80\x02a."[..], "underflow"),
        ] {
            let e = unpickle(bytes, "t").unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }
}

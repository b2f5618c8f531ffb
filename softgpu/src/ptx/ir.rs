//! The decoded form the interpreter runs: a flat instruction list per kernel.
//!
//! Every data register (`.b16`…`.f64`) is one slot of a per-warp array of 32 × u64 lanes;
//! predicates are separate slots holding one bit per lane. Immediates and special
//! registers (`%tid.x`…) are slots too, filled when a warp starts, so an instruction's
//! sources are always plain slot numbers. Readers mask a slot to their type's width, so a
//! slot's bits above that width never matter.

/// Index of a data-register slot.
pub type Reg = u32;
/// Index of a predicate slot.
pub type Pred = u32;

/// Special registers, in slot order: they occupy slots 0..12 of every kernel.
pub const SPECIAL_REGS: [&str; 12] = [
    "%tid.x",
    "%tid.y",
    "%tid.z",
    "%ntid.x",
    "%ntid.y",
    "%ntid.z",
    "%ctaid.x",
    "%ctaid.y",
    "%ctaid.z",
    "%nctaid.x",
    "%nctaid.y",
    "%nctaid.z",
];

/// Value types of instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F32,
    F64,
}

impl Ty {
    pub fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            _ => return None,
        })
    }

    pub fn bytes(self) -> u32 {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
        }
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::F32 | Ty::F64)
    }
}

/// Two-operand integer (and bitwise) operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntOp {
    Add,
    Sub,
    MulLo,
    MulHi,
    Div,
    Rem,
    Min,
    Max,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntUnOp {
    Neg,
    Not,
    Abs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatUnOp {
    Neg,
    Abs,
    Sqrt,
    Rcp,
    Ex2Approx,
}

/// IEEE rounding of a float result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rnd {
    Rn,
    Rz,
    Rm,
    Rp,
}

/// Rounding of a `cvt`: float results (`.rn`…) or float → integer (`.rni`…).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CvtRnd {
    /// No modifier: exact conversions (widening, integer ↔ integer).
    Exact,
    Float(Rnd),
    Int(Rnd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Unsigned comparisons (`lo`, `ls`, `hi`, `hs`) map to Lt/Le/Gt/Ge on an unsigned type.
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredOp {
    And,
    Or,
    Xor,
}

/// Memory spaces a load or store can name (params have their own op).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Op {
    Mov {
        d: Reg,
        a: Reg,
    },
    /// `mov.b32 d, {lo, hi}` (two 16-bit halves) or `mov.b64 d, {lo, hi}` (two 32-bit):
    /// d = lo | hi << half, each piece cut to `half` bits.
    Pack {
        d: Reg,
        lo: Reg,
        hi: Reg,
        half: u32,
    },
    MovPred {
        d: Pred,
        a: Pred,
    },
    PredConst {
        d: Pred,
        value: bool,
    },
    Int {
        op: IntOp,
        ty: Ty,
        d: Reg,
        a: Reg,
        b: Reg,
    },
    IntUn {
        op: IntUnOp,
        ty: Ty,
        d: Reg,
        a: Reg,
    },
    /// `mul.wide`: `ty` is the source type; the result is twice as wide.
    MulWide {
        ty: Ty,
        d: Reg,
        a: Reg,
        b: Reg,
    },
    /// `mad.lo`: d = a * b + c, low half.
    MadLo {
        ty: Ty,
        d: Reg,
        a: Reg,
        b: Reg,
        c: Reg,
    },
    /// `bfi`: insert the low `len` bits of `a` into `b` at `pos`.
    Bfi {
        ty: Ty,
        d: Reg,
        a: Reg,
        b: Reg,
        pos: Reg,
        len: Reg,
    },
    Float {
        op: FloatOp,
        rnd: Rnd,
        ty: Ty,
        d: Reg,
        a: Reg,
        b: Reg,
    },
    FloatUn {
        op: FloatUnOp,
        ty: Ty,
        d: Reg,
        a: Reg,
    },
    Fma {
        ty: Ty,
        d: Reg,
        a: Reg,
        b: Reg,
        c: Reg,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        d: Pred,
        a: Reg,
        b: Reg,
    },
    Selp {
        ty: Ty,
        d: Reg,
        a: Reg,
        b: Reg,
        p: Pred,
    },
    PredBin {
        op: PredOp,
        d: Pred,
        a: Pred,
        b: Pred,
    },
    PredNot {
        d: Pred,
        a: Pred,
    },
    Cvt {
        dty: Ty,
        sty: Ty,
        rnd: CvtRnd,
        d: Reg,
        a: Reg,
    },
    /// Vector loads (`.v2`, `.v4`) use the first `n` of `d`.
    Ld {
        space: Space,
        ty: Ty,
        n: u8,
        d: [Reg; 4],
        addr: Reg,
        off: i64,
    },
    St {
        space: Space,
        ty: Ty,
        n: u8,
        a: [Reg; 4],
        addr: Reg,
        off: i64,
    },
    /// `ld.param`: a byte offset into the packed parameter buffer.
    LdParam {
        ty: Ty,
        d: Reg,
        off: u32,
    },
    /// `cp.async.{ca,cg}.shared.global [dst], [src], size{, src_size}`.
    CpAsync {
        dst: Reg,
        dst_off: i64,
        src: Reg,
        src_off: i64,
        size: u32,
        src_size: Option<Reg>,
    },
    CpAsyncCommit,
    CpAsyncWait {
        n: u32,
    },
    Mma {
        d: [Reg; 4],
        a: [Reg; 4],
        b: [Reg; 2],
        c: [Reg; 4],
    },
    Ldmatrix {
        n: u8,
        trans: bool,
        d: [Reg; 4],
        addr: Reg,
        off: i64,
    },
    Bar {
        id: u32,
    },
    /// `reconverge`: the immediate post-dominator of the branch, where divergent lanes
    /// meet again (`u32::MAX`: only at exit).
    Bra {
        target: u32,
        reconverge: u32,
    },
    Exit,
}

/// `@%p` / `@!%p` guard of an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guard {
    pub pred: Pred,
    pub negate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Inst {
    pub op: Op,
    pub guard: Option<Guard>,
}

/// A `.loc` position: `.file` index and line (file `None`: no `.loc` seen yet), and the
/// call site it was inlined at, if any (`inlined_at file line`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    pub file: Option<u32>,
    pub line: u32,
    pub inlined_at: Option<(u32, u32)>,
}

/// Where an instruction came from, for error messages.
#[derive(Debug, Clone)]
pub struct Site {
    pub ptx_line: u32,
    pub loc: Loc,
    pub text: Box<str>,
}

/// A decoded kernel body.
#[derive(Debug)]
pub struct Body {
    pub insts: Vec<Inst>,
    /// Parallel to `insts`.
    pub sites: Vec<Site>,
    pub num_regs: u32,
    pub num_preds: u32,
    /// Slots holding immediates and symbol addresses: (slot, value).
    pub consts: Vec<(Reg, u64)>,
    /// Data registers some thread may read before writing them (sorted): the only slots,
    /// besides the special registers and `consts`, that a warp sets (to zero) when it
    /// starts; every other slot is written by the thread before it is read.
    pub read_before_write: Vec<Reg>,
    /// Bytes of static `.shared` data; dynamic shared memory starts at `dynamic_offset`.
    pub static_shared: u32,
    pub dynamic_offset: u32,
    /// `.maxntid` / `.reqntid` limits of the entry, if declared.
    pub maxntid: Option<[u32; 3]>,
    pub reqntid: Option<[u32; 3]>,
}

//! Statement → `Op`: opcode modifiers checked against what the interpreter implements,
//! operands resolved to slots (immediates and symbol addresses become constant slots),
//! labels to instruction indices.

use std::collections::HashMap;

use super::ir::*;
use super::{ParamSlot, PtxError, cfg, uninit};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Imm {
    Int(i64),
    F32(u32),
    F64(u64),
}

#[derive(Debug, Clone, Copy)]
pub enum AddrBase<'a> {
    Reg(Reg),
    Sym(&'a str),
}

#[derive(Debug, Clone, Copy)]
pub struct Address<'a> {
    pub base: AddrBase<'a>,
    pub off: i64,
}

#[derive(Debug, Clone)]
pub enum Operand<'a> {
    Reg(Reg),
    Pred(Pred, bool),
    Imm(Imm),
    Sym(&'a str),
    Vec(Vec<Operand<'a>>),
    Addr(Address<'a>),
}

/// One instruction as parsed.
pub struct Stmt<'a> {
    pub guard: Option<Guard>,
    pub opcode: &'a str,
    pub operands: Vec<Operand<'a>>,
    pub site: Site,
}

/// Names an instruction can refer to besides registers.
pub struct Symbols<'s, 'a> {
    /// Shared-window address of each `.shared` symbol.
    pub shared: &'s HashMap<&'a str, u32>,
    pub params: &'s [ParamSlot],
    pub labels: &'s HashMap<&'a str, u32>,
}

struct Decoder<'s, 'a> {
    symbols: &'s Symbols<'s, 'a>,
    num_regs: u32,
    consts: HashMap<u64, Reg>,
}

pub fn decode_body(
    stmts: &[Stmt<'_>],
    symbols: &Symbols<'_, '_>,
    num_regs: u32,
    num_preds: u32,
) -> Result<Body, PtxError> {
    let mut dec = Decoder { symbols, num_regs, consts: HashMap::new() };
    let mut insts = Vec::with_capacity(stmts.len() + 1);
    let mut sites = Vec::with_capacity(stmts.len() + 1);
    for s in stmts {
        let op = dec.inst(s).map_err(|message| PtxError { line: s.site.ptx_line, message })?;
        insts.push(Inst { op, guard: s.guard });
        sites.push(s.site.clone());
    }
    // Falling off the end (or branching to a label after the last instruction) exits.
    let ends_closed =
        insts.last().is_some_and(|i| i.guard.is_none() && matches!(i.op, Op::Exit | Op::Bra { .. }))
            && !symbols.labels.values().any(|&t| t as usize == stmts.len());
    if !ends_closed {
        let mut site =
            sites.last().cloned().unwrap_or(Site { ptx_line: 0, loc: Loc::default(), text: "".into() });
        site.text = "(end of kernel)".into();
        insts.push(Inst { op: Op::Exit, guard: None });
        sites.push(site);
    }
    cfg::set_reconvergence(&mut insts);
    let mut consts: Vec<(Reg, u64)> = dec.consts.iter().map(|(&v, &r)| (r, v)).collect();
    consts.sort_unstable();
    let preset = (0..SPECIAL_REGS.len() as Reg).chain(consts.iter().map(|&(r, _)| r));
    let read_before_write = uninit::read_before_write(&insts, dec.num_regs, preset);
    Ok(Body {
        insts,
        sites,
        num_regs: dec.num_regs,
        num_preds,
        consts,
        read_before_write,
        static_shared: 0,
        dynamic_offset: 0,
        maxntid: None,
        reqntid: None,
    })
}

/// The opcode's dot-separated modifiers, consumed as they are recognised; anything left
/// over is unknown.
struct Mods<'a> {
    opcode: &'a str,
    list: Vec<&'a str>,
}

impl<'a> Mods<'a> {
    fn take(&mut self, m: &str) -> bool {
        match self.list.iter().position(|x| *x == m) {
            Some(i) => {
                self.list.remove(i);
                true
            }
            None => false,
        }
    }

    fn take_any(&mut self, options: &[&'a str]) -> Option<&'a str> {
        let i = self.list.iter().position(|x| options.contains(x))?;
        Some(self.list.remove(i))
    }

    fn ty(&mut self) -> Result<Ty, String> {
        let last = self.list.pop().ok_or_else(|| format!("`{}`: missing type", self.opcode))?;
        Ty::parse(last).ok_or_else(|| format!("unknown modifier `.{last}` in `{}`", self.opcode))
    }

    fn done(&self) -> Result<(), String> {
        match self.list.first() {
            Some(m) => Err(format!("unknown modifier `.{m}` in `{}`", self.opcode)),
            None => Ok(()),
        }
    }

    fn rnd(&mut self) -> Option<Rnd> {
        self.take_any(&["rn", "rz", "rm", "rp"]).map(|r| match r {
            "rz" => Rnd::Rz,
            "rm" => Rnd::Rm,
            "rp" => Rnd::Rp,
            _ => Rnd::Rn,
        })
    }
}

fn int_bin(base: &str) -> Option<IntOp> {
    Some(match base {
        "add" => IntOp::Add,
        "sub" => IntOp::Sub,
        "div" => IntOp::Div,
        "rem" => IntOp::Rem,
        "min" => IntOp::Min,
        "max" => IntOp::Max,
        "and" => IntOp::And,
        "or" => IntOp::Or,
        "xor" => IntOp::Xor,
        "shl" => IntOp::Shl,
        "shr" => IntOp::Shr,
        _ => return None,
    })
}

fn cmp(m: &str, ty: Ty) -> Option<Cmp> {
    let float = ty.is_float();
    Some(match m {
        "eq" => Cmp::Eq,
        "ne" => Cmp::Ne,
        "lt" => Cmp::Lt,
        "le" => Cmp::Le,
        "gt" => Cmp::Gt,
        "ge" => Cmp::Ge,
        "lo" if !float && !ty.is_signed() => Cmp::Lt,
        "ls" if !float && !ty.is_signed() => Cmp::Le,
        "hi" if !float && !ty.is_signed() => Cmp::Gt,
        "hs" if !float && !ty.is_signed() => Cmp::Ge,
        "equ" if float => Cmp::Equ,
        "neu" if float => Cmp::Neu,
        "ltu" if float => Cmp::Ltu,
        "leu" if float => Cmp::Leu,
        "gtu" if float => Cmp::Gtu,
        "geu" if float => Cmp::Geu,
        "num" if float => Cmp::Num,
        "nan" if float => Cmp::Nan,
        _ => return None,
    })
}

impl Decoder<'_, '_> {
    fn constant(&mut self, v: u64) -> Reg {
        let next = self.num_regs;
        let r = *self.consts.entry(v).or_insert(next);
        if r == next {
            self.num_regs += 1;
        }
        r
    }

    fn imm_bits(imm: Imm, ty: Ty) -> Result<u64, String> {
        match (imm, ty) {
            (Imm::Int(v), t) if !t.is_float() => Ok(v as u64),
            (Imm::F32(bits), Ty::F32 | Ty::B32) => Ok(bits as u64),
            (Imm::F64(bits), Ty::F64 | Ty::B64) => Ok(bits),
            (imm, ty) => Err(format!("immediate {imm:?} does not fit type .{ty:?}")),
        }
    }

    /// A source operand of type `ty`: register, immediate or `.shared` symbol address.
    fn src(&mut self, op: Option<&Operand<'_>>, ty: Ty) -> Result<Reg, String> {
        match op {
            Some(Operand::Reg(r)) => Ok(*r),
            Some(Operand::Imm(imm)) => Ok(self.constant(Self::imm_bits(*imm, ty)?)),
            Some(Operand::Sym(s)) => match self.symbols.shared.get(s) {
                Some(&addr) if !ty.is_float() => Ok(self.constant(addr as u64)),
                _ => Err(format!("unknown symbol `{s}`")),
            },
            Some(other) => Err(format!("unsupported source operand {other:?}")),
            None => Err("missing operand".into()),
        }
    }

    fn dst(&self, op: Option<&Operand<'_>>) -> Result<Reg, String> {
        match op {
            Some(Operand::Reg(r)) if (*r as usize) >= SPECIAL_REGS.len() => Ok(*r),
            Some(other) => Err(format!("destination must be a register, found {other:?}")),
            None => Err("missing destination".into()),
        }
    }

    fn pred(&self, op: Option<&Operand<'_>>) -> Result<Pred, String> {
        match op {
            Some(Operand::Pred(p, false)) => Ok(*p),
            Some(other) => Err(format!("expected a predicate register, found {other:?}")),
            None => Err("missing predicate operand".into()),
        }
    }

    /// `[reg+off]` or `[shared_symbol+off]` → (address slot, offset).
    fn addr(&mut self, op: Option<&Operand<'_>>) -> Result<(Reg, i64), String> {
        match op {
            Some(Operand::Addr(Address { base: AddrBase::Reg(r), off })) => Ok((*r, *off)),
            Some(Operand::Addr(Address { base: AddrBase::Sym(s), off })) => {
                match self.symbols.shared.get(s) {
                    Some(&a) => Ok((self.constant(0), a as i64 + off)),
                    None => Err(format!("unknown address symbol `{s}`")),
                }
            }
            Some(other) => Err(format!("expected an address, found {other:?}")),
            None => Err("missing address operand".into()),
        }
    }

    /// `n` registers: `{%a, %b, …}` or, for n = 1, a plain operand. Destinations must be
    /// registers; sources may be immediates.
    fn regs(&mut self, op: Option<&Operand<'_>>, n: usize, ty: Ty, dst: bool) -> Result<[Reg; 4], String> {
        let single;
        let elems: &[Operand<'_>] = match op {
            Some(Operand::Vec(v)) => v,
            Some(o) if n == 1 => {
                single = [o.clone()];
                &single
            }
            _ => return Err(format!("expected a vector of {n} registers")),
        };
        if elems.len() != n {
            return Err(format!("expected a vector of {n} registers, found {}", elems.len()));
        }
        let mut out = [0; 4];
        for (slot, e) in out.iter_mut().zip(elems) {
            *slot = if dst { self.dst(Some(e))? } else { self.src(Some(e), ty)? };
        }
        Ok(out)
    }

    fn count(ops: &[Operand<'_>], n: usize) -> Result<(), String> {
        if ops.len() == n { Ok(()) } else { Err(format!("expected {n} operands, found {}", ops.len())) }
    }

    fn inst(&mut self, s: &Stmt<'_>) -> Result<Op, String> {
        let mut parts = s.opcode.split('.');
        let base = parts.next().unwrap_or("");
        let mut m = Mods { opcode: s.opcode, list: parts.collect() };
        let ops = &s.operands[..];
        let op = |i: usize| ops.get(i);
        let unknown = || format!("unknown instruction `{}`", s.opcode);
        let result = match base {
            "mov" => {
                Self::count(ops, 2)?;
                if m.take("pred") {
                    match op(1) {
                        // `mov.pred %p, -1` / `0`: all ones is true.
                        Some(Operand::Imm(Imm::Int(v))) => {
                            Op::PredConst { d: self.pred(op(0))?, value: *v != 0 }
                        }
                        a => Op::MovPred { d: self.pred(op(0))?, a: self.pred(a)? },
                    }
                } else {
                    let ty = m.ty()?;
                    match (op(1), ty) {
                        (Some(Operand::Vec(parts)), Ty::B32 | Ty::B64) => {
                            let [Operand::Reg(lo), Operand::Reg(hi)] = parts[..] else {
                                return Err(format!("`{}`: packs exactly two registers", s.opcode));
                            };
                            let half = if ty == Ty::B32 { 16 } else { 32 };
                            Op::Pack { d: self.dst(op(0))?, lo, hi, half }
                        }
                        _ => Op::Mov { d: self.dst(op(0))?, a: self.src(op(1), ty)? },
                    }
                }
            }
            "cvta" => {
                // The global window is the generic window: `cvta.to.global` is the identity.
                if !(m.take("to") && m.take("global")) {
                    return Err(unknown());
                }
                let ty = m.ty()?;
                if ty != Ty::U64 {
                    return Err(format!("`{}`: only .u64 is supported", s.opcode));
                }
                Self::count(ops, 2)?;
                Op::Mov { d: self.dst(op(0))?, a: self.src(op(1), ty)? }
            }
            "add" | "sub" | "mul" | "div" | "min" | "max" | "rem" | "and" | "or" | "xor" | "shl" | "shr" => {
                Self::count(ops, 3)?;
                if m.take("pred") {
                    let pop = match base {
                        "and" => PredOp::And,
                        "or" => PredOp::Or,
                        "xor" => PredOp::Xor,
                        _ => return Err(format!("`{}`: .pred is not allowed", s.opcode)),
                    };
                    m.done()?;
                    return Ok(Op::PredBin {
                        op: pop,
                        d: self.pred(op(0))?,
                        a: self.pred(op(1))?,
                        b: self.pred(op(2))?,
                    });
                }
                let ty = m.ty()?;
                if ty.is_float() {
                    let fop = match base {
                        "add" => FloatOp::Add,
                        "sub" => FloatOp::Sub,
                        "mul" => FloatOp::Mul,
                        "div" => FloatOp::Div,
                        "min" => FloatOp::Min,
                        "max" => FloatOp::Max,
                        _ => return Err(format!("`{}`: float type not allowed", s.opcode)),
                    };
                    let rnd = m.rnd();
                    // What the interpreter computes exactly: round-to-nearest forms,
                    // `add.rz.f32`, and min/max on f32.
                    let supported = match (fop, rnd) {
                        (FloatOp::Min | FloatOp::Max, None) => ty == Ty::F32,
                        (FloatOp::Min | FloatOp::Max, Some(_)) => false,
                        (_, None | Some(Rnd::Rn)) => ty != Ty::F16,
                        (FloatOp::Add, Some(Rnd::Rz)) => ty == Ty::F32,
                        _ => false,
                    };
                    if !supported {
                        return Err(format!("unsupported form `{}`", s.opcode));
                    }
                    if fop == FloatOp::Div && rnd.is_none() {
                        return Err(format!("`{}`: only div.rn is supported", s.opcode));
                    }
                    let (d, a, b) = (self.dst(op(0))?, self.src(op(1), ty)?, self.src(op(2), ty)?);
                    m.done()?;
                    Op::Float { op: fop, rnd: rnd.unwrap_or(Rnd::Rn), ty, d, a, b }
                } else {
                    let iop = if base == "mul" {
                        match m.take_any(&["lo", "hi", "wide"]) {
                            Some("lo") => IntOp::MulLo,
                            Some("hi") => IntOp::MulHi,
                            Some(_) => {
                                if ty.bytes() > 4 {
                                    return Err(format!("`{}`: no 128-bit results", s.opcode));
                                }
                                m.done()?;
                                return Ok(Op::MulWide {
                                    ty,
                                    d: self.dst(op(0))?,
                                    a: self.src(op(1), ty)?,
                                    b: self.src(op(2), ty)?,
                                });
                            }
                            None => return Err(format!("`{}`: needs .lo, .hi or .wide", s.opcode)),
                        }
                    } else {
                        int_bin(base).ok_or_else(unknown)?
                    };
                    if ty.bytes() < 2 {
                        return Err(format!("`{}`: 8-bit arithmetic is not supported", s.opcode));
                    }
                    // Shift amounts are always .u32.
                    let bty = if matches!(iop, IntOp::Shl | IntOp::Shr) { Ty::U32 } else { ty };
                    let (d, a, b) = (self.dst(op(0))?, self.src(op(1), ty)?, self.src(op(2), bty)?);
                    m.done()?;
                    Op::Int { op: iop, ty, d, a, b }
                }
            }
            "mad" => {
                Self::count(ops, 4)?;
                if !m.take("lo") {
                    return Err(format!("`{}`: only mad.lo is supported", s.opcode));
                }
                let ty = m.ty()?;
                m.done()?;
                if ty.is_float() || ty.bytes() < 2 {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                Op::MadLo {
                    ty,
                    d: self.dst(op(0))?,
                    a: self.src(op(1), ty)?,
                    b: self.src(op(2), ty)?,
                    c: self.src(op(3), ty)?,
                }
            }
            "neg" | "abs" | "not" => {
                Self::count(ops, 2)?;
                if m.take("pred") {
                    m.done()?;
                    if base != "not" {
                        return Err(format!("`{}`: .pred is not allowed", s.opcode));
                    }
                    return Ok(Op::PredNot { d: self.pred(op(0))?, a: self.pred(op(1))? });
                }
                let ty = m.ty()?;
                m.done()?;
                let (d, a) = (self.dst(op(0))?, self.src(op(1), ty)?);
                match (base, ty.is_float()) {
                    ("neg", true) => Op::FloatUn { op: FloatUnOp::Neg, ty, d, a },
                    ("abs", true) => Op::FloatUn { op: FloatUnOp::Abs, ty, d, a },
                    ("neg", false) => Op::IntUn { op: IntUnOp::Neg, ty, d, a },
                    ("abs", false) if ty.is_signed() => Op::IntUn { op: IntUnOp::Abs, ty, d, a },
                    ("not", false) => Op::IntUn { op: IntUnOp::Not, ty, d, a },
                    _ => return Err(format!("unsupported form `{}`", s.opcode)),
                }
            }
            "rcp" | "sqrt" | "ex2" => {
                Self::count(ops, 2)?;
                let fop = match base {
                    "rcp" if m.take("rn") => FloatUnOp::Rcp,
                    "sqrt" if m.take("rn") => FloatUnOp::Sqrt,
                    "ex2" if m.take("approx") => FloatUnOp::Ex2Approx,
                    _ => return Err(format!("unsupported rounding in `{}`", s.opcode)),
                };
                let ty = m.ty()?;
                m.done()?;
                if !matches!(ty, Ty::F32 | Ty::F64) || (fop == FloatUnOp::Ex2Approx && ty != Ty::F32) {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                Op::FloatUn { op: fop, ty, d: self.dst(op(0))?, a: self.src(op(1), ty)? }
            }
            "fma" => {
                Self::count(ops, 4)?;
                if !m.take("rn") {
                    return Err(format!("`{}`: only fma.rn is supported", s.opcode));
                }
                let ty = m.ty()?;
                m.done()?;
                if !matches!(ty, Ty::F32 | Ty::F64) {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                Op::Fma {
                    ty,
                    d: self.dst(op(0))?,
                    a: self.src(op(1), ty)?,
                    b: self.src(op(2), ty)?,
                    c: self.src(op(3), ty)?,
                }
            }
            "bfi" => {
                Self::count(ops, 5)?;
                let ty = m.ty()?;
                m.done()?;
                if !matches!(ty, Ty::B32 | Ty::B64) {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                Op::Bfi {
                    ty,
                    d: self.dst(op(0))?,
                    a: self.src(op(1), ty)?,
                    b: self.src(op(2), ty)?,
                    pos: self.src(op(3), Ty::U32)?,
                    len: self.src(op(4), Ty::U32)?,
                }
            }
            "selp" => {
                Self::count(ops, 4)?;
                let ty = m.ty()?;
                m.done()?;
                Op::Selp {
                    ty,
                    d: self.dst(op(0))?,
                    a: self.src(op(1), ty)?,
                    b: self.src(op(2), ty)?,
                    p: self.pred(op(3))?,
                }
            }
            "setp" => {
                Self::count(ops, 3)?;
                let ty = m.ty()?;
                if ty.bytes() < 2 || ty == Ty::F16 {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                if m.list.len() != 1 {
                    return Err(format!("unsupported form `{}` (one comparison, no boolean op)", s.opcode));
                }
                let c = m.list.remove(0);
                let cmp = cmp(c, ty).ok_or_else(|| format!("unknown modifier `.{c}` in `{}`", s.opcode))?;
                Op::Setp { cmp, ty, d: self.pred(op(0))?, a: self.src(op(1), ty)?, b: self.src(op(2), ty)? }
            }
            "cvt" => self.cvt(&mut m, ops)?,
            "ld" | "st" => self.ld_st(base == "ld", &mut m, ops)?,
            "cp" => self.cp_async(&mut m, ops)?,
            "mma" => {
                let want = ["sync", "aligned", "m16n8k16", "row", "col", "f32", "f16", "f16", "f32"];
                if m.list != want {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                Self::count(ops, 4)?;
                let d = self.regs(op(0), 4, Ty::F32, true)?;
                let a = self.regs(op(1), 4, Ty::B32, false)?;
                let b4 = self.regs(op(2), 2, Ty::B32, false)?;
                let c = self.regs(op(3), 4, Ty::F32, false)?;
                return Ok(Op::Mma { d, a, b: [b4[0], b4[1]], c });
            }
            "ldmatrix" => {
                if !(m.take("sync") && m.take("aligned") && m.take("m8n8")) {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                let n = match m.take_any(&["x1", "x2", "x4"]) {
                    Some("x1") => 1,
                    Some("x2") => 2,
                    Some(_) => 4,
                    None => return Err(format!("`{}`: needs .x1, .x2 or .x4", s.opcode)),
                };
                let trans = m.take("trans");
                if !(m.take("shared") || m.take("shared::cta")) || m.ty()? != Ty::B16 {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                m.done()?;
                Self::count(ops, 2)?;
                let d = self.regs(op(0), n, Ty::B32, true)?;
                let (addr, off) = self.addr(op(1))?;
                Op::Ldmatrix { n: n as u8, trans, d, addr, off }
            }
            "bar" | "barrier" => {
                if !m.take("sync") {
                    return Err(format!("unsupported form `{}`", s.opcode));
                }
                m.done()?;
                match ops {
                    [Operand::Imm(Imm::Int(id))] if (0..16).contains(id) => Op::Bar { id: *id as u32 },
                    _ => {
                        return Err(format!(
                            "`{}`: only a constant barrier id and no thread count",
                            s.opcode
                        ));
                    }
                }
            }
            "bra" => {
                m.take("uni");
                m.done()?;
                match ops {
                    [Operand::Sym(l)] => {
                        let target =
                            *self.symbols.labels.get(l).ok_or_else(|| format!("unknown label `{l}`"))?;
                        Op::Bra { target, reconverge: u32::MAX }
                    }
                    _ => return Err("bra: expected one label".into()),
                }
            }
            "ret" | "exit" => {
                m.done()?;
                Self::count(ops, 0)?;
                Op::Exit
            }
            _ => return Err(unknown()),
        };
        m.done()?;
        Ok(result)
    }

    fn cvt(&mut self, m: &mut Mods<'_>, ops: &[Operand<'_>]) -> Result<Op, String> {
        Self::count(ops, 2)?;
        let sty = m.ty()?;
        let dty = m.ty()?;
        let rnd = match m.take_any(&["rn", "rz", "rm", "rp", "rni", "rzi", "rmi", "rpi"]) {
            None => CvtRnd::Exact,
            Some(r) => {
                let mode = match &r[..2] {
                    "rz" => Rnd::Rz,
                    "rm" => Rnd::Rm,
                    "rp" => Rnd::Rp,
                    _ => Rnd::Rn,
                };
                if r.len() == 3 { CvtRnd::Int(mode) } else { CvtRnd::Float(mode) }
            }
        };
        m.done()?;
        let bad = || format!("unsupported rounding for `{}`", m.opcode);
        match (sty.is_float(), dty.is_float(), rnd) {
            // float → integer needs an integer rounding; int → float a float rounding.
            (true, false, CvtRnd::Int(_))
            | (false, true, CvtRnd::Float(Rnd::Rn))
            | (false, false, CvtRnd::Exact) => {}
            (true, true, r) => {
                let narrowing = dty.bytes() < sty.bytes();
                let ok = match r {
                    CvtRnd::Exact => !narrowing,
                    CvtRnd::Float(Rnd::Rn) => narrowing,
                    CvtRnd::Float(_) => false,
                    CvtRnd::Int(_) => dty == sty,
                };
                if !ok {
                    return Err(bad());
                }
            }
            _ => return Err(bad()),
        }
        Ok(Op::Cvt { dty, sty, rnd, d: self.dst(ops.first())?, a: self.src(ops.get(1), sty)? })
    }

    fn ld_st(&mut self, load: bool, m: &mut Mods<'_>, ops: &[Operand<'_>]) -> Result<Op, String> {
        Self::count(ops, 2)?;
        let space = m.take_any(&["global", "shared", "param"]).ok_or_else(|| match m.list.first() {
            Some(x) => format!("unknown modifier `.{x}` in `{}`", m.opcode),
            None => format!("`{}`: missing state space", m.opcode),
        })?;
        if load && space == "global" {
            // `.nc` (read-only cache) reads the same memory as a plain `ld.global`.
            m.take("nc");
        }
        let n = match m.take_any(&["v2", "v4"]) {
            Some("v2") => 2,
            Some(_) => 4,
            None => 1,
        };
        let ty = m.ty()?;
        m.done()?;
        if space == "param" {
            if !load || n != 1 {
                return Err(format!("unsupported form `{}`", m.opcode));
            }
            let Some(Operand::Addr(Address { base: AddrBase::Sym(name), off })) = ops.get(1) else {
                return Err("ld.param: expected [param_name+offset]".into());
            };
            let slot = self
                .symbols
                .params
                .iter()
                .find(|p| p.name == *name)
                .ok_or_else(|| format!("unknown parameter `{name}`"))?;
            let end = *off + ty.bytes() as i64;
            if *off < 0 || end > slot.size as i64 {
                return Err(format!(
                    "ld.param: bytes {off}..{end} outside parameter `{name}` of {} bytes",
                    slot.size
                ));
            }
            return Ok(Op::LdParam { ty, d: self.dst(ops.first())?, off: (slot.offset as i64 + off) as u32 });
        }
        let space = if space == "global" { Space::Global } else { Space::Shared };
        if load {
            let d = self.regs(ops.first(), n, ty, true)?;
            let (addr, off) = self.addr(ops.get(1))?;
            Ok(Op::Ld { space, ty, n: n as u8, d, addr, off })
        } else {
            let (addr, off) = self.addr(ops.first())?;
            let a = self.regs(ops.get(1), n, ty, false)?;
            Ok(Op::St { space, ty, n: n as u8, a, addr, off })
        }
    }

    fn cp_async(&mut self, m: &mut Mods<'_>, ops: &[Operand<'_>]) -> Result<Op, String> {
        if !m.take("async") {
            return Err(format!("unknown instruction `{}`", m.opcode));
        }
        if m.take("commit_group") {
            m.done()?;
            Self::count(ops, 0)?;
            return Ok(Op::CpAsyncCommit);
        }
        if m.take("wait_group") {
            m.done()?;
            return match ops {
                [Operand::Imm(Imm::Int(n))] if (0..=64).contains(n) => Ok(Op::CpAsyncWait { n: *n as u32 }),
                _ => Err("cp.async.wait_group: expected a constant group count".into()),
            };
        }
        let cache = m.take_any(&["ca", "cg"]).ok_or_else(|| format!("unsupported form `{}`", m.opcode))?;
        if !((m.take("shared") || m.take("shared::cta")) && m.take("global")) {
            return Err(format!("unsupported form `{}`", m.opcode));
        }
        m.done()?;
        if !(3..=4).contains(&ops.len()) {
            return Err(format!("expected 3 or 4 operands, found {}", ops.len()));
        }
        let (dst, dst_off) = self.addr(ops.first())?;
        let (src, src_off) = self.addr(ops.get(1))?;
        let size = match ops.get(2) {
            Some(Operand::Imm(Imm::Int(n))) if [4, 8, 16].contains(n) && (cache == "ca" || *n == 16) => {
                *n as u32
            }
            _ => return Err(format!("`{}`: copy size must be 4, 8 or 16 (16 for .cg)", m.opcode)),
        };
        let src_size = match ops.get(3) {
            Some(o) => Some(self.src(Some(o), Ty::U32)?),
            None => None,
        };
        Ok(Op::CpAsync { dst, dst_off, src, src_off, size, src_size })
    }
}

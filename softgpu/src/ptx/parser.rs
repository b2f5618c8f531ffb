//! Module structure: directives, entries, parameter lists, register declarations, scopes,
//! labels and statements. Each statement is handed to `decode` once the whole module is
//! read (the `.file` table and `.shared` layout are only complete at the end).

use std::collections::HashMap;
use std::sync::Arc;

use super::decode::{self, AddrBase, Address, Imm, Operand, Stmt, Symbols};
use super::ir::{Guard, Loc, Pred, Reg, SPECIAL_REGS, Site};
use super::lexer::{Tok, Token, tokenize};
use super::{Kernel, Module, ParamSlot, PtxError};

/// A declared register: a data slot or a predicate slot.
#[derive(Debug, Clone, Copy)]
enum RegDef {
    Data(Reg),
    Pred(Pred),
}

/// An entry as read, before decoding.
struct RawEntry<'a> {
    name: String,
    params: Vec<ParamSlot>,
    param_bytes: usize,
    maxntid: Option<[u32; 3]>,
    reqntid: Option<[u32; 3]>,
    stmts: Vec<Stmt<'a>>,
    labels: HashMap<&'a str, u32>,
    /// Function-scope `.shared` arrays (nvcc demotes a kernel's `__shared__` arrays here):
    /// name, alignment, bytes.
    local_shared: Vec<(&'a str, usize, usize)>,
    num_regs: u32,
    num_preds: u32,
    line: u32,
}

struct Parser<'a> {
    text: &'a str,
    toks: Vec<Token<'a>>,
    pos: usize,
}

fn align_up(x: usize, a: usize) -> usize {
    x.div_ceil(a) * a
}

pub fn parse_module(text: &str) -> Result<Module, PtxError> {
    let mut p = Parser { text, toks: tokenize(text)?, pos: 0 };
    let mut files = Vec::new();
    let mut entries = Vec::new();
    // Static `.shared` arrays (name, alignment, bytes) get consecutive offsets in each
    // kernel's window; all `.extern .shared` arrays alias the dynamic region after them.
    let mut static_shared = Vec::new();
    let mut extern_shared = Vec::new();
    let mut extern_align = 1usize;
    while p.pos < p.toks.len() {
        let line = p.line();
        let word = p.word()?;
        match word {
            ".version" => {
                let v = p.num()?;
                let major = v.split('.').next().and_then(|m| m.parse::<u32>().ok());
                if major.is_none_or(|m| m > 9) {
                    return Err(p.err_at(line, format!("unsupported PTX version {v}")));
                }
            }
            ".target" => {
                p.word()?;
                while p.eat(',') {
                    p.word()?;
                }
            }
            ".address_size" => {
                if p.num()? != "64" {
                    return Err(p.err_at(line, "only .address_size 64 is supported".into()));
                }
            }
            ".file" => {
                let index = p.uint()?;
                let path = p.string()?;
                // Optional timestamp and size.
                while p.eat(',') {
                    p.num()?;
                }
                files.push((index, path.to_string()));
            }
            ".section" => {
                p.word()?;
                p.skip_braced()?;
            }
            ".extern" | ".visible" | ".weak" | ".entry" | ".shared" => {
                let directive = if word == ".entry" || word == ".shared" { word } else { p.word()? };
                match directive {
                    ".entry" => entries.push(p.entry()?),
                    ".shared" if word == ".extern" => {
                        let (name, align, size) = p.shared_decl()?;
                        if size.is_some() {
                            return Err(p.err_at(line, format!("`.extern .shared {name}` with a size")));
                        }
                        extern_align = extern_align.max(align);
                        extern_shared.push(name);
                    }
                    ".shared" => static_shared.push(p.sized_shared_decl(line)?),
                    other => return Err(p.err_at(line, format!("unknown directive `{word} {other}`"))),
                }
            }
            other => return Err(p.err_at(line, format!("unknown directive `{other}`"))),
        }
    }
    let files = Arc::new(files);
    let mut kernels = Vec::with_capacity(entries.len());
    for e in entries {
        // This kernel's window: module statics, its own (demoted, function-scope)
        // statics, then the dynamic region every `.extern .shared` array names.
        let mut shared: HashMap<&str, u32> = HashMap::new();
        let mut size = 0;
        for &(name, align, bytes) in static_shared.iter().chain(&e.local_shared) {
            size = align_up(size, align);
            shared.insert(name, size as u32);
            size += bytes;
        }
        let dynamic_offset = align_up(size, extern_align);
        let dynamic_offset = u32::try_from(dynamic_offset).map_err(|_| PtxError {
            line: e.line,
            message: format!("`{}`: static shared memory too large", e.name),
        })?;
        for &name in &extern_shared {
            shared.insert(name, dynamic_offset);
        }
        let symbols = Symbols { shared: &shared, params: &e.params, labels: &e.labels };
        let mut body = decode::decode_body(&e.stmts, &symbols, e.num_regs, e.num_preds)?;
        body.static_shared = size as u32;
        body.dynamic_offset = dynamic_offset;
        body.maxntid = e.maxntid;
        body.reqntid = e.reqntid;
        kernels.push(Kernel {
            name: e.name,
            params: e.params,
            param_bytes: e.param_bytes,
            body,
            files: Arc::clone(&files),
        });
    }
    Ok(Module { kernels })
}

impl<'a> Parser<'a> {
    fn line(&self) -> u32 {
        self.toks.get(self.pos).or(self.toks.last()).map_or(1, |t| t.line)
    }

    fn err_at(&self, line: u32, message: String) -> PtxError {
        PtxError { line, message }
    }

    fn err(&self, message: String) -> PtxError {
        self.err_at(self.line(), message)
    }

    fn peek(&self) -> Option<Tok<'a>> {
        self.toks.get(self.pos).map(|t| t.tok)
    }

    fn next(&mut self) -> Result<Token<'a>, PtxError> {
        let t = self.toks.get(self.pos).copied().ok_or_else(|| self.err("unexpected end of file".into()))?;
        self.pos += 1;
        Ok(t)
    }

    fn describe(tok: Tok<'_>) -> String {
        match tok {
            Tok::Word(w) | Tok::Num(w) => format!("`{w}`"),
            Tok::Str(s) => format!("\"{s}\""),
            Tok::Punct(c) => format!("`{c}`"),
        }
    }

    fn word(&mut self) -> Result<&'a str, PtxError> {
        let t = self.next()?;
        match t.tok {
            Tok::Word(w) => Ok(w),
            other => Err(self.err_at(t.line, format!("expected a name, found {}", Self::describe(other)))),
        }
    }

    fn num(&mut self) -> Result<&'a str, PtxError> {
        let t = self.next()?;
        match t.tok {
            Tok::Num(n) => Ok(n),
            other => Err(self.err_at(t.line, format!("expected a number, found {}", Self::describe(other)))),
        }
    }

    fn uint(&mut self) -> Result<u32, PtxError> {
        let line = self.line();
        let n = self.num()?;
        n.parse().map_err(|_| self.err_at(line, format!("expected an unsigned integer, found `{n}`")))
    }

    fn string(&mut self) -> Result<&'a str, PtxError> {
        let t = self.next()?;
        match t.tok {
            Tok::Str(s) => Ok(s),
            other => Err(self.err_at(t.line, format!("expected a string, found {}", Self::describe(other)))),
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), PtxError> {
        let t = self.next()?;
        if t.tok == Tok::Punct(c) {
            Ok(())
        } else {
            Err(self.err_at(t.line, format!("expected `{c}`, found {}", Self::describe(t.tok))))
        }
    }

    /// Skips a `{ … }` block (debug sections).
    fn skip_braced(&mut self) -> Result<(), PtxError> {
        self.expect('{')?;
        let mut depth = 1;
        while depth > 0 {
            match self.next()?.tok {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => depth -= 1,
                _ => {}
            }
        }
        Ok(())
    }

    /// `[.align N] .b8 name[SIZE];` after `.shared`; size `None` for `name[]`.
    fn shared_decl(&mut self) -> Result<(&'a str, usize, Option<usize>), PtxError> {
        let mut align = 1usize;
        let mut ty = self.word()?;
        if ty == ".align" {
            align = self.uint()? as usize;
            ty = self.word()?;
        }
        let elem = match ty {
            ".b8" | ".u8" | ".s8" => 1,
            ".b16" | ".u16" | ".s16" | ".f16" => 2,
            ".b32" | ".u32" | ".s32" | ".f32" => 4,
            ".b64" | ".u64" | ".s64" | ".f64" => 8,
            other => return Err(self.err(format!("unsupported .shared type `{other}`"))),
        };
        let name = self.word()?;
        self.expect('[')?;
        let size = if self.eat(']') {
            None
        } else {
            let n = self.uint()? as usize;
            self.expect(']')?;
            Some(n * elem)
        };
        self.expect(';')?;
        Ok((name, align.max(elem), size))
    }

    /// A static `.shared` array: its size is required.
    fn sized_shared_decl(&mut self, line: u32) -> Result<(&'a str, usize, usize), PtxError> {
        let (name, align, size) = self.shared_decl()?;
        let size = size.ok_or_else(|| self.err_at(line, format!("`.shared {name}[]` without size")))?;
        Ok((name, align, size))
    }

    fn entry(&mut self) -> Result<RawEntry<'a>, PtxError> {
        let line = self.line();
        let name = self.word()?.to_string();
        let mut params = Vec::new();
        let mut param_bytes = 0usize;
        self.expect('(')?;
        if !self.eat(')') {
            loop {
                let (pname, align, size) = self.param_decl()?;
                let offset = align_up(param_bytes, align);
                param_bytes = offset + size;
                params.push(ParamSlot { name: pname.to_string(), offset, size });
                if self.eat(')') {
                    break;
                }
                self.expect(',')?;
            }
        }
        let mut maxntid = None;
        let mut reqntid = None;
        loop {
            match self.peek() {
                Some(Tok::Word(".maxntid")) => {
                    self.pos += 1;
                    maxntid = Some(self.dims()?);
                }
                Some(Tok::Word(".reqntid")) => {
                    self.pos += 1;
                    reqntid = Some(self.dims()?);
                }
                Some(Tok::Punct('{')) => break,
                Some(Tok::Word(w)) => return Err(self.err(format!("unknown directive `{w}`"))),
                _ => return Err(self.err(format!("expected the body of `{name}`"))),
            }
        }
        self.expect('{')?;
        let mut body = BodyParser {
            scopes: vec![HashMap::new()],
            num_regs: SPECIAL_REGS.len() as u32,
            num_preds: 0,
            stmts: Vec::new(),
            labels: HashMap::new(),
            local_shared: Vec::new(),
            loc: Loc::default(),
        };
        self.body(&mut body)?;
        Ok(RawEntry {
            name,
            params,
            param_bytes,
            maxntid,
            reqntid,
            stmts: body.stmts,
            labels: body.labels,
            local_shared: body.local_shared,
            num_regs: body.num_regs,
            num_preds: body.num_preds,
            line,
        })
    }

    /// `.maxntid x[, y[, z]]`.
    fn dims(&mut self) -> Result<[u32; 3], PtxError> {
        let mut d = [1u32; 3];
        d[0] = self.uint()?;
        for slot in d.iter_mut().skip(1) {
            if !self.eat(',') {
                break;
            }
            *slot = self.uint()?;
        }
        Ok(d)
    }

    /// `.param .u64 name` or `.param .align A .b8 name[N]`: (name, alignment, size).
    fn param_decl(&mut self) -> Result<(&'a str, usize, usize), PtxError> {
        let kw = self.word()?;
        if kw != ".param" {
            return Err(self.err(format!("expected `.param`, found `{kw}`")));
        }
        let mut align = None;
        let mut ty = self.word()?;
        if ty == ".align" {
            align = Some(self.uint()? as usize);
            ty = self.word()?;
        }
        let elem = match ty {
            ".b8" | ".u8" | ".s8" => 1,
            ".b16" | ".u16" | ".s16" | ".f16" => 2,
            ".b32" | ".u32" | ".s32" | ".f32" => 4,
            ".b64" | ".u64" | ".s64" | ".f64" => 8,
            other => return Err(self.err(format!("unsupported parameter type `{other}`"))),
        };
        let name = self.word()?;
        let mut size = elem;
        if self.eat('[') {
            size = elem * self.uint()? as usize;
            self.expect(']')?;
        }
        let align = align.unwrap_or(elem);
        if !align.is_power_of_two() {
            return Err(self.err(format!("parameter `{name}`: alignment {align} is not a power of two")));
        }
        Ok((name, align, size))
    }

    fn body(&mut self, b: &mut BodyParser<'a>) -> Result<(), PtxError> {
        loop {
            let t = self.next()?;
            match t.tok {
                Tok::Punct('}') => {
                    b.scopes.pop();
                    if b.scopes.is_empty() {
                        return Ok(());
                    }
                }
                Tok::Punct('{') => b.scopes.push(HashMap::new()),
                Tok::Word(".reg") => self.reg_decl(b)?,
                Tok::Word(".loc") => b.loc = self.loc(t.line)?,
                Tok::Word(".shared") => b.local_shared.push(self.sized_shared_decl(t.line)?),
                Tok::Word(".pragma") => {
                    let s = self.string()?;
                    if s != "nounroll" {
                        return Err(self.err_at(t.line, format!("unknown pragma \"{s}\"")));
                    }
                    self.expect(';')?;
                }
                Tok::Word(w) if w.starts_with('.') => {
                    return Err(self.err_at(t.line, format!("unknown directive `{w}`")));
                }
                Tok::Word(w) if self.peek() == Some(Tok::Punct(':')) => {
                    self.pos += 1;
                    if b.labels.insert(w, b.stmts.len() as u32).is_some() {
                        return Err(self.err_at(t.line, format!("label `{w}` defined twice")));
                    }
                }
                Tok::Punct('@') => {
                    let negate = self.eat('!');
                    let name = self.word()?;
                    let pred = match b.lookup(name) {
                        Some(RegDef::Pred(p)) => p,
                        _ => return Err(self.err_at(t.line, format!("`{name}` is not a predicate register"))),
                    };
                    let op = self.next()?;
                    let Tok::Word(opcode) = op.tok else {
                        return Err(self.err_at(
                            op.line,
                            format!("expected an instruction, found {}", Self::describe(op.tok)),
                        ));
                    };
                    self.statement(b, Some(Guard { pred, negate }), opcode, t)?;
                }
                Tok::Word(opcode) => self.statement(b, None, opcode, t)?,
                other => return Err(self.err_at(t.line, format!("unexpected {}", Self::describe(other)))),
            }
        }
    }

    /// `.reg .b32 %r<12>;`, `.reg .b16 %rs1, %rs2;`.
    fn reg_decl(&mut self, b: &mut BodyParser<'a>) -> Result<(), PtxError> {
        let ty = self.word()?;
        let pred = match ty {
            ".pred" => true,
            ".b16" | ".u16" | ".s16" | ".f16" | ".b32" | ".u32" | ".s32" | ".f32" | ".b64" | ".u64"
            | ".s64" | ".f64" => false,
            other => return Err(self.err(format!("unsupported register type `{other}`"))),
        };
        loop {
            let name = self.word()?;
            if self.eat('<') {
                let count = self.uint()?;
                self.expect('>')?;
                for i in 0..count {
                    b.declare(format!("{name}{i}"), pred);
                }
            } else {
                b.declare(name.to_string(), pred);
            }
            if self.eat(';') {
                return Ok(());
            }
            self.expect(',')?;
        }
    }

    /// `.loc file line col[, function_name $L…, inlined_at file line col]` (no `;`: it ends
    /// with its line).
    fn loc(&mut self, line: u32) -> Result<Loc, PtxError> {
        let file = self.uint()?;
        let src_line = self.uint()?;
        self.uint()?;
        let mut inlined_at = None;
        while self.toks.get(self.pos).is_some_and(|t| t.line == line) {
            if let Tok::Word("inlined_at") = self.next()?.tok {
                let f = self.uint()?;
                let l = self.uint()?;
                inlined_at = Some((f, l));
            }
        }
        Ok(Loc { file: Some(file), line: src_line, inlined_at })
    }

    fn statement(
        &mut self,
        b: &mut BodyParser<'a>,
        guard: Option<Guard>,
        opcode: &'a str,
        first: Token<'a>,
    ) -> Result<(), PtxError> {
        let mut operands = Vec::new();
        if !self.eat(';') {
            loop {
                operands.push(self.operand(b)?);
                if self.eat(';') {
                    break;
                }
                self.expect(',')?;
            }
        }
        let end = self.toks[self.pos - 1].end;
        let text: String = self.text[first.start..end].split_whitespace().collect::<Vec<_>>().join(" ");
        let site = Site { ptx_line: first.line, loc: b.loc, text: text.into_boxed_str() };
        b.stmts.push(Stmt { guard, opcode, operands, site });
        Ok(())
    }

    fn operand(&mut self, b: &BodyParser<'a>) -> Result<Operand<'a>, PtxError> {
        let t = self.next()?;
        match t.tok {
            Tok::Punct('[') => {
                let base_tok = self.next()?;
                let base = match base_tok.tok {
                    Tok::Word(w) => match b.lookup(w) {
                        Some(RegDef::Data(r)) => AddrBase::Reg(r),
                        Some(RegDef::Pred(_)) => {
                            return Err(self.err_at(t.line, format!("predicate `{w}` used as an address")));
                        }
                        None if w.starts_with('%') => {
                            return Err(self.err_at(t.line, format!("undeclared register `{w}`")));
                        }
                        None => AddrBase::Sym(w),
                    },
                    other => {
                        return Err(
                            self.err_at(t.line, format!("unsupported address {}", Self::describe(other)))
                        );
                    }
                };
                let mut off = 0i64;
                if self.eat('+') {
                    let neg = self.eat('-');
                    off = self.int_literal()?;
                    if neg {
                        off = -off;
                    }
                } else if self.eat('-') {
                    off = -self.int_literal()?;
                }
                self.expect(']')?;
                Ok(Operand::Addr(Address { base, off }))
            }
            Tok::Punct('{') => {
                let mut elems = Vec::new();
                loop {
                    elems.push(self.operand(b)?);
                    if self.eat('}') {
                        break;
                    }
                    self.expect(',')?;
                }
                Ok(Operand::Vec(elems))
            }
            Tok::Punct('!') => {
                let name = self.word()?;
                match b.lookup(name) {
                    Some(RegDef::Pred(p)) => Ok(Operand::Pred(p, true)),
                    _ => Err(self.err_at(t.line, format!("`!{name}`: not a predicate register"))),
                }
            }
            Tok::Punct('-') => {
                let n = self.num()?;
                let imm = parse_imm(n).ok_or_else(|| self.err_at(t.line, format!("bad number `-{n}`")))?;
                match imm {
                    Imm::Int(v) => Ok(Operand::Imm(Imm::Int(v.wrapping_neg()))),
                    _ => Err(self.err_at(t.line, format!("negated float literal `-{n}`"))),
                }
            }
            Tok::Num(n) => {
                let imm = parse_imm(n).ok_or_else(|| self.err_at(t.line, format!("bad number `{n}`")))?;
                Ok(Operand::Imm(imm))
            }
            Tok::Word(w) => {
                if let Some(i) = SPECIAL_REGS.iter().position(|s| *s == w) {
                    return Ok(Operand::Reg(i as Reg));
                }
                match b.lookup(w) {
                    Some(RegDef::Data(r)) => Ok(Operand::Reg(r)),
                    Some(RegDef::Pred(p)) => Ok(Operand::Pred(p, false)),
                    None if w.starts_with('%') => {
                        Err(self.err_at(t.line, format!("undeclared or unsupported register `{w}`")))
                    }
                    None => Ok(Operand::Sym(w)),
                }
            }
            other => Err(self.err_at(t.line, format!("unexpected {} in operands", Self::describe(other)))),
        }
    }

    fn int_literal(&mut self) -> Result<i64, PtxError> {
        let line = self.line();
        let n = self.num()?;
        match parse_imm(n) {
            Some(Imm::Int(v)) => Ok(v),
            _ => Err(self.err_at(line, format!("expected an integer offset, found `{n}`"))),
        }
    }
}

/// Integer literals (decimal, `0x` hex, `0` octal, optional `U` suffix) and the hex float
/// forms `0f` (f32 bits) and `0d` (f64 bits).
fn parse_imm(n: &str) -> Option<Imm> {
    let lower = n.to_ascii_lowercase();
    if let Some(h) = lower.strip_prefix("0f") {
        return (h.len() == 8).then(|| u32::from_str_radix(h, 16).ok().map(Imm::F32)).flatten();
    }
    if let Some(h) = lower.strip_prefix("0d") {
        return (h.len() == 16).then(|| u64::from_str_radix(h, 16).ok().map(Imm::F64)).flatten();
    }
    let digits = lower.strip_suffix('u').unwrap_or(&lower);
    let v = if let Some(h) = digits.strip_prefix("0x") {
        u64::from_str_radix(h, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        u64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<u64>().ok()?
    };
    Some(Imm::Int(v as i64))
}

struct BodyParser<'a> {
    scopes: Vec<HashMap<String, RegDef>>,
    num_regs: u32,
    num_preds: u32,
    stmts: Vec<Stmt<'a>>,
    labels: HashMap<&'a str, u32>,
    local_shared: Vec<(&'a str, usize, usize)>,
    loc: Loc,
}

impl BodyParser<'_> {
    fn declare(&mut self, name: String, pred: bool) {
        let def = if pred {
            self.num_preds += 1;
            RegDef::Pred(self.num_preds - 1)
        } else {
            self.num_regs += 1;
            RegDef::Data(self.num_regs - 1)
        };
        if let Some(scope) = self.scopes.last_mut() {
            scope.insert(name, def);
        }
    }

    fn lookup(&self, name: &str) -> Option<RegDef> {
        self.scopes.iter().rev().find_map(|s| s.get(name).copied())
    }
}

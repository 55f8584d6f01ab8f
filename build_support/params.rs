//! Kernel parameters defined once: a reader of `kernels/params/*.h` that writes their Rust side.
//!
//! Every op's kernels take one parameter struct by value (flash-attention's `Flash_fwd_params`),
//! declared with the op's shared constants (tile sizes, threads per block, check codes) in a plain
//! C header that nvcc, the emulator's host build and a layout probe all compile. build.rs turns
//! the headers into `#[repr(C)]` structs and `pub const`s (`$OUT_DIR/params.rs`, included by
//! `src/gpu/params.rs`), so no constant or struct is mirrored by hand.
//!
//! The headers are written in a deliberately small subset of C, which this module reads without
//! libclang (no bindgen: no libclang on the build machines, and the subset is all the kernels
//! need). Anything else fails the build with the file, line and what was expected:
//!
//! ```c
//! #pragma once
//! #include <stdint.h>                        // or "other_op.h": ignored here, compiled by C
//! #define CK_OP_NAME 128                      // non-negative integer: a literal or an
//! #define CK_OP_BYTES (2 * CK_OP_NAME + 16)   //   expression (+ - * / ( )) of earlier constants
//! typedef struct CkOpParams {                 // name Ck...; Rust: OpParams
//!     const void* x;                          // any pointer -> u64 (a CUdeviceptr)
//!     int32_t n;                              // int32_t uint32_t int64_t uint64_t uint8_t float
//!     CkOtherStruct side;                     // a struct of an earlier header, by value
//! } CkOpParams;
//! ```
//!
//! Comments (`//`, `/* */`) are allowed anywhere; one field per line.
//!
//! Constants lose `CK_` and the op's prefix (`CK_TOPK_TILE` in topk.h is `params::topk::TILE`) and
//! are `usize` (they size grids and buffers; negative values are refused). Structs lose `Ck`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One field of a parameter struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C type as written, for the generated docs ("const float*").
    pub c_type: String,
    /// The Rust type: u64 for a pointer, a scalar, or another generated struct.
    pub rust_type: String,
    pub doc: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Struct {
    /// The C name (`CkSimilarityParams`).
    pub c_name: String,
    /// The Rust name (`SimilarityParams`).
    pub rust_name: String,
    pub fields: Vec<Field>,
    pub doc: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constant {
    pub c_name: String,
    pub rust_name: String,
    pub value: u64,
    pub doc: String,
}

/// One header: `kernels/params/<op>.h`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header {
    pub op: String,
    pub constants: Vec<Constant>,
    pub structs: Vec<Struct>,
}

/// What earlier headers defined: constants (for expressions) and structs (for by-value fields).
#[derive(Debug, Default)]
pub struct Known {
    pub constants: BTreeMap<String, u64>,
    /// C name -> (op, Rust name).
    pub structs: BTreeMap<String, (String, String)>,
}

fn scalar_rust_type(c: &str) -> Option<&'static str> {
    Some(match c {
        "int32_t" => "i32",
        "uint32_t" => "u32",
        "int64_t" => "i64",
        "uint64_t" => "u64",
        "uint8_t" => "u8",
        "float" => "f32",
        _ => return None,
    })
}

/// Removes comments, keeping line breaks (so errors name the header's lines); collects each line's
/// `//` comment text as documentation.
fn strip_comments(src: &str) -> (Vec<String>, Vec<String>) {
    let mut code = Vec::new();
    let mut docs = Vec::new();
    let mut in_block = false;
    for line in src.lines() {
        let mut out = String::new();
        let mut doc = String::new();
        let mut rest = line;
        loop {
            if in_block {
                match rest.find("*/") {
                    Some(i) => {
                        in_block = false;
                        rest = &rest[i + 2..];
                    }
                    None => break,
                }
            } else {
                let line_c = rest.find("//");
                let block = rest.find("/*");
                match (line_c, block) {
                    (Some(l), b) if b.is_none_or(|b| l < b) => {
                        out.push_str(&rest[..l]);
                        doc = rest[l + 2..].trim().to_owned();
                        break;
                    }
                    (_, Some(b)) => {
                        out.push_str(&rest[..b]);
                        out.push(' ');
                        in_block = true;
                        rest = &rest[b + 2..];
                    }
                    _ => {
                        out.push_str(rest);
                        break;
                    }
                }
            }
        }
        code.push(out);
        docs.push(doc);
    }
    (code, docs)
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "box", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn", "for", "gen",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "priv", "pub", "ref", "return", "self", "static", "struct", "super",
    "trait", "true", "try", "type", "unsafe", "use", "where", "while", "yield",
];

/// Evaluates a constant expression: integers, earlier constants, + - * / and parentheses.
fn eval(expr: &str, consts: &BTreeMap<String, u64>) -> Result<u64, String> {
    #[derive(Debug, Clone, PartialEq)]
    enum Tok {
        Num(i128),
        Op(char),
    }
    let mut toks = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i] as char;
        if c.is_whitespace() {
            i += 1;
        } else if "+-*/()".contains(c) {
            toks.push(Tok::Op(c));
            i += 1;
        } else if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i] as char).is_ascii_alphanumeric() {
                i += 1;
            }
            let lit = expr[start..i].trim_end_matches(['u', 'U', 'l', 'L']);
            let v = if let Some(hex) = lit.strip_prefix("0x").or_else(|| lit.strip_prefix("0X")) {
                i128::from_str_radix(hex, 16)
            } else {
                lit.parse()
            }
            .map_err(|_| format!("`{}` is not an integer literal", &expr[start..i]))?;
            toks.push(Tok::Num(v));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && ((b[i] as char).is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let name = &expr[start..i];
            let v = consts.get(name).ok_or_else(|| format!("`{name}` is not a constant defined above"))?;
            toks.push(Tok::Num(*v as i128));
        } else {
            return Err(format!("unexpected `{c}` in a constant expression (integers, + - * / and parentheses only)"));
        }
    }
    // Recursive descent: sum := product (('+'|'-') product)*, product := atom (('*'|'/') atom)*.
    fn atom(t: &[Tok], i: &mut usize) -> Result<i128, String> {
        match t.get(*i) {
            Some(Tok::Num(v)) => {
                *i += 1;
                Ok(*v)
            }
            Some(Tok::Op('(')) => {
                *i += 1;
                let v = sum(t, i)?;
                if t.get(*i) != Some(&Tok::Op(')')) {
                    return Err("missing `)`".into());
                }
                *i += 1;
                Ok(v)
            }
            Some(Tok::Op('-')) => {
                *i += 1;
                Ok(-atom(t, i)?)
            }
            other => Err(format!("expected a number or `(`, found {other:?}")),
        }
    }
    fn product(t: &[Tok], i: &mut usize) -> Result<i128, String> {
        let mut v = atom(t, i)?;
        while let Some(Tok::Op(op @ ('*' | '/'))) = t.get(*i) {
            *i += 1;
            let r = atom(t, i)?;
            v = if *op == '*' {
                v * r
            } else {
                if r == 0 {
                    return Err("division by zero".into());
                }
                v / r
            };
        }
        Ok(v)
    }
    fn sum(t: &[Tok], i: &mut usize) -> Result<i128, String> {
        let mut v = product(t, i)?;
        while let Some(Tok::Op(op @ ('+' | '-'))) = t.get(*i) {
            *i += 1;
            let r = product(t, i)?;
            v = if *op == '+' { v + r } else { v - r };
        }
        Ok(v)
    }
    let mut pos = 0;
    let v = sum(&toks, &mut pos)?;
    if pos != toks.len() {
        return Err(format!("unexpected {:?} after the expression", toks[pos]));
    }
    u64::try_from(v).map_err(|_| format!("the value {v} is negative (constants size grids and buffers)"))
}

/// Reads one header (`op` is its file stem). `known` holds what earlier headers defined and
/// receives this one's definitions.
pub fn parse_header(op: &str, src: &str, known: &mut Known) -> Result<Header, String> {
    let (lines, docs) = strip_comments(src);
    let mut header = Header { op: op.to_owned(), ..Header::default() };
    let op_prefix = format!("CK_{}_", op.to_ascii_uppercase());
    let mut current: Option<Struct> = None;
    let mut pending_doc = String::new();
    for (idx, raw) in lines.iter().enumerate() {
        let at = |msg: String| format!("kernels/params/{op}.h:{}: {msg}\n    {}", idx + 1, src.lines().nth(idx).unwrap_or("").trim());
        let line = raw.trim();
        let doc = &docs[idx];
        if line.is_empty() {
            // A comment block above a definition documents it; a blank line ends the block.
            if doc.is_empty() {
                pending_doc.clear();
            } else {
                if !pending_doc.is_empty() {
                    pending_doc.push(' ');
                }
                pending_doc.push_str(doc);
            }
            continue;
        }
        let mut item_doc = std::mem::take(&mut pending_doc);
        if !doc.is_empty() {
            if !item_doc.is_empty() {
                item_doc.push(' ');
            }
            item_doc.push_str(doc);
        }
        if let Some(s) = current.as_mut() {
            if let Some(rest) = line.strip_prefix('}') {
                let name = rest.trim().strip_suffix(';').map(str::trim);
                if name != Some(s.c_name.as_str()) {
                    return Err(at(format!("expected `}} {};` closing the typedef", s.c_name)));
                }
                let s = current.take().unwrap();
                known.structs.insert(s.c_name.clone(), (op.to_owned(), s.rust_name.clone()));
                header.structs.push(s);
                continue;
            }
            let decl = line.strip_suffix(';').ok_or_else(|| at("expected a field `type name;` (one per line) or `} Name;`".into()))?;
            let (_, name) = decl.rsplit_once(|c: char| c.is_whitespace() || c == '*').ok_or_else(|| at("expected `type name;`".into()))?;
            let ty = decl[..decl.len() - name.len()].trim();
            if decl.contains(',') {
                return Err(at("one field per line (no `type a, b;`)".into()));
            }
            if !is_ident(name) || name.contains(',') {
                return Err(at(format!("`{name}` is not a field name (one field per line, no arrays)")));
            }
            if RUST_KEYWORDS.contains(&name) {
                return Err(at(format!("`{name}` is a Rust keyword")));
            }
            let words: Vec<&str> = ty.split_whitespace().collect();
            let c_type = words.join(" ").replace(" *", "*");
            let rust_type = if c_type.ends_with('*') {
                let base = c_type.trim_end_matches('*').trim().trim_start_matches("const ").trim();
                if c_type.matches('*').count() != 1 {
                    return Err(at(format!("`{c_type}`: one level of pointer only")));
                }
                if base != "void" && scalar_rust_type(base).is_none() && !known.structs.contains_key(base) {
                    return Err(at(format!("`{c_type}`: a pointer to an unknown type")));
                }
                "u64".to_owned()
            } else if let Some(t) = scalar_rust_type(&c_type) {
                t.to_owned()
            } else if let Some((other_op, rust)) = known.structs.get(&c_type) {
                if other_op == op {
                    rust.clone()
                } else {
                    format!("super::{other_op}::{rust}")
                }
            } else {
                return Err(at(format!(
                    "unknown field type `{c_type}` (pointers, int32_t, uint32_t, int64_t, uint64_t, uint8_t, float, or a Ck struct defined above)"
                )));
            };
            s.fields.push(Field { name: name.to_owned(), c_type, rust_type, doc: item_doc });
            continue;
        }
        if line == "#pragma once" || line.starts_with("#include ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("#define ") {
            let rest = rest.trim();
            let (name, expr) = rest.split_once(char::is_whitespace).ok_or_else(|| at("`#define NAME value` needs a value".into()))?;
            if !name.starts_with("CK_") || !is_ident(name) {
                return Err(at(format!("`{name}`: constants are named CK_... (no function-like macros)")));
            }
            let value = eval(expr, &known.constants).map_err(|e| at(format!("`{name}`: {e}")))?;
            let rust_name = name.strip_prefix(&op_prefix).or_else(|| name.strip_prefix("CK_")).unwrap().to_owned();
            if rust_name.is_empty() || !rust_name.starts_with(|c: char| c.is_ascii_alphabetic()) {
                return Err(at(format!("`{name}` leaves no Rust name once its prefix is removed")));
            }
            if known.constants.insert(name.to_owned(), value).is_some() {
                return Err(at(format!("`{name}` is defined twice")));
            }
            header.constants.push(Constant { c_name: name.to_owned(), rust_name, value, doc: item_doc });
            continue;
        }
        if let Some(rest) = line.strip_prefix("typedef struct ") {
            let name = rest.strip_suffix('{').map(str::trim).ok_or_else(|| at("expected `typedef struct CkName {`".into()))?;
            let rust_name = name.strip_prefix("Ck").filter(|r| r.starts_with(|c: char| c.is_ascii_uppercase()));
            let Some(rust_name) = rust_name.filter(|_| is_ident(name)) else {
                return Err(at(format!("`{name}`: parameter structs are named CkSomething")));
            };
            if known.structs.contains_key(name) {
                return Err(at(format!("`{name}` is defined twice")));
            }
            current = Some(Struct { c_name: name.to_owned(), rust_name: rust_name.to_owned(), fields: Vec::new(), doc: item_doc });
            continue;
        }
        return Err(at("not part of the parameter-header subset (#pragma once, #include, #define CK_..., typedef struct Ck... { type name; ... } Ck...;)".into()));
    }
    if let Some(s) = current {
        return Err(format!("kernels/params/{op}.h: `{}` is not closed", s.c_name));
    }
    Ok(header)
}

fn rust_doc(out: &mut String, indent: &str, doc: &str) {
    if !doc.is_empty() {
        // The C comment as plain text: no Markdown code spans, links (`a[i]`) or HTML tags (`<op>`).
        let text = doc.replace('`', "'").replace('[', "\\[").replace(']', "\\]").replace('<', "&lt;").replace('>', "&gt;");
        let _ = writeln!(out, "{indent}/// {text}");
    }
}

/// The Rust module of the headers: `pub mod <op>` each, the layout table the drift test compares
/// with the C compiler's (`LAYOUTS`), and the C++ probe that prints the C side.
pub fn generate_rust(headers: &[Header]) -> String {
    let mut out = String::new();
    out.push_str("// Generated by build_support/params.rs from kernels/params/*.h. Do not edit.\n\n");
    for h in headers {
        let _ = writeln!(out, "/// Generated from `kernels/params/{}.h`.\npub mod {} {{", h.op, h.op);
        for c in &h.constants {
            rust_doc(&mut out, "    ", &c.doc);
            let _ = writeln!(out, "    #[doc = \"`{}`\"]\n    pub const {}: usize = {};", c.c_name, c.rust_name, c.value);
        }
        for s in &h.structs {
            rust_doc(&mut out, "    ", &s.doc);
            let _ = writeln!(
                out,
                "    #[doc = \"`{}`: passed to the kernels by value.\"]\n    #[repr(C)]\n    #[derive(Clone, Copy, Debug, Default, PartialEq)]\n    pub struct {} {{",
                s.c_name, s.rust_name
            );
            for f in &s.fields {
                rust_doc(&mut out, "        ", &f.doc);
                let _ = writeln!(out, "        #[doc = \"`{}`\"]\n        pub {}: {},", f.c_type, f.name, f.rust_type);
            }
            let _ = writeln!(
                out,
                "    }}\n    // SAFETY: plain old data (integers, floats, device addresses), laid out as the C struct (the\n    // drift test compares every offset with the C compiler's).\n    unsafe impl super::KernelParams for {0} {{}}\n    unsafe impl cudarc::driver::DeviceRepr for {0} {{}}",
                s.rust_name
            );
        }
        out.push_str("}\n\n");
    }
    out.push_str("/// Every struct's layout as Rust lays it out: (C name, size, [(field, offset)]).\n");
    out.push_str("#[allow(dead_code)]\npub(crate) type Layout = (&'static str, usize, &'static [(&'static str, usize)]);\n");
    out.push_str("#[allow(dead_code)]\npub(crate) const LAYOUTS: &[Layout] = &[\n");
    for h in headers {
        for s in &h.structs {
            let path = format!("{}::{}", h.op, s.rust_name);
            let _ = write!(out, "    ({:?}, ::core::mem::size_of::<{path}>(), &[", s.c_name);
            for f in &s.fields {
                let _ = write!(out, "({:?}, ::core::mem::offset_of!({path}, {})), ", f.name, f.name);
            }
            out.push_str("]),\n");
        }
    }
    out.push_str("];\n");
    out
}

/// A C++ program that prints, for every struct, `Name size N` then `Name.field offset` lines: the
/// C side of the drift test (the same format as [`format_rust_layouts`]).
pub fn generate_probe(headers: &[Header]) -> String {
    let mut out = String::from(
        "// Generated by build_support/params.rs: the C layout of kernels/params/*.h.\n#include <cstddef>\n#include <cstdio>\n",
    );
    for h in headers {
        let _ = writeln!(out, "#include \"params/{}.h\"", h.op);
    }
    out.push_str("int main() {\n");
    for h in headers {
        for s in &h.structs {
            let _ = writeln!(out, "    std::printf(\"{0} size %zu\\n\", sizeof({0}));", s.c_name);
            for f in &s.fields {
                let _ = writeln!(out, "    std::printf(\"{0}.{1} %zu\\n\", offsetof({0}, {1}));", s.c_name, f.name);
            }
        }
    }
    out.push_str("    return 0;\n}\n");
    out
}

/// One struct's layout as the generated `LAYOUTS` lists it: (C name, size, [(field, offset)]).
pub type Layout<'a> = (&'a str, usize, &'a [(&'a str, usize)]);

/// The Rust layouts in the probe's format.
pub fn format_rust_layouts(layouts: &[Layout]) -> String {
    let mut out = String::new();
    for (name, size, fields) in layouts {
        let _ = writeln!(out, "{name} size {size}");
        for (field, offset) in fields.iter() {
            let _ = writeln!(out, "{name}.{field} {offset}");
        }
    }
    out
}

/// Compares the probe's output with the Rust layouts; the error lists every line that differs.
pub fn compare_layouts(c: &str, rust: &str) -> Result<(), String> {
    let c_lines: Vec<&str> = c.lines().collect();
    let r_lines: Vec<&str> = rust.lines().collect();
    let mut diffs = Vec::new();
    for i in 0..c_lines.len().max(r_lines.len()) {
        let (a, b) = (c_lines.get(i).copied().unwrap_or("<none>"), r_lines.get(i).copied().unwrap_or("<none>"));
        if a != b {
            diffs.push(format!("  C: {a:<48} Rust: {b}"));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!("kernel parameter layouts differ between C and Rust:\n{}", diffs.join("\n")))
    }
}

/// Reads every `*.h` of `dir` in dependency order: a header may use the constants and structs of
/// headers it `#include`s, so headers are read in the order of their includes (then by name).
pub fn parse_dir(dir: &std::path::Path) -> Result<Vec<Header>, String> {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "h"))
        .map(|p| {
            let op = p.file_stem().unwrap().to_string_lossy().into_owned();
            std::fs::read_to_string(&p).map(|s| (op, s)).map_err(|e| format!("{}: {e}", p.display()))
        })
        .collect::<Result<_, _>>()?;
    files.sort();
    let mut done: Vec<String> = Vec::new();
    let mut headers = Vec::new();
    let mut known = Known::default();
    while !files.is_empty() {
        let ready = files.iter().position(|(_, src)| {
            src.lines().filter_map(|l| l.trim().strip_prefix("#include \"")).all(|inc| {
                let stem = inc.trim_end_matches('"').trim_end_matches(".h");
                done.iter().any(|d| d == stem)
            })
        });
        let Some(i) = ready else {
            return Err(format!("kernels/params: circular or unknown #include among {:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>()));
        };
        let (op, src) = files.remove(i);
        if !is_ident(&op) || RUST_KEYWORDS.contains(&op.as_str()) {
            return Err(format!("kernels/params/{op}.h: the file stem names a Rust module"));
        }
        headers.push(parse_header(&op, &src, &mut known)?);
        done.push(op);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "#pragma once\n#include <stdint.h>\n\n// Rows per block.\n#define CK_OP_ROWS 64\n#define CK_OP_BYTES (2 * CK_OP_ROWS + 16) /* bytes */\n#define CK_OTHER 0x10u\n\n/* The inputs. */\ntypedef struct CkOpParams {\n    const void* x;  // elements\n    float *y;\n    const int32_t* idx;\n    int32_t n;\n    float scale;\n    uint8_t flag;\n} CkOpParams;\n";

    #[test]
    fn parses_the_subset() {
        let mut known = Known::default();
        let h = parse_header("op", SAMPLE, &mut known).unwrap();
        let names: Vec<(&str, u64)> = h.constants.iter().map(|c| (c.rust_name.as_str(), c.value)).collect();
        assert_eq!(names, [("ROWS", 64), ("BYTES", 144), ("OTHER", 16)]);
        assert_eq!(h.constants[0].doc, "Rows per block.");
        assert_eq!(h.structs.len(), 1);
        let s = &h.structs[0];
        assert_eq!(s.rust_name, "OpParams");
        let fields: Vec<(&str, &str, &str)> = s.fields.iter().map(|f| (f.name.as_str(), f.c_type.as_str(), f.rust_type.as_str())).collect();
        assert_eq!(
            fields,
            [
                ("x", "const void*", "u64"),
                ("y", "float*", "u64"),
                ("idx", "const int32_t*", "u64"),
                ("n", "int32_t", "i32"),
                ("scale", "float", "f32"),
                ("flag", "uint8_t", "u8")
            ]
        );
        let rust = generate_rust(&[h]);
        assert!(rust.contains("pub const ROWS: usize = 64;"), "{rust}");
        assert!(rust.contains("pub struct OpParams {"), "{rust}");
    }

    #[test]
    fn structs_nest_across_headers() {
        let mut known = Known::default();
        parse_header("op", SAMPLE, &mut known).unwrap();
        let src = "#include \"op.h\"\n#define CK_TWO_N (CK_OP_ROWS / 2)\ntypedef struct CkTwoParams {\n    CkOpParams inner;\n    const CkOpParams* many;\n} CkTwoParams;\n";
        let h = parse_header("two", src, &mut known).unwrap();
        assert_eq!(h.constants[0].value, 32);
        assert_eq!(h.constants[0].rust_name, "N");
        assert_eq!(h.structs[0].fields[0].rust_type, "super::op::OpParams");
        assert_eq!(h.structs[0].fields[1].rust_type, "u64");
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let cases = [
            ("#define CK_A(x) x\n", "function-like"),
            ("#define OTHER 1\n", "named CK_"),
            ("#define CK_A -1\n", "negative"),
            ("#define CK_A CK_B\n", "not a constant defined above"),
            ("#define CK_A 1 << 3\n", "unexpected `<`"),
            ("#ifdef __cplusplus\n", "not part of the parameter-header subset"),
            ("enum Role { A };\n", "not part of the parameter-header subset"),
            ("typedef struct CkP {\n    double x;\n} CkP;\n", "unknown field type `double`"),
            ("typedef struct CkP {\n    int32_t a, b;\n} CkP;\n", "one field per line"),
            ("typedef struct CkP {\n    float v[4];\n} CkP;\n", "not a field name"),
            ("typedef struct CkP {\n    const Foo* p;\n} CkP;\n", "unknown type"),
            ("typedef struct CkP {\n    int32_t type;\n} CkP;\n", "Rust keyword"),
            ("typedef struct CkP {\n    int32_t a;\n} Other;\n", "closing the typedef"),
            ("typedef struct CkP {\n    int32_t a;\n", "not closed"),
            ("typedef struct Params {\n} Params;\n", "CkSomething"),
            ("#define CK_A 1\n#define CK_A 2\n", "defined twice"),
        ];
        for (src, expected) in cases {
            let err = parse_header("op", src, &mut Known::default()).expect_err(src);
            assert!(err.contains(expected), "{src:?}: {err}");
            assert!(err.starts_with("kernels/params/op.h:"), "{err}");
        }
    }

    #[test]
    fn layout_comparison_fails_on_a_reordered_field() {
        let c = "CkP size 16\nCkP.x 0\nCkP.n 8\nCkP.s 12\n";
        assert!(compare_layouts(c, c).is_ok());
        let reordered = "CkP size 16\nCkP.x 0\nCkP.n 12\nCkP.s 8\n";
        let err = compare_layouts(c, reordered).unwrap_err();
        assert!(err.contains("CkP.n 8") && err.contains("CkP.n 12"), "{err}");
        assert!(compare_layouts(c, "CkP size 16\nCkP.x 0\n").is_err());
    }
}

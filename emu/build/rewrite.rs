//! The source step of the emulator's build: rewrites a preprocessed `kernels/*.cu` translation unit
//! (g++ -E with emu/include/ckemu/cuda.h force-included) so that g++ can compile it for the host.
//!
//! * `__shared__ T name[N];` becomes a reference into the running block's shared memory:
//!   `static char key; using type = T[N]; type& name = *(type*)ckemu::shared_var(&key, ...)`. The
//!   static `key` is distinct per declaration and per template instantiation, as the storage of a
//!   `__shared__` variable is on a GPU. Several declarators (`__shared__ int a[4], b[4];`) give
//!   several variables.
//! * `extern __shared__ T name[];` becomes `T* name = (T*)ckemu::dynamic_shared();`.
//! * `extern "C" __global__ void __launch_bounds__(n, ...) name(...)` loses its CUDA qualifiers and
//!   is recorded as a kernel with its launch bound, for the registry appended to the unit.
//!
//! Replacements keep every newline, so the line markers of the preprocessed text (and `__FILE__` /
//! `__LINE__` in the inserted code) still name the original source lines.

/// A kernel found in the unit: its C name and the expression of its maximum block size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub name: String,
    pub max_threads: Option<String>,
}

#[derive(Debug)]
pub struct Rewritten {
    pub source: String,
    pub kernels: Vec<Kernel>,
}

fn is_ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Byte index just past the string or char literal starting at `i` (a quote).
fn skip_literal(s: &[u8], i: usize) -> usize {
    let quote = s[i];
    let mut j = i + 1;
    while j < s.len() && s[j] != quote {
        if s[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    (j + 1).min(s.len())
}

/// Index of the matching closing bracket for the opening one at `i`.
fn matching(s: &[u8], i: usize) -> Result<usize, String> {
    let (open, close) = (
        s[i],
        match s[i] {
            b'(' => b')',
            b'[' => b']',
            b'{' => b'}',
            _ => return Err("not a bracket".into()),
        },
    );
    let mut depth = 0usize;
    let mut j = i;
    while j < s.len() {
        match s[j] {
            b'"' | b'\'' => {
                j = skip_literal(s, j);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return Ok(j);
                }
            }
            _ => {}
        }
        j += 1;
    }
    Err(format!("unbalanced `{}`", open as char))
}

/// The identifier tokens of `s` with their byte ranges (literals skipped).
fn identifiers(s: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        if c == b'"' || c == b'\'' {
            i = skip_literal(s, i);
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
            out.push((start, i));
        } else if c.is_ascii_digit() {
            while i < s.len() && (is_ident_char(s[i]) || s[i] == b'.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Replaces `text` by `replacement` padded with the newlines `text` had, so line numbers hold.
fn same_lines(text: &str, replacement: &str) -> String {
    let newlines = text.matches('\n').count();
    let mut r = replacement.replace('\n', " ");
    r.extend(std::iter::repeat_n('\n', newlines));
    r
}

/// Removes `__attribute__((...))` groups from a declaration; returns the text and the largest
/// `aligned(N)` found.
fn strip_attributes(decl: &str) -> Result<(String, Option<String>), String> {
    let b = decl.as_bytes();
    let mut out = String::new();
    let mut align = None;
    let mut i = 0;
    while i < b.len() {
        if decl[i..].starts_with("__attribute__") && (i == 0 || !is_ident_char(b[i - 1])) {
            let open = decl[i..].find('(').map(|k| i + k).ok_or("`__attribute__` without arguments")?;
            let close = matching(b, open)?;
            let inner = &decl[open..=close];
            if let Some(k) = inner.find("aligned(") {
                let a = &inner[k + "aligned(".len()..];
                let end = a.find(')').ok_or("unterminated aligned(...)")?;
                align = Some(a[..end].trim().to_string());
            }
            out.push(' ');
            i = close + 1;
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    Ok((out, align))
}

/// Splits at commas outside brackets (and outside template angle brackets of the type part).
fn split_declarators(decl: &str) -> Vec<String> {
    let b = decl.as_bytes();
    let (mut paren, mut square, mut angle) = (0i32, 0i32, 0i32);
    let mut parts = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' | b'\'' => {
                i = skip_literal(b, i);
                continue;
            }
            b'(' | b'{' => paren += 1,
            b')' | b'}' => paren -= 1,
            b'[' => square += 1,
            b']' => square -= 1,
            b'<' if paren == 0 && square == 0 => angle += 1,
            b'>' if paren == 0 && square == 0 && angle > 0 => angle -= 1,
            b',' if paren == 0 && square == 0 && angle == 0 => {
                parts.push(decl[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(decl[start..].to_string());
    parts
}

/// (type, name, dims) of the first declarator, or (name, dims) of the later ones (type = "").
fn parse_declarator(part: &str, with_type: bool) -> Result<(String, String, String), String> {
    let b = part.as_bytes();
    // The name is the identifier before the first top-level `[`, else the last identifier.
    let mut depth = 0i32;
    let mut first_square = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'(' | b'<' => depth += 1,
            b')' | b'>' => depth -= 1,
            b'[' if depth == 0 => {
                first_square = Some(i);
                break;
            }
            _ => {}
        }
    }
    let head_end = first_square.unwrap_or(b.len());
    let ids = identifiers(&b[..head_end]);
    let &(ns, ne) = ids.last().ok_or_else(|| format!("no variable name in `{}`", part.trim()))?;
    let name = part[ns..ne].to_string();
    let ty = part[..ns].trim().to_string();
    let dims = part[head_end..].trim().to_string();
    if with_type && ty.is_empty() {
        return Err(format!("no type in `{}`", part.trim()));
    }
    if !with_type && !ty.is_empty() {
        return Err(format!("unsupported declarator `{}` (pointers or references in a __shared__ list)", part.trim()));
    }
    Ok((ty, name, dims))
}

fn shared_replacement(decl: &str, is_extern: bool) -> Result<String, String> {
    let (decl, align) = strip_attributes(decl)?;
    let mut out = String::new();
    let mut ty = String::new();
    for (k, part) in split_declarators(&decl).iter().enumerate() {
        let (t, name, dims) = parse_declarator(part, k == 0)?;
        if k == 0 {
            ty = t;
        }
        if is_extern {
            if dims != "[]" {
                return Err(format!("`extern __shared__ {ty} {name}{dims}`: dynamic shared memory must be an unsized array"));
            }
            out.push_str(&format!("{ty}* {name} = static_cast<{ty}*>(::ckemu::dynamic_shared()); "));
        } else {
            let key = format!("ckemu_key_{name}");
            let alias = format!("ckemu_type_{name}");
            let align = match &align {
                Some(a) => format!("(({a}) > alignof({alias}) ? ({a}) : alignof({alias}))"),
                None => format!("alignof({alias})"),
            };
            out.push_str(&format!(
                "static char {key}; using {alias} = {ty} {dims}; {alias}& {name} = *static_cast<{alias}*>(\
                 ::ckemu::shared_var(&{key}, sizeof({alias}), {align}, ::ckemu::Site{{__FILE__, __LINE__}})); "
            ));
        }
    }
    Ok(out)
}

/// Rewrites one preprocessed translation unit.
pub fn rewrite(src: &str) -> Result<Rewritten, String> {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len() + 4096);
    let mut kernels = Vec::new();
    let mut i = 0;
    let mut last_ident: Option<(usize, usize)> = None;
    let mut copied = 0;
    let line_of = |pos: usize| src[..pos].matches('\n').count() + 1;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            i = skip_literal(b, i);
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == b'_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && is_ident_char(b[i]) {
            i += 1;
        }
        let word = &src[start..i];
        match word {
            "__shared__" => {
                let is_extern = last_ident.is_some_and(|(s, e)| &src[s..e] == "extern");
                let semi = src[i..].find(';').map(|k| i + k).ok_or("`__shared__` without `;`")?;
                let decl = &src[i..semi];
                let repl = shared_replacement(decl, is_extern).map_err(|e| format!("preprocessed line {}: {e}", line_of(start)))?;
                let from = if is_extern { last_ident.unwrap().0 } else { start };
                out.push_str(&src[copied..from]);
                out.push_str(&same_lines(&src[from..=semi], &repl));
                copied = semi + 1;
                i = semi + 1;
                last_ident = None;
            }
            "__global__" => {
                // The kernel's name: the identifier before the parameter list.
                let open = src[i..].find('(').map(|k| i + k).ok_or("`__global__` without a parameter list")?;
                let mut head = src[i..open].to_string();
                let mut max_threads = None;
                let mut j = i;
                let mut name_end = open;
                // A __launch_bounds__(...) may sit between `void` and the name.
                if let Some(k) = src[i..open].find("__launch_bounds__") {
                    let lb = i + k;
                    let lopen = lb + "__launch_bounds__".len();
                    let lclose = matching(b, lopen)?;
                    let args = &src[lopen + 1..lclose];
                    max_threads = split_declarators(args).first().map(|s| s.trim().to_string());
                    j = lclose + 1;
                    let paren = src[j..].find('(').map(|k| j + k).ok_or("kernel without parameters")?;
                    name_end = paren;
                    head = format!("{}{}", &src[i..lb], &src[j..paren]);
                }
                let ids = identifiers(head.as_bytes());
                let &(ns, ne) = ids.last().ok_or("`__global__` without a name")?;
                let name = head[ns..ne].to_string();
                let before = &src[start.saturating_sub(40)..start];
                if !before.contains("extern \"C\"") {
                    return Err(format!(
                        "preprocessed line {}: kernel `{name}` is not extern \"C\": the emulator resolves kernels by their C name",
                        line_of(start)
                    ));
                }
                kernels.push(Kernel { name, max_threads });
                out.push_str(&src[copied..start]);
                // Drop `__global__` and any launch bounds, keep the rest of the head.
                out.push_str(&same_lines(&src[start..name_end], &format!(" {}", head.split_whitespace().collect::<Vec<_>>().join(" "))));
                out.push(' ');
                copied = name_end;
                i = name_end.max(j);
                last_ident = None;
            }
            _ => last_ident = Some((start, i)),
        }
    }
    out.push_str(&src[copied..]);
    if out.contains("__launch_bounds__") {
        return Err("a `__launch_bounds__` outside a kernel head".into());
    }
    Ok(Rewritten { source: out, kernels })
}

/// The registry code appended to a rewritten unit: the module's kernel table and
/// `ckemu_module_<module>()`, which registers it (called by the generated `ckemu_register_all_modules`).
pub fn registry(module: &str, kernels: &[Kernel]) -> String {
    let mut s = String::from("\n// ---- ckemu registry (generated by emu/build.rs)\n");
    s.push_str(&format!("static const ckemu_kernel ckemu_kernels_{module}[] = {{\n"));
    for k in kernels {
        let max = k.max_threads.as_deref().map(|e| format!("(int)({e})")).unwrap_or_else(|| "1024".into());
        s.push_str(&format!("    {{\"{0}\", \"{module}\", &::ckemu::invoke<&{0}>, {max}}},\n", k.name));
    }
    s.push_str("};\n");
    s.push_str(&format!(
        "extern \"C\" void ckemu_module_{module}(void) {{ ckemu_register_module(ckemu_kernels_{module}, {}); }}\n",
        kernels.len()
    ));
    s
}

/// `ckemu_register_all_modules()`: calls every module's registration (the runtime calls it once).
pub fn all_modules(modules: &[String]) -> String {
    let mut s = String::from("// Generated by emu/build.rs: the modules compiled into the emulator.\n");
    for m in modules {
        s.push_str(&format!("extern \"C\" void ckemu_module_{m}(void);\n"));
    }
    s.push_str("extern \"C\" void ckemu_register_all_modules(void) {\n");
    for m in modules {
        s.push_str(&format!("    ckemu_module_{m}();\n"));
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_arrays_become_block_references() {
        let src = "void f() {\n  __shared__ __attribute__((aligned(128))) float smem[4 * N];\n  x();\n}\n";
        let r = rewrite(src).unwrap();
        assert!(r.source.contains("static char ckemu_key_smem;"), "{}", r.source);
        assert!(r.source.contains("using ckemu_type_smem = float [4 * N];"), "{}", r.source);
        assert!(r.source.contains("((128) > alignof(ckemu_type_smem)"), "{}", r.source);
        assert!(!r.source.contains("__shared__"));
        assert_eq!(r.source.matches('\n').count(), src.matches('\n').count(), "line count preserved");
    }

    #[test]
    fn declarator_lists_split_and_types_with_templates_survive() {
        let r = rewrite("__shared__ int a[kN / 32], b[kN / 32];\n__shared__ Shared<T, 2> sh;\n__shared__ float x;").unwrap();
        assert!(r.source.contains("using ckemu_type_a = int [kN / 32];"), "{}", r.source);
        assert!(r.source.contains("using ckemu_type_b = int [kN / 32];"), "{}", r.source);
        assert!(r.source.contains("using ckemu_type_sh = Shared<T, 2> ;"), "{}", r.source);
        assert!(r.source.contains("using ckemu_type_x = float ;"), "{}", r.source);
    }

    #[test]
    fn extern_shared_is_the_dynamic_buffer() {
        let r = rewrite("void g() { extern __shared__ unsigned long long s_sort[]; s_sort[0] = 1; }").unwrap();
        assert!(
            r.source.contains("unsigned long long* s_sort = static_cast<unsigned long long*>(::ckemu::dynamic_shared());"),
            "{}",
            r.source
        );
        assert!(rewrite("void g() { extern __shared__ int s[4]; }").is_err());
    }

    #[test]
    fn kernels_are_found_with_their_launch_bounds() {
        let src = "extern \"C\" __global__ void __launch_bounds__(ck::Engine<__half>::THREADS, 2)\n    topk(const int* a, int n) {}\n\
                   extern \"C\" __global__ void plain(float* x) {}\n";
        let r = rewrite(src).unwrap();
        assert_eq!(
            r.kernels,
            vec![
                Kernel { name: "topk".into(), max_threads: Some("ck::Engine<__half>::THREADS".into()) },
                Kernel { name: "plain".into(), max_threads: None },
            ]
        );
        assert!(!r.source.contains("__global__") && !r.source.contains("__launch_bounds__"), "{}", r.source);
        assert!(r.source.contains("void topk") && r.source.contains("(const int* a, int n) {}"), "{}", r.source);
        assert_eq!(r.source.matches('\n').count(), src.matches('\n').count());
        let reg = registry("topk", &r.kernels);
        assert!(reg.contains("{\"topk\", \"topk\", &::ckemu::invoke<&topk>, (int)(ck::Engine<__half>::THREADS)}"), "{reg}");
        assert!(reg.contains("&::ckemu::invoke<&plain>, 1024}"), "{reg}");
    }

    #[test]
    fn every_module_is_registered() {
        let all = all_modules(&["topk".into(), "mlp".into()]);
        assert!(all.contains("extern \"C\" void ckemu_module_topk(void);"), "{all}");
        assert!(all.contains("void ckemu_register_all_modules(void) {\n    ckemu_module_topk();\n    ckemu_module_mlp();\n}"), "{all}");
    }

    #[test]
    fn kernels_need_c_linkage() {
        let e = rewrite("__global__ void k(int n) {}").unwrap_err();
        assert!(e.contains("extern \"C\""), "{e}");
    }

    #[test]
    fn literals_are_not_rewritten() {
        let src = "const char* s = \"__shared__ x;\"; asm volatile(\"\" ::: \"memory\");";
        assert_eq!(rewrite(src).unwrap().source, src);
    }
}

//! Go's TLS: where `crypto/tls.(*Conn).Write` sits in a Go executable, for the
//! `go_tls_write` uprobe. Go does not use OpenSSL, so kubectl, terraform, gh, docker and
//! every other Go tool would send their HTTPS unseen. Released Go tools are stripped
//! (`-ldflags=-s -w`): no symbol table, but the runtime's own function table
//! (`.gopclntab`, what tracebacks use) still names every function. It is read by hand:
//! no maintained Rust crate reads it, and the lookup needs only its header, the function
//! table and the names (the layout of Go 1.18 and later, as `debug/gosym` reads it).
use std::fs::File;

use object::{Object, ObjectSection, ObjectSymbol};

use super::capped::Capped;
use super::window::{self, Table, Window};

/// The method every `crypto/tls` connection's plaintext goes through.
pub const WRITE: &str = "crypto/tls.(*Conn).Write";

/// What an executable is, for the Go TLS probe.
#[derive(Debug, PartialEq, Eq)]
pub enum Go {
    /// Not a Go program (no `.go.buildinfo`), or not an ELF file.
    NotGo,
    /// A Go program without `crypto/tls`: it writes no TLS of its own.
    NoTls,
    /// A Go program whose TLS the probe cannot read, and why.
    Unsupported(&'static str),
    /// `WRITE` is at this offset in the file; the Go version that built it.
    Write { offset: u64, version: String },
}

/// Sections walked at most this big (terraform's function table: 25 MB).
const SECTION_MAX: u64 = 96 << 20;
/// Function tables tried in one section, found by their header.
const CANDIDATES_MAX: usize = 16;

/// Finds `WRITE` in the executable open as `file` (the daemon parses any exec'd file, as
/// root: every size is checked before it is read, every table before it is walked). The
/// caller attaches through the same open file, so what was parsed is what gets probed.
pub fn find(file: &File) -> Go {
    let Some(cache) = Capped::look(file) else {
        return Go::NotGo;
    };
    let Ok(obj) = object::File::parse(&cache) else {
        return Go::NotGo;
    };
    let Some(info) = obj
        .section_by_name(".go.buildinfo")
        .filter(|s| s.size() <= 1 << 20)
        .and_then(|s| s.data().ok())
    else {
        return Go::NotGo;
    };
    let Some(version) = version(info) else {
        // The inline form came with Go 1.18; register arguments (what the probe reads)
        // with 1.17.
        return Go::Unsupported("built by Go before 1.18");
    };
    if obj.architecture() != object::Architecture::X86_64 {
        return Go::Unsupported("not x86-64");
    }
    let addr = obj
        .symbols()
        .find(|s| s.name() == Ok(WRITE))
        .map(|s| s.address())
        .or_else(|| table_find(&obj, file));
    let Some(addr) = addr else {
        return Go::NoTls;
    };
    // The file offset of the code at `addr`, through the section that holds it.
    let Some(offset) = obj.sections().find_map(|s| {
        let (start, size) = (s.address(), s.size());
        let (file_start, _) = s.file_range()?;
        (addr >= start && addr - start < size).then(|| file_start + (addr - start))
    }) else {
        return Go::Unsupported("function table does not match the sections");
    };
    // A wrong offset would put a breakpoint mid-instruction: the bytes there must be a Go
    // function's stack check.
    if !prologue(&cache, offset) {
        return Go::Unsupported("no Go function at the table's address");
    }
    Go::Write { offset, version }
}

/// Does the code at `offset` start as a Go function that checks its stack (ABIInternal,
/// g in R14): `cmp rsp, [r14+16]`, or `lea r12, [rsp-N]` then `cmp r12, [r14+16]` with a
/// one- or four-byte N?
fn prologue<'d, R: object::ReadRef<'d>>(data: R, offset: u64) -> bool {
    let Ok(b) = data.read_bytes_at(offset, 12) else {
        return false;
    };
    prologue_bytes(b)
}

fn prologue_bytes(b: &[u8]) -> bool {
    const CMP: [u8; 4] = [0x4d, 0x3b, 0x66, 0x10];
    b.starts_with(&[0x49, 0x3b, 0x66, 0x10])
        || (b.starts_with(&[0x4c, 0x8d, 0x64, 0x24]) && b.get(5..9) == Some(&CMP[..]))
        || (b.starts_with(&[0x4d, 0x8d, 0xa4, 0x24]) && b.get(8..12) == Some(&CMP[..]))
}

/// `WRITE`'s address through the function table: its own section (`.gopclntab`; in a
/// position-independent program `.data.rel.ro.gopclntab`), the `runtime.pclntab` symbol,
/// or, stripped and linked by the system linker (cgo), inside `.data.rel.ro`, found by its
/// header. The code's start is the table header's `textStart`, else `runtime.text`. The
/// table is read from `file` a window at a time.
fn table_find<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, file: &File) -> Option<u64> {
    let text = obj
        .symbols()
        .find(|s| s.name() == Ok("runtime.text"))
        .map(|s| s.address());
    // The table from `at` bytes into `sec` to its end.
    let table = |sec: &object::Section<'d, '_, R>, at: u64| -> Option<Window<'_>> {
        let (off, size) = sec.file_range()?;
        if size > SECTION_MAX || at > size {
            return None;
        }
        Some(Window::new(
            file,
            off.checked_add(at)?,
            usize::try_from(size - at).ok()?,
        ))
    };
    for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
        if let Some(sec) = obj.section_by_name(name) {
            return pclntab_find(table(&sec, 0)?, WRITE, text);
        }
    }
    if let Some(sym) = obj.symbols().find(|s| s.name() == Ok("runtime.pclntab")) {
        let a = sym.address();
        let sec = obj
            .sections()
            .find(|s| a >= s.address() && a - s.address() < s.size())?;
        return pclntab_find(table(&sec, a - sec.address())?, WRITE, text);
    }
    for name in [".data.rel.ro", ".rodata"] {
        let Some(sec) = obj.section_by_name(name) else {
            continue;
        };
        let Some(mut data) = table(&sec, 0) else {
            continue;
        };
        for magic in [MAGIC_120, MAGIC_118] {
            let mut head = magic.to_le_bytes().to_vec();
            head.extend_from_slice(&[0, 0, 1, 8]);
            let whole = (0, data.len());
            let Some(ats) = window::find(&mut data, whole, &head, false, CANDIDATES_MAX) else {
                continue;
            };
            for at in ats {
                if let Some(a) = pclntab_find(table(&sec, at as u64)?, WRITE, text) {
                    return Some(a);
                }
            }
        }
    }
    None
}

/// The function table's magic numbers: Go 1.20 and later, Go 1.18 and 1.19.
const MAGIC_120: u32 = 0xffff_fff1;
const MAGIC_118: u32 = 0xffff_fff0;

/// The Go version in a `.go.buildinfo` section of the inline form (Go 1.18 and later):
/// a 32-byte header (magic, pointer size, flags with bit 2), then the version as a
/// length-prefixed string.
fn version(info: &[u8]) -> Option<String> {
    if !info.starts_with(b"\xff Go buildinf:") || info.len() < 33 || info[15] & 2 == 0 {
        return None;
    }
    let (len, n) = uvarint(&info[32..])?;
    let end = (32 + n).checked_add(usize::try_from(len).ok()?)?;
    let s = info.get(32 + n..end)?;
    Some(String::from_utf8_lossy(s).into_owned())
}

/// An unsigned LEB128 varint: (value, bytes used).
fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The address of function `name` in a Go 1.18+ function table (64-bit). Its code starts
/// at the header's `textStart`, else at `text` (`runtime.text`: a position-independent
/// program's header copy may be left for the loader to fill in), else it is unknown.
/// Header: magic, 4 bytes, then 8 words: nfunc, nfiles, textStart, and the offsets of the
/// name table, cu table, file table, pc table and function data. The function table (at
/// the function data) is nfunc pairs of u32 (entry offset from the code's start, offset
/// of the function's record in the function data); a record starts with its entry offset
/// and its name's offset in the name table (C strings, up to the cu table). A header
/// whose tables do not fit in `tab` is refused before anything is walked. The name is
/// looked up in the name table first, then the function table walked for its offset: each
/// part in order, as the linker lays them out, so a window of each is enough.
pub fn pclntab_find<T: Table>(tab: T, name: &str, text: Option<u64>) -> Option<u64> {
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let mut head = tab.clone();
    let h = head.get(0, 8 + 8 * 8)?;
    if !matches!(u32_at(h), MAGIC_118 | MAGIC_120) || h[7] != 8 {
        return None;
    }
    let word = |i: usize| -> Option<usize> {
        let b = h.get(8 + 8 * i..16 + 8 * i)?;
        usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok()
    };
    let (nfunc, names, cu, funcs) = (word(0)?, word(3)?, word(4)?, word(7)?);
    let len = tab.len();
    if names >= len || funcs >= len || nfunc > (len - funcs) / 8 {
        return None;
    }
    let text = match word(2)? {
        0 => text?,
        t => t as u64,
    };
    let names_end = if cu > names && cu <= len { cu } else { len };
    let mut want = name.as_bytes().to_vec();
    want.push(0);
    let offs = window::find(&mut tab.clone(), (names, names_end), &want, true, 16)?;
    if offs.is_empty() {
        return None;
    }
    let (mut pairs, mut recs) = (tab.clone(), tab);
    for i in 0..nfunc {
        let rec = funcs.checked_add(u32_at(pairs.get(funcs + i * 8 + 4, 4)?) as usize)?;
        let r = recs.get(rec, 8)?;
        if offs.contains(&(u32_at(&r[4..]) as usize)) {
            return text.checked_add(u64::from(u32_at(r)));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table as Go's linker lays it out, with these functions at these offsets.
    fn table(funcs: &[(&str, u32)], text_start: usize) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        let header = 8 + 8 * 8;
        let names_at = header;
        let funcs_at = names_at + names.len();
        // The function table (nfunc + 1 pairs), then the records.
        let recs_at = (funcs.len() + 1) * 8;
        let mut fdata = Vec::new();
        for (i, (_, entry)) in funcs.iter().enumerate() {
            fdata.extend_from_slice(&entry.to_le_bytes());
            fdata.extend_from_slice(&((recs_at + i * 8) as u32).to_le_bytes());
        }
        fdata.extend_from_slice(&[0; 8]);
        for (i, (_, entry)) in funcs.iter().enumerate() {
            fdata.extend_from_slice(&entry.to_le_bytes());
            fdata.extend_from_slice(&name_offs[i].to_le_bytes());
        }
        let mut t = Vec::new();
        t.extend_from_slice(&0xffff_fff1u32.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        for w in [funcs.len(), 0, text_start, names_at, 0, 0, 0, funcs_at] {
            t.extend_from_slice(&(w as u64).to_le_bytes());
        }
        t.extend_from_slice(&names);
        t.extend_from_slice(&fdata);
        t
    }

    #[test]
    fn a_function_is_found_by_its_exact_name() {
        let funcs = [
            ("runtime.main", 0x100),
            ("crypto/tls.(*Conn).WriteTo", 0x200),
            (WRITE, 0x3a0),
            ("main.main", 0x400),
        ];
        // The header's start of code wins; the section's is for a header left at 0.
        let t = table(&funcs, 0x40_10e0);
        assert_eq!(
            pclntab_find(&t[..], WRITE, Some(0x40_1000)),
            Some(0x40_1480)
        );
        assert_eq!(pclntab_find(&t[..], "main.main", None), Some(0x40_14e0));
        assert_eq!(pclntab_find(&t[..], "crypto/tls.(*Conn).Wri", None), None);
        assert_eq!(pclntab_find(&t[..], "net/http.(*Client).Do", None), None);
        let t = table(&funcs, 0);
        assert_eq!(
            pclntab_find(&t[..], WRITE, Some(0x40_1000)),
            Some(0x40_13a0)
        );
    }

    #[test]
    fn a_table_of_another_layout_or_cut_short_finds_nothing() {
        let t = table(&[(WRITE, 0x10)], 0x40_1000);
        let mut old = t.clone();
        old[..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        assert_eq!(pclntab_find(&old[..], WRITE, None), None);
        for cut in [0, 3, 20, t.len() / 2, t.len() - 1] {
            assert_eq!(
                pclntab_find(&t[..cut], WRITE, Some(0)),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_version_is_read_from_inline_build_info_only() {
        let mut info = b"\xff Go buildinf:\x08\x02".to_vec();
        info.resize(32, 0);
        info.push(8);
        info.extend_from_slice(b"go1.24.3");
        info.extend_from_slice(b"\x00rest");
        assert_eq!(version(&info).as_deref(), Some("go1.24.3"));
        let mut old = info.clone();
        old[15] = 0;
        assert_eq!(version(&old), None);
        assert_eq!(version(&info[..36]), None);
        assert_eq!(
            version(b"not build info at all, long enough to index"),
            None
        );
    }

    /// Go programs on this host: stripped ones are found through the function table; one
    /// with a symbol table (docker here) must give the same address both ways. The offset
    /// found lands on a stack check.
    #[test]
    fn go_programs_on_this_host() {
        let open = |p: &str| File::open(p).unwrap();
        assert_eq!(find(&open("/bin/true")), Go::NotGo);
        assert_eq!(find(&open("/etc/hostname")), Go::NotGo);
        for exe in ["/usr/bin/kubectl", "/usr/local/bin/docker"] {
            match find(&open(exe)) {
                Go::Write { offset, version } => {
                    assert!(version.starts_with("go1."), "{exe}: {version}");
                    let code = std::fs::read(exe).unwrap();
                    assert!(prologue_bytes(&code[offset as usize..]), "{exe}");
                }
                other => panic!("{exe}: {other:?}"),
            }
        }
        // docker (linked by the system linker: C code first in `.text`, the table inside
        // `.data.rel.ro`) has a symbol table too: the function table must agree with it.
        let data = std::fs::read("/usr/local/bin/docker").unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let sym = obj.symbols().find(|s| s.name() == Ok(WRITE)).unwrap();
        let docker = open("/usr/local/bin/docker");
        assert_eq!(table_find(&obj, &docker), Some(sym.address()));
    }

    /// The function table of each stripped Go program here, walked a window at a time from
    /// the file, gives what it gives read whole.
    #[test]
    fn a_table_read_a_window_at_a_time_gives_what_it_gives_read_whole() {
        let mut seen = 0;
        for exe in ["/usr/bin/kubectl", "/usr/local/bin/terraform"] {
            let Ok(data) = std::fs::read(exe) else {
                continue;
            };
            let obj = object::File::parse(&*data).unwrap();
            let Some(sec) = obj.section_by_name(".gopclntab") else {
                continue;
            };
            let whole = pclntab_find(sec.data().unwrap(), WRITE, None);
            assert!(whole.is_some(), "{exe}");
            let (off, size) = sec.file_range().unwrap();
            let f = File::open(exe).unwrap();
            let w = Window::new(&f, off, size as usize);
            assert_eq!(pclntab_find(w, WRITE, None), whole, "{exe}");
            assert_eq!(
                pclntab_find(sec.data().unwrap(), "no.such.function", None),
                None
            );
            seen += 1;
        }
        assert!(
            seen > 0,
            "no stripped Go program with a .gopclntab on this host"
        );
    }

    #[test]
    fn a_table_claiming_more_functions_than_it_holds_is_refused_at_once() {
        let mut t = table(&[(WRITE, 0x10)], 0x40_1000);
        t[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(pclntab_find(&t[..], WRITE, None), None);
        let mut t = table(&[(WRITE, 0x10)], 0);
        assert_eq!(
            pclntab_find(&t[..], WRITE, None),
            None,
            "no start of code known"
        );
        let len = t.len() as u64;
        t[8 + 7 * 8..16 + 7 * 8].copy_from_slice(&len.to_le_bytes());
        assert_eq!(pclntab_find(&t[..], WRITE, Some(1)), None);
    }

    #[test]
    fn only_a_go_stack_check_counts_as_a_function_start() {
        assert!(prologue_bytes(&[0x49, 0x3b, 0x66, 0x10, 0x76, 0x20]));
        assert!(prologue_bytes(&[
            0x4c, 0x8d, 0x64, 0x24, 0xc8, 0x4d, 0x3b, 0x66, 0x10, 0x0f, 0x86, 0x00
        ]));
        assert!(!prologue_bytes(&[0x55, 0x48, 0x89, 0xe5, 0x41, 0x57]));
        assert!(!prologue_bytes(&[0x4c, 0x8d, 0x64, 0x24]));
    }
}

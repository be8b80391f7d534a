//! Go's TLS: where `crypto/tls.(*Conn).Write` sits in a Go executable, for the
//! `go_tls_write` uprobe. Go does not use OpenSSL, so kubectl, terraform, gh, docker and
//! every other Go tool would send their HTTPS unseen. Released Go tools are stripped
//! (`-ldflags=-s -w`): no symbol table, but the runtime's own function table
//! (`.gopclntab`, what tracebacks use) still names every function. It is read by hand:
//! no maintained Rust crate reads it, and the lookup needs only its header, the function
//! table and the names (the layout of Go 1.18 and later, as `debug/gosym` reads it).
use std::{fs::File, path::Path};

use object::{read::ReadCache, Object, ObjectSection, ObjectSymbol};

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

/// Finds `WRITE` in the executable at `path`.
pub fn find(path: &Path) -> Go {
    let Ok(f) = File::open(path) else {
        return Go::NotGo;
    };
    let cache = ReadCache::new(f);
    let Ok(obj) = object::File::parse(&cache) else {
        return Go::NotGo;
    };
    let Some(info) = obj
        .section_by_name(".go.buildinfo")
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
    let Some(text) = obj.section_by_name(".text") else {
        return Go::Unsupported("no .text section");
    };
    let addr = obj
        .symbols()
        .find(|s| s.name() == Ok(WRITE))
        .map(|s| s.address())
        .or_else(|| table_find(&obj, text.address()));
    let Some(addr) = addr else {
        return Go::NoTls;
    };
    let (start, size) = (text.address(), text.size());
    let Some((file_start, _)) = text.file_range() else {
        return Go::Unsupported("no .text in the file");
    };
    if addr < start || addr >= start + size {
        return Go::Unsupported("function table does not match .text");
    }
    Go::Write {
        offset: addr - start + file_start,
        version,
    }
}

/// `WRITE`'s address through the function table: the `.gopclntab` section, or, in a
/// program linked by the system linker (cgo), the table inside `.data.rel.ro`, found by
/// its header.
fn table_find<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, text: u64) -> Option<u64> {
    if let Some(tab) = obj.section_by_name(".gopclntab") {
        return pclntab_find(tab.data().ok()?, WRITE, text);
    }
    for name in [".data.rel.ro", ".rodata"] {
        let Some(data) = obj.section_by_name(name).and_then(|s| s.data().ok()) else {
            continue;
        };
        for magic in [MAGIC_120, MAGIC_118] {
            let mut head = magic.to_le_bytes().to_vec();
            head.extend_from_slice(&[0, 0, 1, 8]);
            for at in memchr::memmem::find_iter(data, &head) {
                if let Some(a) = pclntab_find(&data[at..], WRITE, text) {
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
    let s = info.get(32 + n..32 + n + usize::try_from(len).ok()?)?;
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

/// The address of function `name` in a Go 1.18+ `.gopclntab` (64-bit). Its code starts
/// at the header's `textStart`, or at `text` (the `.text` section's address) when that is
/// 0 (a position-independent program's copy may be left for the loader to fill in; with
/// the system linker, C code can come first in `.text`, so the header is preferred).
/// Header: magic, 4 bytes, then 8 words: nfunc, nfiles, textStart,
/// and the offsets of the name table, cu table, file table, pc table and function data.
/// The function table (at the function data) is nfunc pairs of u32 (entry offset from
/// `text`, offset of the function's record in the function data); a record starts with
/// its entry offset and its name's offset in the name table (a C string).
pub fn pclntab_find(tab: &[u8], name: &str, text: u64) -> Option<u64> {
    let magic = u32::from_le_bytes(tab.get(..4)?.try_into().ok()?);
    if !matches!(magic, MAGIC_118 | MAGIC_120) || *tab.get(7)? != 8 {
        return None;
    }
    let word = |i: usize| -> Option<usize> {
        let b = tab.get(8 + 8 * i..16 + 8 * i)?;
        usize::try_from(u64::from_le_bytes(b.try_into().ok()?)).ok()
    };
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(
            tab.get(off..off.checked_add(4)?)?.try_into().ok()?,
        ))
    };
    let (nfunc, names, funcs) = (word(0)?, word(3)?, word(7)?);
    let text = match word(2)? {
        0 => text,
        t => t as u64,
    };
    let want = name.as_bytes();
    for i in 0..nfunc {
        let rec = funcs.checked_add(u32_at(funcs.checked_add(i * 8 + 4)?)? as usize)?;
        let name_off = u32_at(rec.checked_add(4)?)? as usize;
        let at = names.checked_add(name_off)?;
        let Some(s) = tab.get(at..) else { continue };
        if s.starts_with(want) && s.get(want.len()) == Some(&0) {
            return Some(text + u64::from(u32_at(rec)?));
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
        assert_eq!(pclntab_find(&t, WRITE, 0x40_1000), Some(0x40_1480));
        assert_eq!(pclntab_find(&t, "main.main", 0), Some(0x40_14e0));
        assert_eq!(pclntab_find(&t, "crypto/tls.(*Conn).Wri", 0), None);
        assert_eq!(pclntab_find(&t, "net/http.(*Client).Do", 0), None);
        let t = table(&funcs, 0);
        assert_eq!(pclntab_find(&t, WRITE, 0x40_1000), Some(0x40_13a0));
    }

    #[test]
    fn a_table_of_another_layout_or_cut_short_finds_nothing() {
        let t = table(&[(WRITE, 0x10)], 0x40_1000);
        let mut old = t.clone();
        old[..4].copy_from_slice(&0xffff_fffau32.to_le_bytes());
        assert_eq!(pclntab_find(&old, WRITE, 0), None);
        for cut in [0, 3, 20, t.len() / 2, t.len() - 1] {
            assert_eq!(pclntab_find(&t[..cut], WRITE, 0), None, "cut at {cut}");
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
    /// with a symbol table (docker here) must give the same address both ways.
    #[test]
    fn go_programs_on_this_host() {
        assert_eq!(find(Path::new("/bin/true")), Go::NotGo);
        assert_eq!(find(Path::new("/nonexistent")), Go::NotGo);
        for exe in ["/usr/bin/kubectl", "/usr/local/bin/docker"] {
            let p = Path::new(exe);
            match find(p) {
                Go::Write { offset, version } => {
                    assert!(
                        offset > 0 && version.starts_with("go1."),
                        "{exe}: {version}"
                    )
                }
                other => panic!("{exe}: {other:?}"),
            }
        }
        // docker (linked by the system linker: C code first in `.text`, the table inside
        // `.data.rel.ro`) has a symbol table too: the function table must agree with it.
        let data = std::fs::read("/usr/local/bin/docker").unwrap();
        let obj = object::File::parse(&*data).unwrap();
        let sym = obj.symbols().find(|s| s.name() == Ok(WRITE)).unwrap();
        let text = obj.section_by_name(".text").unwrap().address();
        assert_eq!(table_find(&obj, text), Some(sym.address()));
    }
}

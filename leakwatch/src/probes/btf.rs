//! Struct member offsets from kernel BTF (/sys/kernel/btf/vmlinux). The kernel programs are
//! Rust without CO-RE relocations, so the loader looks up the offsets they need and passes
//! them in as globals. Hand-written because aya-obj keeps its BTF type accessors
//! crate-private; the format walk is short.
use anyhow::{bail, Context, Result};

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// Parsed type table of one BTF blob.
pub struct Btf {
    types: Vec<Type>,
}

struct Type {
    kind: u32,
    name: String,
    /// (name, type id, bit offset) for struct/union members.
    members: Vec<(String, u32, u32)>,
    /// Referenced type for typedef/const/volatile/restrict/type_tag.
    refers: u32,
}

impl Btf {
    pub fn parse(b: &[u8]) -> Result<Btf> {
        Ok(Btf { types: parse(b)? })
    }

    /// Byte offset of a member path (`"f_path.dentry"`, `"__sk_common.skc_dport"`) in struct
    /// `name`, looking through anonymous struct/union members.
    pub fn offset(&self, name: &str, path: &str) -> Result<u64> {
        let mut idx = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && t.name == name && !t.members.is_empty())
            .with_context(|| format!("struct {name} not found in kernel BTF"))?;
        let mut total = 0u64;
        let mut parts = path.split('.').peekable();
        while let Some(member) = parts.next() {
            let (bits, tid) = self
                .find_member(idx, member, 0)
                .with_context(|| format!("member {name}.{path} not found in kernel BTF"))?;
            total += u64::from(bits / 8);
            if parts.peek().is_some() {
                idx = self
                    .composite(tid)
                    .with_context(|| format!("{name}.{path}: {member} is not a struct"))?;
            }
        }
        Ok(total)
    }

    /// Index of the struct/union a type id names, through typedefs and qualifiers.
    fn composite(&self, mut tid: u32) -> Option<usize> {
        // Type ids are 1-based; index 0 is void.
        while tid > 0 && (tid as usize) <= self.types.len() {
            let t = &self.types[tid as usize - 1];
            match t.kind {
                KIND_STRUCT | KIND_UNION => return Some(tid as usize - 1),
                8..=11 | 18 => tid = t.refers,
                _ => return None,
            }
        }
        None
    }

    /// (bit offset, type id) of `member`, searching anonymous members recursively.
    fn find_member(&self, idx: usize, member: &str, base_bits: u32) -> Option<(u32, u32)> {
        for (mname, tid, bits) in &self.types[idx].members {
            if mname == member {
                return Some((base_bits + bits, *tid));
            }
            if mname.is_empty() {
                if let Some(inner) = self.composite(*tid) {
                    if let Some(hit) = self.find_member(inner, member, base_bits + bits) {
                        return Some(hit);
                    }
                }
            }
        }
        None
    }
}

fn parse(b: &[u8]) -> Result<Vec<Type>> {
    let u32_at = |o: usize| -> Result<u32> {
        Ok(u32::from_le_bytes(
            b.get(o..o + 4).context("truncated BTF")?.try_into()?,
        ))
    };
    if b.len() < 24 || u16::from_le_bytes([b[0], b[1]]) != BTF_MAGIC {
        bail!("not little-endian BTF data");
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types_start = hdr_len + type_off;
    let strs = hdr_len + str_off;
    let name_at = |off: u32| -> String {
        let s = (strs + off as usize).min(b.len());
        let e = b[s..]
            .iter()
            .position(|&c| c == 0)
            .map_or(b.len(), |n| s + n);
        String::from_utf8_lossy(&b[s..e]).into_owned()
    };
    let mut out = Vec::new();
    let mut p = types_start;
    while p < types_start + type_len {
        let (name_off, info, size_type) = (u32_at(p)?, u32_at(p + 4)?, u32_at(p + 8)?);
        let vlen = (info & 0xffff) as usize;
        let kind = (info >> 24) & 0x1f;
        let kflag = info >> 31;
        p += 12;
        let mut t = Type {
            kind,
            name: String::new(),
            members: Vec::new(),
            refers: size_type,
        };
        p += match kind {
            1 | 14 | 17 => 4, // int, var, decl_tag
            3 => 12,          // array
            KIND_STRUCT | KIND_UNION => {
                t.name = name_at(name_off);
                for i in 0..vlen {
                    let m = p + i * 12;
                    let off = u32_at(m + 8)?;
                    let bits = if kflag == 1 { off & 0xff_ffff } else { off };
                    t.members.push((name_at(u32_at(m)?), u32_at(m + 4)?, bits));
                }
                vlen * 12
            }
            6 | 13 => vlen * 8,   // enum, func_proto
            15 | 19 => vlen * 12, // datasec, enum64
            _ => 0,
        };
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rejects_non_btf() {
        assert!(super::Btf::parse(b"definitely not btf data here....").is_err());
    }
}

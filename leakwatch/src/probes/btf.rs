//! Struct member offsets from kernel BTF (/sys/kernel/btf/vmlinux). The kernel programs are
//! Rust without CO-RE relocations, so the loader looks up the few `task_struct` offsets they
//! need and passes them in as globals. Hand-written because aya-obj keeps its BTF type
//! accessors crate-private; the format walk is ~60 lines.
use anyhow::{bail, Context, Result};

const BTF_MAGIC: u16 = 0xeb9f;

/// Byte offset of `member` in struct `name`, searching anonymous struct/union members too.
pub fn member_offset(btf: &[u8], name: &str, member: &str) -> Result<u32> {
    let types = parse(btf)?;
    let sid = types
        .iter()
        .position(|t| t.kind == 4 && t.name == name)
        .with_context(|| format!("struct {name} not found in kernel BTF"))?;
    find_member(&types, sid, member, 0)
        .with_context(|| format!("member {name}.{member} not found in kernel BTF"))
}

struct Type {
    kind: u32,
    name: String,
    /// (name, type id, bit offset) for struct/union members.
    members: Vec<(String, u32, u32)>,
    /// Referenced type for typedef/const/volatile.
    refers: u32,
}

fn find_member(types: &[Type], idx: usize, member: &str, base_bits: u32) -> Option<u32> {
    for (mname, tid, bits) in &types[idx].members {
        if mname == member {
            return Some((base_bits + bits) / 8);
        }
        if mname.is_empty() {
            // Anonymous struct/union: look inside (type ids are 1-based; index 0 is void).
            let mut t = *tid as usize;
            while t > 0 && t <= types.len() && matches!(types[t - 1].kind, 8..=11) {
                t = types[t - 1].refers as usize;
            }
            if t > 0 && t <= types.len() && matches!(types[t - 1].kind, 4 | 5) {
                if let Some(off) = find_member(types, t - 1, member, base_bits + bits) {
                    return Some(off);
                }
            }
        }
    }
    None
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
        let s = strs + off as usize;
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
            name: name_at(name_off),
            members: Vec::new(),
            refers: size_type,
        };
        p += match kind {
            1 | 14 | 17 => 4, // int, var, decl_tag
            3 => 12,          // array
            4 | 5 => {
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
        assert!(
            super::member_offset(b"definitely not btf data here....", "task_struct", "tgid")
                .is_err()
        );
    }
}

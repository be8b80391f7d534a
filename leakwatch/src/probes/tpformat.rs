//! Tracepoint format files (`events/<category>/<name>/format`): where a field sits in the
//! record, for the one record whose layout differs between kernels (`sched_process_exit`
//! gained `group_dead`). Syscall records are fixed (arguments at 16 + 8·i) and need none.

/// (offset, size) of the field called `name`, from a format file's text.
pub fn field(format: &str, name: &str) -> Option<(u64, u64)> {
    for line in format.lines() {
        // `field:bool group_dead;	offset:32;	size:1;	signed:0;`
        let Some(rest) = line.trim().strip_prefix("field:") else {
            continue;
        };
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts.next()?;
        // The name is the declaration's last word, without an array length (`comm[16]`).
        let last = decl.rsplit([' ', '\t', '*']).next()?;
        if last.split('[').next() != Some(name) {
            continue;
        }
        let (mut offset, mut size) = (None, None);
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            }
        }
        return Some((offset?, size?));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_6_18: &str = "name: sched_process_exit\nID: 369\nformat:\n\
        \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
        \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
        \tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
        \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\
        \tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\
        \tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n\n\
        print fmt: \"comm=%s pid=%d prio=%d group_dead=%s\", REC->comm, REC->pid\n";

    #[test]
    fn fields_are_found_by_name_with_offset_and_size() {
        assert_eq!(field(EXIT_6_18, "group_dead"), Some((32, 1)));
        assert_eq!(field(EXIT_6_18, "comm"), Some((8, 16)));
        assert_eq!(field(EXIT_6_18, "pid"), Some((24, 4)));
        // `common_pid` is not `pid`, and `prio` is not found inside `print fmt`.
        assert_eq!(field(EXIT_6_18, "common_pid"), Some((4, 4)));
    }

    #[test]
    fn a_kernel_without_the_field_gives_none() {
        let old = EXIT_6_18.replace(
            "\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n",
            "",
        );
        assert_eq!(field(&old, "group_dead"), None);
        assert_eq!(field("", "group_dead"), None);
        assert_eq!(
            field("field:bool group_dead;\toffset:x;\tsize:1;", "group_dead"),
            None
        );
    }
}

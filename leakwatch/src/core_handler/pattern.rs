//! `core_pattern` (core(5)) as the kernel reads it: leakwatch's own pattern, and the
//! expansion of the previous one so the core goes where it would have gone without
//! leakwatch. A pipe pattern is split on white space *before* its specifiers are expanded
//! (a comm with a space stays one argument); a file pattern escapes `/` in `%e`, `%h`,
//! `%E`, `%f` as `!`, and gets `.PID` appended when `core_uses_pid` is set and it has no
//! `%p`. Unknown specifiers are dropped with their `%`, as the kernel drops them.

/// The kernel's limit: `core_pattern` holds at most 127 bytes.
pub const MAX_LEN: usize = 127;

/// What leakwatch's pattern asks the kernel for, in this order, after `core-handler`.
pub const OURS: &str = "%P %I %s %t %u %g %d %c %C %h %e";

/// Every specifier of core(5) this module expands.
pub const KNOWN: &str = "%pPiIugdstheEfcCF";

/// What is known of one crash, to expand a pattern with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Values {
    /// %p: pid in its own pid namespace; %P: as the host sees it.
    pub pid: String,
    pub host_pid: String,
    /// %i, %I: the dumping thread, in its namespace and as the host sees it.
    pub tid: String,
    pub host_tid: String,
    pub uid: String,
    pub gid: String,
    /// %d: the dump mode (PR_GET_DUMPABLE).
    pub dumpable: String,
    pub signal: String,
    /// %t: UNIX time of the dump.
    pub time: String,
    pub hostname: String,
    /// %e: the dumping thread's comm.
    pub comm: String,
    /// The executable's path (%E with `!` for `/`; %f its last component).
    pub exe: String,
    /// %c: RLIMIT_CORE's soft limit, as the kernel prints it (`%lu`).
    pub core_limit: String,
    /// %C: the CPU it ran on.
    pub cpu: String,
    /// %F: a pidfd number for the crashed process (pipe handlers only).
    pub pidfd: String,
}

/// leakwatch's pattern for `bin` (and a state dir other than the default); an error
/// sentence when the kernel would not hold it.
pub fn ours(bin: &str, state_dir: Option<&str>) -> Result<String, String> {
    let mut p = format!("|{bin} core-handler");
    if let Some(d) = state_dir {
        if d.chars().any(char::is_whitespace) || d.contains('%') {
            return Err(format!(
                "the state directory {d:?} has a space or % in it, which core_pattern cannot carry"
            ));
        }
        p.push_str(&format!(" --state-dir {d}"));
    }
    if bin.chars().any(char::is_whitespace) || bin.contains('%') {
        return Err(format!(
            "the binary path {bin:?} has a space or % in it, which core_pattern cannot carry"
        ));
    }
    p.push(' ');
    p.push_str(OURS);
    if p.len() > MAX_LEN {
        return Err(format!(
            "leakwatch's core_pattern would be {} bytes, more than the kernel's {MAX_LEN}: {p}",
            p.len()
        ));
    }
    Ok(p)
}

/// Whether `pattern` runs leakwatch's core-handler (any binary called `leakwatch`).
pub fn is_ours(pattern: &str) -> bool {
    let Some(cmd) = pattern.trim().strip_prefix('|') else {
        return false;
    };
    let mut words = cmd.split_whitespace();
    let prog = words.next().unwrap_or("");
    prog.rsplit('/').next() == Some("leakwatch") && words.next() == Some("core-handler")
}

/// A piece of a pattern: a literal character or a specifier (`%%` is the literal `%`;
/// a lone `%` at the end is nothing, as in the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    Lit(char),
    Spec(char),
}

/// The pieces of `text`, in order (for every reader of core_pattern).
pub fn pieces(text: &str) -> impl Iterator<Item = Piece> + '_ {
    let mut it = text.chars();
    std::iter::from_fn(move || match it.next()? {
        '%' => match it.next()? {
            '%' => Some(Piece::Lit('%')),
            c => Some(Piece::Spec(c)),
        },
        c => Some(Piece::Lit(c)),
    })
}

/// Specifiers in `pattern` that core(5) does not define (the kernel drops them).
pub fn unknown(pattern: &str) -> Vec<String> {
    pieces(pattern)
        .filter_map(|p| match p {
            Piece::Spec(s) if !KNOWN.contains(s) => Some(format!("%{s}")),
            _ => None,
        })
        .collect()
}

/// One specifier's value; None for an unknown one.
fn value(spec: char, v: &Values, file: bool) -> Option<String> {
    let esc = |s: &str| if file { escape(s) } else { s.to_string() };
    Some(match spec {
        'p' => v.pid.clone(),
        'P' => v.host_pid.clone(),
        'i' => v.tid.clone(),
        'I' => v.host_tid.clone(),
        'u' => v.uid.clone(),
        'g' => v.gid.clone(),
        'd' => v.dumpable.clone(),
        's' => v.signal.clone(),
        't' => v.time.clone(),
        'c' => v.core_limit.clone(),
        'C' => v.cpu.clone(),
        'F' => v.pidfd.clone(),
        'h' => esc(&v.hostname),
        'e' => esc(&v.comm),
        'E' => escape(&v.exe),
        'f' => esc(v.exe.rsplit('/').next().unwrap_or("")),
        _ => return None,
    })
}

/// A name component as the kernel writes it: `/` as `!`, never empty, `.` or `..`.
fn escape(s: &str) -> String {
    let mut out = s.replace('/', "!");
    if out.is_empty() {
        out.push('!');
    } else if out == "." || out == ".." {
        out.replace_range(0..1, "!");
    }
    out
}

fn expand_into(out: &mut String, text: &str, v: &Values, file: bool) {
    for p in pieces(text) {
        match p {
            Piece::Lit(c) => out.push(c),
            Piece::Spec(s) => out.push_str(&value(s, v, file).unwrap_or_default()),
        }
    }
}

/// A pipe pattern (without its `|`) as the argv the kernel would run.
pub fn pipe_argv(cmd: &str, v: &Values) -> Vec<String> {
    cmd.split(|c: char| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let mut s = String::new();
            expand_into(&mut s, w, v, false);
            s
        })
        .collect()
}

/// A file pattern as the path the kernel would write (relative to the crashed process's
/// cwd when it does not start with `/`).
pub fn file_path(pattern: &str, v: &Values, core_uses_pid: bool) -> String {
    let mut s = String::new();
    expand_into(&mut s, pattern, v, true);
    if core_uses_pid && !pattern.contains("%p") {
        s.push('.');
        s.push_str(&v.pid);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Values {
        Values {
            pid: "7".into(),
            host_pid: "4242".into(),
            tid: "8".into(),
            host_tid: "4243".into(),
            uid: "1000".into(),
            gid: "100".into(),
            dumpable: "1".into(),
            signal: "6".into(),
            time: "1733212345".into(),
            hostname: "box".into(),
            comm: "Web Content".into(),
            exe: "/usr/lib/firefox/firefox".into(),
            core_limit: "18446744073709551615".into(),
            cpu: "1".into(),
            pidfd: "3".into(),
        }
    }

    #[test]
    fn pipe_patterns_split_before_expanding() {
        assert_eq!(
            pipe_argv(
                "/usr/lib/systemd/systemd-coredump %P %u %g %s %t %c %h",
                &v()
            ),
            [
                "/usr/lib/systemd/systemd-coredump",
                "4242",
                "1000",
                "100",
                "6",
                "1733212345",
                "18446744073709551615",
                "box"
            ]
        );
        // A comm with a space stays one argument; runs of spaces are one separator;
        // `/` is kept in a pipe argument; unknown specifiers vanish with their `%`.
        assert_eq!(
            pipe_argv("  /bin/h  %e x%Zy %E %f %p.%i %I %d %C %F %%", &v()),
            [
                "/bin/h",
                "Web Content",
                "xy",
                "!usr!lib!firefox!firefox",
                "firefox",
                "7.8",
                "4243",
                "1",
                "1",
                "3",
                "%"
            ]
        );
    }

    #[test]
    fn file_patterns_escape_and_honour_core_uses_pid() {
        assert_eq!(file_path("core", &v(), false), "core");
        assert_eq!(file_path("core", &v(), true), "core.7");
        // %P is not %p: the pid is still appended.
        assert_eq!(file_path("core.%P", &v(), true), "core.4242.7");
        assert_eq!(
            file_path("/var/crash/core.%e.%p.%t", &v(), true),
            "/var/crash/core.Web Content.7.1733212345"
        );
        let mut odd = v();
        odd.comm = "a/b".into();
        assert_eq!(file_path("/c/%e", &odd, false), "/c/a!b");
        odd.comm = "..".into();
        assert_eq!(file_path("/c/%e", &odd, false), "/c/!.");
        odd.comm = String::new();
        assert_eq!(file_path("/c/%e", &odd, false), "/c/!");
        // A trailing lone % is dropped.
        assert_eq!(file_path("core%", &v(), false), "core");
    }

    #[test]
    fn our_pattern_is_recognised_and_fits() {
        let p = ours("/usr/local/bin/leakwatch", None).unwrap();
        assert_eq!(
            p,
            "|/usr/local/bin/leakwatch core-handler %P %I %s %t %u %g %d %c %C %h %e"
        );
        assert!(p.len() <= MAX_LEN);
        assert!(is_ours(&p));
        assert!(is_ours(
            "|/tmp/x/leakwatch core-handler --state-dir /s %P %I %s %t %u %g %d %c %C %h %e"
        ));
        assert!(!is_ours("|/usr/lib/systemd/systemd-coredump %P"));
        assert!(!is_ours("core"));
        assert!(!is_ours("|/usr/bin/leakwatch-other core-handler"));
        let long = format!("/{}/leakwatch", "d".repeat(100));
        assert!(ours(&long, None).unwrap_err().contains("127"));
        assert!(ours("/a b/leakwatch", None).is_err());
        assert!(ours("/usr/bin/leakwatch", Some("/var/lib/lw"))
            .unwrap()
            .contains(" --state-dir /var/lib/lw %P"));
    }

    #[test]
    fn unknown_specifiers_are_named() {
        assert!(unknown("/var/crash/core.%e.%p.%t %% %F %C %f").is_empty());
        assert_eq!(unknown("core.%Z.%q%"), ["%Z", "%q"]);
    }
}

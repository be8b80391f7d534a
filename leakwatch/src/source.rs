//! Where a secret was seen: the typed `source` of every finding (alert field, metric label).
use serde::{Serialize, Serializer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An exec's command line.
    Argv,
    /// An exec's environment.
    Env,
    /// Bytes written to a regular file.
    File,
    /// A core dump or diagnostic report.
    CrashDump,
    /// Bytes sent on a socket.
    Socket,
    /// Bytes written to a pipe or FIFO.
    Pipe,
    /// Bytes written to a terminal.
    Tty,
}

impl Source {
    pub const ALL: [Source; 7] = [
        Source::Argv,
        Source::Env,
        Source::File,
        Source::CrashDump,
        Source::Socket,
        Source::Pipe,
        Source::Tty,
    ];

    /// `NAMES[s.index()]` is `s.as_str()`.
    pub const NAMES: [&'static str; 7] =
        ["argv", "env", "file", "crash_dump", "socket", "pipe", "tty"];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Source {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_in_index_order() {
        for (i, s) in Source::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(Source::NAMES[s.index()], s.as_str());
        }
        // The names alerts and metric labels carry.
        assert_eq!(Source::CrashDump.as_str(), "crash_dump");
        assert_eq!(Source::Tty.to_string(), "tty");
    }
}

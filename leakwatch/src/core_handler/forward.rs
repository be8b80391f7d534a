//! The pump: every byte of the core from stdin to the scanner, and the same bytes on to
//! the target, without ever holding the crashed process. With stdin a pipe (always, from
//! the kernel) the bytes are passed on in the kernel — `tee` to the previous handler's
//! pipe (or to our own pipe, then `splice` to the core file) before they are read for
//! the scan — so they are never written from user memory (no write syscall of leakwatch
//! carries a core; the daemon would otherwise see its own handler write one). Otherwise
//! they are read and written. A previous handler that takes nothing for `timeout` is
//! given up (the bytes it got are counted in the problem) and stdin is still drained
//! and scanned to its end, so the kernel finishes the dump. Memory is bounded by the
//! buffers the `Feed` lends.
use std::{
    fs::File,
    io::Write as _,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::{Duration, Instant},
};

use super::target::{Target, PIPE_SIZE};

/// Where read bytes go (the scanner): lends buffers, takes them back filled.
pub trait Feed {
    fn buffer(&mut self) -> Vec<u8>;
    fn feed(&mut self, buf: Vec<u8>, len: usize);
}

/// What the pump did.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Bytes read from stdin (all of it, unless reading failed).
    pub read: u64,
    /// Bytes the target got.
    pub forwarded: u64,
    /// The core file was cut at its RLIMIT_CORE.
    pub cut: bool,
    /// Why the target did not get everything, one sentence.
    pub problem: Option<String>,
    /// Time to the first byte forwarded, since the pump started.
    pub first_forward: Option<Duration>,
}

/// Where bytes are going now.
enum Out {
    Pipe(OwnedFd),
    /// The file, and our own pipe (read, write) that `tee` fills and `splice` empties.
    File {
        file: File,
        room: u64,
        via: Option<(OwnedFd, OwnedFd)>,
    },
    Done,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn own_pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: fresh fds; fcntl on them.
    unsafe {
        libc::fcntl(fds[1], libc::F_SETPIPE_SZ, PIPE_SIZE);
        Some((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// Waits until `fd` is ready for `events` or `ms` pass (-1: forever); the revents.
fn wait(fd: RawFd, events: i16, ms: i32) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r >= 0 || errno() != libc::EINTR {
            return if r > 0 { p.revents } else { 0 };
        }
    }
}

/// Reads exactly `n` bytes (already known to be there) into `buf`; fewer only at end of
/// input or on an error.
fn read_n(fd: RawFd, buf: &mut [u8], mut n: usize) -> usize {
    let mut got = 0;
    while n > 0 {
        // SAFETY: reading into our own buffer within its length.
        let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), n.min(buf.len() - got)) };
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        if r <= 0 {
            break;
        }
        got += r as usize;
        n -= r as usize;
    }
    got
}

struct Pump<'a> {
    input: RawFd,
    feed: &'a mut dyn Feed,
    cur: Option<(Vec<u8>, usize)>,
    out: Out,
    timeout: Duration,
    r: Pumped,
    start: Instant,
    stalled_since: Option<Instant>,
    /// The input is not a pipe: bytes are read and written, not teed.
    copying: bool,
    /// The file got all its limit allows.
    at_limit: bool,
}

/// Pumps `input` to its end.
pub fn pump(input: BorrowedFd, target: Target, timeout: Duration, feed: &mut dyn Feed) -> Pumped {
    let out = match target {
        Target::Pipe(input) => Out::Pipe(input),
        Target::File { file, limit } => Out::File {
            file,
            room: limit,
            via: own_pipe(),
        },
        Target::Nothing => Out::Done,
    };
    // A larger stdin pipe lets the kernel write ahead while the scan runs.
    // SAFETY: fcntl on stdin; fails harmlessly if it is not a pipe.
    unsafe { libc::fcntl(input.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
    let mut p = Pump {
        input: input.as_raw_fd(),
        feed,
        cur: None,
        out,
        timeout,
        r: Pumped::default(),
        start: Instant::now(),
        stalled_since: None,
        copying: false,
        at_limit: false,
    };
    p.run();
    if let Some((buf, len)) = p.cur.take() {
        p.feed.feed(buf, len);
    }
    p.r
}

impl Pump<'_> {
    /// The buffer being filled, with room for at least one byte.
    fn space(&mut self) -> &mut (Vec<u8>, usize) {
        if self.cur.as_ref().is_some_and(|(b, l)| *l == b.len()) {
            let (b, l) = self.cur.take().expect("checked");
            self.feed.feed(b, l);
        }
        if self.cur.is_none() {
            self.cur = Some((self.feed.buffer(), 0));
        }
        self.cur.as_mut().expect("just set")
    }

    /// Reads `n` bytes that are known to be in the input into the scan buffers.
    fn take(&mut self, mut n: usize) -> bool {
        let fd = self.input;
        while n > 0 {
            let (buf, len) = self.space();
            let want = n.min(buf.len() - *len);
            let got = read_n(fd, &mut buf[*len..], want);
            *len += got;
            self.r.read += got as u64;
            n -= got;
            if got < want {
                return false;
            }
        }
        true
    }

    fn give_up(&mut self, why: String) {
        self.r.problem = Some(why);
        self.out = Out::Done;
    }

    fn forwarded(&mut self, n: usize) {
        self.r.forwarded += n as u64;
        self.r.first_forward.get_or_insert(self.start.elapsed());
        self.stalled_since = None;
    }

    fn run(&mut self) {
        loop {
            wait(self.input, libc::POLLIN, -1);
            let more = match &self.out {
                Out::Done => {
                    let more = self.read_some().is_some();
                    // Bytes past a file's limit: it was cut (a core of exactly the
                    // limit was not).
                    self.r.cut |= more && self.at_limit;
                    more
                }
                Out::File { via: None, .. } => self.copy(),
                _ if self.copying => self.copy(),
                _ => self.tee(),
            };
            if !more {
                return;
            }
        }
    }

    /// Reads what is there into the scan buffers: the range of the buffer it filled;
    /// None at the end.
    fn read_some(&mut self) -> Option<(usize, usize)> {
        let fd = self.input;
        let (buf, len) = self.space();
        let start = *len;
        loop {
            // SAFETY: reading into our own buffer within its length.
            let r = unsafe { libc::read(fd, buf[start..].as_mut_ptr().cast(), buf.len() - start) };
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            if r <= 0 {
                return None;
            }
            *len += r as usize;
            self.r.read += r as u64;
            return Some((start, start + r as usize));
        }
    }

    /// One `tee` to the target, then the same bytes read for the scan; false at the end.
    fn tee(&mut self) -> bool {
        let (dst, len) = match &self.out {
            Out::Pipe(fd) => (fd.as_raw_fd(), PIPE_SIZE as usize),
            Out::File {
                room,
                via: Some((_, w)),
                ..
            } => {
                if *room == 0 {
                    self.at_limit = true;
                    self.out = Out::Done;
                    return true;
                }
                (w.as_raw_fd(), (*room).min(PIPE_SIZE as u64) as usize)
            }
            _ => unreachable!("tee needs a pipe target"),
        };
        // SAFETY: tee(2) between two pipe fds we hold.
        let n = unsafe { libc::tee(self.input, dst, len, libc::SPLICE_F_NONBLOCK) };
        if n == 0 {
            return false;
        }
        if n > 0 {
            let n = n as usize;
            if let Out::File {
                file,
                room,
                via: Some((r, _)),
            } = &mut self.out
            {
                if let Err(e) = splice_all(r.as_raw_fd(), file.as_raw_fd(), n) {
                    let at = self.r.forwarded;
                    self.give_up(format!(
                        "writing the core file stopped after {at} bytes: {e}"
                    ));
                    return self.take(n);
                }
                *room -= n as u64;
            }
            self.forwarded(n);
            return self.take(n);
        }
        match errno() {
            libc::EAGAIN => {
                // The input has bytes (we polled), so the target is full.
                let since = *self.stalled_since.get_or_insert_with(Instant::now);
                let left = self.timeout.saturating_sub(since.elapsed());
                if left.is_zero() {
                    self.stalled();
                } else {
                    let ev = wait(dst, libc::POLLOUT, left.as_millis().max(1) as i32);
                    if ev & (libc::POLLERR | libc::POLLHUP) != 0 {
                        self.reader_gone();
                    }
                }
            }
            libc::EPIPE => self.reader_gone(),
            libc::EINTR => {}
            // The input is not a pipe: read and write instead.
            libc::EINVAL => self.copying = true,
            e => {
                let at = self.r.forwarded;
                self.give_up(format!(
                    "passing the core on stopped after {at} bytes: {}",
                    std::io::Error::from_raw_os_error(e)
                ));
            }
        }
        true
    }

    fn stalled(&mut self) {
        let at = self.r.forwarded;
        self.give_up(format!(
            "the previous handler stopped reading after {at} bytes: given up after {} ms; the rest of the core was scanned but not passed on",
            self.timeout.as_millis()
        ));
    }

    fn reader_gone(&mut self) {
        let at = self.r.forwarded;
        self.give_up(format!(
            "the previous handler closed its input after {at} bytes; the rest of the core was scanned but not passed on"
        ));
    }

    /// Stdin is not a pipe: read a buffer, write it on; false at the end.
    fn copy(&mut self) -> bool {
        let Some((s, e)) = self.read_some() else {
            return false;
        };
        let (buf, len) = self.cur.take().expect("read_some filled it");
        let chunk = &buf[s..e];
        let res = match &mut self.out {
            Out::Pipe(fd) => write_timed(fd.as_raw_fd(), chunk, self.timeout),
            Out::File { file, room, .. } => {
                let n = (chunk.len() as u64).min(*room) as usize;
                *room -= n as u64;
                self.r.cut = n < chunk.len();
                file.write_all(&chunk[..n]).map(|()| n)
            }
            Out::Done => Ok(0),
        };
        self.cur = Some((buf, len));
        match res {
            Ok(n) => {
                if n > 0 {
                    self.forwarded(n);
                }
                if self.r.cut {
                    self.out = Out::Done;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => self.stalled(),
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => self.reader_gone(),
            Err(e) => {
                let at = self.r.forwarded;
                self.give_up(format!("passing the core on stopped after {at} bytes: {e}"));
            }
        }
        true
    }
}

/// Moves `n` bytes from our pipe to the file.
fn splice_all(from: RawFd, to: RawFd, mut n: usize) -> std::io::Result<()> {
    while n > 0 {
        // SAFETY: splice(2) from a pipe we hold to a file we hold.
        let r = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                n,
                libc::SPLICE_F_MOVE,
            )
        };
        if r < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(std::io::Error::last_os_error());
        }
        if r == 0 {
            return Err(std::io::Error::other("the file took no more bytes"));
        }
        n -= r as usize;
    }
    Ok(())
}

/// Writes all of `data` to a non-blocking pipe, giving up when it takes nothing for
/// `timeout` (TimedOut).
fn write_timed(fd: RawFd, data: &[u8], timeout: Duration) -> std::io::Result<usize> {
    let mut done = 0;
    let mut since = Instant::now();
    while done < data.len() {
        // SAFETY: writing from our own buffer within its length.
        let r = unsafe { libc::write(fd, data[done..].as_ptr().cast(), data.len() - done) };
        if r > 0 {
            done += r as usize;
            since = Instant::now();
            continue;
        }
        match errno() {
            libc::EINTR => {}
            libc::EAGAIN => {
                let left = timeout.saturating_sub(since.elapsed());
                if left.is_zero() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                wait(fd, libc::POLLOUT, left.as_millis().max(1) as i32);
            }
            _ => return Err(std::io::Error::last_os_error()),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keeps what it is fed.
    #[derive(Default)]
    struct Keep(Vec<u8>);

    impl Feed for Keep {
        fn buffer(&mut self) -> Vec<u8> {
            vec![0; 1000]
        }
        fn feed(&mut self, buf: Vec<u8>, len: usize) {
            self.0.extend_from_slice(&buf[..len]);
        }
    }

    /// Pumps `data` through a pipe (as the kernel gives it) into a file limited to `limit`.
    fn to_file(data: &[u8], limit: u64) -> (Pumped, Vec<u8>, Vec<u8>) {
        let (r, w) = own_pipe().unwrap();
        let data2 = data.to_vec();
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            w.write_all(&data2).unwrap();
        });
        let path = std::env::temp_dir().join(format!(
            "lw-forward-{}-{limit}-{}",
            std::process::id(),
            data.len()
        ));
        let file = File::create(&path).unwrap();
        let mut keep = Keep::default();
        let p = pump(
            r.as_fd(),
            Target::File { file, limit },
            Duration::from_secs(1),
            &mut keep,
        );
        writer.join().unwrap();
        let got = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        (p, got, keep.0)
    }

    use std::os::fd::AsFd;

    #[test]
    fn a_file_gets_every_byte_or_is_cut_at_its_limit() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (p, got, scanned) = to_file(&data, u64::MAX);
        assert_eq!((p.read, p.forwarded, p.cut), (3_000_000, 3_000_000, false));
        assert!(got == data && scanned == data);
        // A core of exactly the limit is whole, not cut.
        let (p, got, _) = to_file(&data, 3_000_000);
        assert!(!p.cut && got == data, "{p:?}");
        // Cut at the limit; the rest still read and scanned.
        let (p, got, scanned) = to_file(&data, 100_000);
        assert!(p.cut && p.problem.is_none(), "{p:?}");
        assert_eq!(got, &data[..100_000]);
        assert_eq!(scanned, data);
    }

    #[test]
    fn stdin_that_is_not_a_pipe_is_read_and_written() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        let dir = std::env::temp_dir();
        let (src, dst) = (
            dir.join(format!("lw-forward-src-{}", std::process::id())),
            dir.join(format!("lw-forward-dst-{}", std::process::id())),
        );
        std::fs::write(&src, &data).unwrap();
        for (limit, want) in [(u64::MAX, data.len()), (5000, 5000)] {
            let input = File::open(&src).unwrap();
            let file = File::create(&dst).unwrap();
            let mut keep = Keep::default();
            let p = pump(
                input.as_fd(),
                Target::File { file, limit },
                Duration::from_secs(1),
                &mut keep,
            );
            assert_eq!(std::fs::read(&dst).unwrap(), &data[..want], "{p:?}");
            assert_eq!(keep.0, data);
            assert_eq!(p.cut, want < data.len());
        }
        std::fs::remove_file(&src).unwrap();
        std::fs::remove_file(&dst).unwrap();
    }
}

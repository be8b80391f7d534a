//! The systemd notify protocol (`Type=notify`): `READY=1` once the probes are attached,
//! `RELOADING=1` around a SIGHUP reload, `STOPPING=1` on the way out, each a datagram to
//! `$NOTIFY_SOCKET`. Written by hand: it is one `sendto` of a few bytes, and the crates for
//! it pull in far more than that. Without `$NOTIFY_SOCKET` (not under systemd) it does
//! nothing.
use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` lines). Failures are logged once per call,
/// never fatal: a monitor must not stop because its supervisor went away.
pub fn send(state: &str) {
    let Some(addr) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let addr = addr.to_string_lossy().into_owned();
    let sock = match UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("sd_notify: cannot create a socket: {e}");
            return;
        }
    };
    let sent = if let Some(name) = addr.strip_prefix('@') {
        abstract_send(&sock, name.as_bytes(), state.as_bytes())
    } else {
        sock.send_to(state.as_bytes(), &addr).map(|_| ())
    };
    if let Err(e) = sent {
        log::warn!("sd_notify to {addr} failed: {e}");
    }
}

/// Linux abstract socket names (`@name`): the address starts with a NUL byte.
fn abstract_send(sock: &UnixDatagram, name: &[u8], msg: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    sock.send_to_addr(msg, &addr).map(|_| ())
}

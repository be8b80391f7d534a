//! The control socket (`/run/leakwatch/control.sock`): root-only (mode 0600 and an
//! SO_PEERCRED check), one JSON request line in, one JSON response line out. The same
//! module holds the client side used by `freeze`, `unfreeze` and `status`.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::Path,
    sync::Arc,
};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader},
    net::{UnixListener, UnixStream},
    sync::watch,
    task::JoinHandle,
};
use zeroize::{Zeroize, Zeroizing};

use crate::respond::{Context, FreezeRequest};

/// Requests larger than this are refused (a credential is a few KiB at most).
const MAX_REQUEST: usize = 1 << 20;

#[derive(Serialize, Deserialize)]
pub struct Request {
    pub op: String,
    /// Base64 of the credential (freeze). Zeroized after use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    #[serde(default)]
    pub deep: bool,
    /// A scanned crash dump (`dump_report`, from the core-handler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dump: Option<crate::crash::DumpReport>,
}

impl Request {
    pub fn new(op: &str) -> Request {
        Request {
            op: op.to_string(),
            secret_b64: None,
            fingerprint: None,
            deep: false,
            dump: None,
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(s) = self.secret_b64.as_mut() {
            s.zeroize();
        }
    }
}

/// Stops accepting when dropped.
/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Server(JoinHandle<()>);

impl Drop for Server {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub async fn serve(
    path: &Path,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> Result<Server> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}; pass another --socket", dir.display()))?;
    }
    if UnixStream::connect(path).await.is_ok() {
        bail!(
            "another leakwatch daemon is already listening on {}; stop it or pass another --socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                r = listener.accept() => {
                    let Ok((sock, _)) = r else { continue };
                    log::debug!("control: connection accepted");
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(sock, ctx).await {
                            log::warn!("control client: {e:#}");
                        }
                    });
                }
                _ = stop.changed() => break,
            }
        }
    });
    Ok(Server(task))
}

async fn handle(sock: UnixStream, ctx: Arc<Context>) -> Result<()> {
    let cred = sock.peer_cred()?;
    let (rd, mut wr) = sock.into_split();
    if cred.uid() != 0 {
        let msg =
            json!({"ok": false, "error": "refused: the leakwatch control socket is root-only"});
        wr.write_all(format!("{msg}\n").as_bytes()).await?;
        bail!("refused a request from uid {}", cred.uid());
    }
    let mut line = Zeroizing::new(Vec::new());
    let mut rd = TokioBufReader::new(rd).take(MAX_REQUEST as u64);
    // A client that connects and says nothing must not hold a task forever.
    match tokio::time::timeout(REQUEST_TIMEOUT, rd.read_until(b'\n', &mut line)).await {
        Ok(r) => {
            r?;
        }
        Err(_) => {
            let msg = json!({"ok": false, "error": format!("no request within {} s", REQUEST_TIMEOUT.as_secs())});
            let _ = wr.write_all(format!("{msg}\n").as_bytes()).await;
            bail!("closed an idle control connection");
        }
    }
    log::debug!("control: request read");
    // Bytes, not a String: a request that is not UTF-8 still gets an answer.
    let resp = match parse_request(&line) {
        Ok(req) => dispatch(req, &ctx, cred.pid().map(|p| p as u32)).await,
        Err(e) => json!({"ok": false, "error": format!("malformed request: {e}")}),
    };
    wr.write_all(format!("{resp}\n").as_bytes()).await?;
    log::debug!("control: response written");
    Ok(())
}

/// One request line as the daemon reads it (the fuzz target's entry point too).
pub fn parse_request(line: &[u8]) -> serde_json::Result<Request> {
    serde_json::from_slice(line)
}

async fn dispatch(mut req: Request, ctx: &Context, client: Option<u32>) -> Value {
    let r: Result<Value> = match req.op.as_str() {
        "status" => Ok(ctx.status()),
        "unfreeze" => match req.fingerprint.as_deref() {
            Some(fp) => ctx
                .unfreeze(fp)
                .map(|removed| json!({"removed": removed, "fingerprint": fp})),
            None => Err(anyhow!("unfreeze needs a fingerprint")),
        },
        "freeze" => {
            let secret = match req.secret_b64.take() {
                Some(mut b) => {
                    let d = base64::engine::general_purpose::STANDARD.decode(b.as_bytes());
                    b.zeroize();
                    match d {
                        Ok(v) => Some(Zeroizing::new(v)),
                        Err(_) => {
                            return json!({"ok": false, "error": "the credential was not valid base64"})
                        }
                    }
                }
                None => None,
            };
            let fr = FreezeRequest {
                secret,
                fingerprint: req.fingerprint.take(),
                deep: req.deep,
                client_pid: client,
                fleet: None,
            };
            ctx.freeze(fr)
                .await
                .and_then(|r| Ok(serde_json::to_value(r)?))
        }
        "dump_report" => match req.dump.take() {
            Some(d) => ctx.dump_report(d).map(|()| json!({})),
            None => Err(anyhow!("dump_report needs a dump")),
        },
        op => Err(anyhow!("unknown operation `{op}`")),
    };
    match r {
        Ok(mut v) => {
            v["ok"] = json!(true);
            v
        }
        Err(e) => json!({"ok": false, "error": format!("{e:#}")}),
    }
}

/// The uid of the process at the other end of `s`.
fn peer_uid(s: &std::os::unix::net::UnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

/// Client: sends one request, returns the response (an error if `ok` is false).
pub fn call(path: &Path, req: &Request) -> Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            anyhow!("permission denied on {}: the leakwatch control socket is root-only; run this as root", path.display())
        }
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow!(
            "no leakwatch daemon is listening on {} ({e}); start it (systemctl start leakwatch) or pass --socket",
            path.display()
        ),
        _ => anyhow!("cannot connect to {}: {e}", path.display()),
    })?;
    // Whoever owns the socket path gets what is sent: a credential must go to root only.
    match peer_uid(&s) {
        Some(0) => {}
        Some(uid) => bail!(
            "{} is served by uid {uid}, not root: that is not the leakwatch daemon, and nothing was sent to it; check who created it (ls -l) and remove it",
            path.display()
        ),
        None => bail!(
            "cannot tell who serves {} (SO_PEERCRED failed), so nothing was sent to it",
            path.display()
        ),
    }
    let mut line = Zeroizing::new(serde_json::to_string(req)?);
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp)?;
    let v: Value =
        serde_json::from_str(&resp).with_context(|| "the daemon's reply was not JSON")?;
    if v["ok"] != json!(true) {
        bail!(
            "{}",
            v["error"]
                .as_str()
                .unwrap_or("the daemon refused the request")
        );
    }
    Ok(v)
}

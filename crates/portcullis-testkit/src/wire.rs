//! A small raw PostgreSQL wire client for hostile tests: it sends exactly the frontend
//! messages a test builds — pipelines, unsynced batches, `Terminate` or `FunctionCall` after
//! a batch, re-used statement names — in as many or as few writes as the test asks, and
//! reads back every backend message. No driver would send most of these; attackers do.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// TCP, or a Unix socket (a testkit cluster trusts local socket connections).
#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    fn set_read_timeout(&self, t: Option<Duration>) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    /// A read, retried when a signal interrupts it: with a read timeout set, the kernel
    /// never restarts it (signal(7)), and a test process gets signals (`SIGCHLD` of the
    /// tools it runs).
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let read = match self {
                Stream::Tcp(s) => s.read(buf),
                Stream::Unix(s) => s.read(buf),
            };
            match read {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf),
            Stream::Unix(s) => s.write_all(buf),
        }
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
    }
}

/// One backend message: its type byte and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendMsg {
    /// The message type (`b'Z'`, `b'E'`, …).
    pub tag: u8,
    /// The body, without the type byte and length.
    pub body: Vec<u8>,
}

impl BackendMsg {
    /// For an ErrorResponse or NoticeResponse: the field with code `code` (`b'C'` SQLSTATE,
    /// `b'M'` message).
    pub fn field(&self, code: u8) -> Option<String> {
        let mut rest = &self.body[..];
        while let Some((&c, tail)) = rest.split_first() {
            if c == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if c == code {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }

    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> Option<String> {
        (self.tag == b'E').then(|| self.field(b'C')).flatten()
    }
}

/// Frontend messages, encoded.
pub mod msg {
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(tag);
        out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// `Query`.
    pub fn query(sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, sql);
        frame(b'Q', &b)
    }

    /// `Parse` of statement `name` (no parameter types).
    pub fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, name);
        cstr(&mut b, sql);
        b.extend_from_slice(&0u16.to_be_bytes());
        frame(b'P', &b)
    }

    /// `Bind` of `statement` to `portal`, with text parameters and text results.
    pub fn bind(portal: &str, statement: &str, params: &[Option<&str>]) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        cstr(&mut b, statement);
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&(params.len() as u16).to_be_bytes());
        for p in params {
            match p {
                Some(v) => {
                    b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    b.extend_from_slice(v.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b.extend_from_slice(&0u16.to_be_bytes());
        frame(b'B', &b)
    }

    /// Parse/Bind/Describe/Execute/Sync of `sql` (unnamed, as libpq's `PQexecParams`), every
    /// result column in binary format.
    pub fn pbe_binary(sql: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, "");
        cstr(&mut b, "");
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        [
            parse("", sql),
            frame(b'B', &b),
            describe(b'P', ""),
            execute(""),
            sync(),
        ]
        .concat()
    }

    /// `Execute` of `portal`, all rows.
    pub fn execute(portal: &str) -> Vec<u8> {
        let mut b = Vec::new();
        cstr(&mut b, portal);
        b.extend_from_slice(&0i32.to_be_bytes());
        frame(b'E', &b)
    }

    /// `Describe` of a statement (`b'S'`) or portal (`b'P'`).
    pub fn describe(what: u8, name: &str) -> Vec<u8> {
        let mut b = vec![what];
        cstr(&mut b, name);
        frame(b'D', &b)
    }

    /// `Close` of a statement (`b'S'`) or portal (`b'P'`).
    pub fn close(what: u8, name: &str) -> Vec<u8> {
        let mut b = vec![what];
        cstr(&mut b, name);
        frame(b'C', &b)
    }

    /// `Sync`.
    pub fn sync() -> Vec<u8> {
        frame(b'S', &[])
    }

    /// `Flush`.
    pub fn flush() -> Vec<u8> {
        frame(b'H', &[])
    }

    /// `Terminate`.
    pub fn terminate() -> Vec<u8> {
        frame(b'X', &[])
    }

    /// `FunctionCall` of function `oid` with text arguments, text result.
    pub fn function_call(oid: u32, args: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&oid.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&(args.len() as u16).to_be_bytes());
        for a in args {
            b.extend_from_slice(&(a.len() as i32).to_be_bytes());
            b.extend_from_slice(a.as_bytes());
        }
        b.extend_from_slice(&0u16.to_be_bytes());
        frame(b'F', &b)
    }

    /// Parse + Bind + Execute of `sql` in the unnamed statement and portal (no Sync).
    pub fn pbe(sql: &str) -> Vec<u8> {
        [parse("", sql), bind("", "", &[]), execute("")].concat()
    }

    /// `CopyData`.
    pub fn copy_data(data: &[u8]) -> Vec<u8> {
        frame(b'd', data)
    }

    /// `CopyDone`.
    pub fn copy_done() -> Vec<u8> {
        frame(b'c', &[])
    }
}

/// A raw connection to PostgreSQL or the gateway, past authentication.
#[derive(Debug)]
pub struct PgWire {
    tcp: Stream,
    buf: Vec<u8>,
}

impl PgWire {
    /// Connect to `127.0.0.1:port` as `user` on `database`, answering a cleartext, MD5-less
    /// password request with `password` (the gateway asks for the token in clear; a testkit
    /// cluster trusts local connections). Returns after the first `ReadyForQuery`.
    pub fn connect(
        port: u16,
        user: &str,
        database: &str,
        password: &str,
    ) -> std::io::Result<PgWire> {
        Self::connect_with(port, &[("user", user), ("database", database)], password)
    }

    /// As [`PgWire::connect`], with the startup packet's parameters as given (in order,
    /// duplicates included).
    pub fn connect_with(
        port: u16,
        params: &[(&str, &str)],
        password: &str,
    ) -> std::io::Result<PgWire> {
        // A signal may interrupt the connect itself (it is never restarted): try again.
        let tcp = loop {
            match TcpStream::connect(("127.0.0.1", port)) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        tcp.set_nodelay(true)?;
        Self::start(Stream::Tcp(tcp), params, password)
    }

    /// Connect through the Unix socket `.s.PGSQL.{port}` in `dir` (a testkit cluster's
    /// [`socket_dir`](crate::PgCluster::socket_dir), where local connections are trusted).
    pub fn connect_unix(
        dir: &Path,
        port: u16,
        user: &str,
        database: &str,
    ) -> std::io::Result<PgWire> {
        let unix = UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))?;
        Self::start(
            Stream::Unix(unix),
            &[("user", user), ("database", database)],
            "",
        )
    }

    fn start(stream: Stream, params: &[(&str, &str)], password: &str) -> std::io::Result<PgWire> {
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut w = PgWire {
            tcp: stream,
            buf: Vec::new(),
        };
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        w.send(&startup)?;
        loop {
            let m = w.recv()?;
            match m.tag {
                b'R' if m.body.get(..4) == Some(&3u32.to_be_bytes()[..]) => {
                    let mut b = password.as_bytes().to_vec();
                    b.push(0);
                    let mut f = vec![b'p'];
                    f.extend_from_slice(&((b.len() + 4) as u32).to_be_bytes());
                    f.extend_from_slice(&b);
                    w.send(&f)?;
                }
                b'E' => {
                    return Err(std::io::Error::other(format!(
                        "refused at startup: {} {}",
                        m.sqlstate().unwrap_or_default(),
                        m.field(b'M').unwrap_or_default()
                    )));
                }
                b'Z' => return Ok(w),
                _ => {}
            }
        }
    }

    /// Send `bytes` in one write.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes)
    }

    /// Close the sending side, as a client does after `Terminate` (the other side reads the
    /// end of the stream; replies can still be read).
    pub fn close_write(&mut self) -> std::io::Result<()> {
        self.tcp.shutdown_write()
    }

    /// The next backend message.
    pub fn recv(&mut self) -> std::io::Result<BackendMsg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len < 4 {
                    return Err(std::io::Error::other("invalid message length"));
                }
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return Ok(BackendMsg { tag, body });
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.tcp.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Messages up to and including the next `ReadyForQuery`.
    pub fn until_ready(&mut self) -> std::io::Result<Vec<BackendMsg>> {
        let mut out = Vec::new();
        loop {
            let m = self.recv()?;
            let ready = m.tag == b'Z';
            out.push(m);
            if ready {
                return Ok(out);
            }
        }
    }

    /// Every message until the other side closes the connection (or `within` passes).
    pub fn until_closed(&mut self, within: Duration) -> Vec<BackendMsg> {
        let _ = self.tcp.set_read_timeout(Some(within));
        let mut out = Vec::new();
        while let Ok(m) = self.recv() {
            out.push(m);
        }
        out
    }

    /// Send a simple query and return its messages up to `ReadyForQuery`.
    pub fn simple(&mut self, sql: &str) -> std::io::Result<Vec<BackendMsg>> {
        self.send(&msg::query(sql))?;
        self.until_ready()
    }
}

//! Blocking client of the control socket (the CLI side; only the daemon runs tokio).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::proto::{Request, Response};

pub struct Client {
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects, with an error that says what to do when no daemon listens.
    pub fn connect(socket: &Path) -> Result<Self> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            anyhow!(
                "cannot reach the agentwarden daemon at {}: {e}\n\
                 hint: start it with `agentwarden daemon` (or `systemctl start agentwarden`)",
                socket.display()
            )
        })?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    pub fn send(&mut self, req: &Request) -> Result<()> {
        let mut line = serde_json::to_string(req)?;
        line.push('\n');
        self.reader
            .get_mut()
            .write_all(line.as_bytes())
            .context("writing request")?;
        Ok(())
    }

    /// Next response line; `None` when the daemon closed the stream.
    pub fn recv(&mut self) -> Result<Option<Response>> {
        let mut line = String::new();
        if self
            .reader
            .read_line(&mut line)
            .context("reading response")?
            == 0
        {
            return Ok(None);
        }
        let resp = serde_json::from_str(&line)
            .with_context(|| format!("malformed response from daemon: {line:?}"))?;
        Ok(Some(resp))
    }

    /// One request, one response; a daemon-side error becomes an `Err`.
    pub fn call(socket: &Path, req: &Request) -> Result<Response> {
        let mut c = Self::connect(socket)?;
        c.send(req)?;
        match c.recv()? {
            Some(Response::Error { message }) => bail!("{message}"),
            Some(r) => Ok(r),
            None => bail!("the daemon closed the connection without answering"),
        }
    }
}

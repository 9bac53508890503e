//! The holding endpoint (`network.on_violation: ask`): the cgroup programs send a
//! session's denied connect here instead of its destination (the kernel completes the
//! handshake with this listener, so the agent sees a connected socket whose first bytes
//! wait). The daemon finds where it was addressed (sock_diag's socket cookie, the
//! kernel's record of the original), asks a person through the same book of requests
//! as held files, and then connects to the original destination and relays both ways,
//! or resets the connection. Nothing reaches the destination before an approval.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::{TcpListener, TcpStream};

use super::*;

/// The listener, on an ephemeral loopback port (the profiles are compiled with it).
pub(super) fn bind() -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("binding the holding endpoint on loopback")?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Accepts held connections for as long as the daemon runs.
pub(super) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(handle(shared.clone(), stream, peer));
            }
            Err(e) => {
                warn!(error = %e, "holding endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What the daemon knows of a held connection.
struct Held {
    to: SocketAddr,
    answer: tokio::sync::oneshot::Receiver<bool>,
}

async fn handle(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr) {
    let Ok(local) = client.local_addr() else {
        return;
    };
    let found = tokio::task::spawn_blocking(move || redirect::cookie_of(peer, Some(local))).await;
    let cookie = match found {
        Ok(Ok(Some(c))) => c,
        Ok(Ok(None)) | Err(_) => return reset(client),
        Ok(Err(e)) => {
            warn!(error = %format!("{e:#}"), %peer, "holding endpoint: no socket cookie");
            return reset(client);
        }
    };
    let Some(held) = request(&shared, cookie) else {
        // Not sent here by the kernel for a session (a process that connected to the
        // endpoint by itself): nothing to relay.
        return reset(client);
    };
    match held.answer.await {
        Ok(true) => relay(client, held.to).await,
        Ok(false) | Err(_) => reset(client),
    }
}

/// Opens the approval request of the held connection with socket cookie `cookie`.
fn request(shared: &Shared, cookie: u64) -> Option<Held> {
    let core = shared.core();
    let o = core
        .kernel
        .policy
        .original_destinations
        .get(&cookie, 0)
        .ok()
        .filter(|o| o.held == 1)?;
    let to = SocketAddr::new(redirect::address_of(&o), o.port);
    let session = core.attribution.registry.get(o.session_id)?;
    let rule = core.profiles.get(&session.profile)?.ask[2]?;
    let escalation = core.kernel.policy.refusal.as_ref()?.escalation.clone();
    drop(core);
    let key = approvals::Key {
        session_id: o.session_id,
        rule_id: o.rule_id,
        object: (agent_common::policy::fnv(&o.addr), u64::from(o.port)),
    };
    let answer = escalation.hold_reply(approvals::Request::new(
        key,
        o.tgid,
        "connect",
        to.to_string(),
        "network",
        rule,
    ));
    Some(Held { to, answer })
}

/// Connects to where the agent addressed the connection and copies both ways until
/// either side closes.
async fn relay(mut client: TcpStream, to: SocketAddr) {
    match TcpStream::connect(to).await {
        Ok(mut upstream) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        }
        Err(e) => {
            info!(%to, error = %e, "approved connection: the destination refused");
            reset(client);
        }
    }
}

/// Closes with a reset: the agent's next read or write fails (`ECONNRESET`).
fn reset(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

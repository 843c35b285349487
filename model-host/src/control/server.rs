//! Accepts gateway connections and gives each its own task.

use std::sync::Arc;

use interprocess::local_socket::tokio::Listener;
use interprocess::local_socket::traits::StreamCommon as _;
use interprocess::local_socket::traits::tokio::Listener as _;

use crate::control::connection;
use crate::control::context::HostContext;

pub async fn accept_loop(listener: Listener, ctx: Arc<HostContext>) {
    let mut next_id: u64 = 0;
    loop {
        match listener.accept().await {
            Ok(stream) => {
                next_id += 1;
                // Who is it? Checked before a single byte is read from it.
                let (uid, gid, pid) = match stream.peer_creds() {
                    Ok(c) => (c.euid(), c.egid(), c.pid()),
                    Err(_) => (None, None, None),
                };
                if !ctx.peers.allows(uid, gid) {
                    ctx.counters.peers_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(?uid, ?gid, ?pid, "refused a connection from a peer not in --allowed-uids/--allowed-gids");
                    drop(stream);
                    continue;
                }
                tokio::spawn(connection::serve(stream, ctx.clone(), next_id));
            }
            // Out of descriptors or similar: keep serving those connected.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

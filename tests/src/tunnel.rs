//! A device's network path to one datacenter that a test can cut and restore (a phone in a
//! tunnel, S7): a UDP relay on loopback. The device is given the relay's address instead of
//! the datacenter's; while the path is cut every datagram is dropped, both ways, and the
//! device and the datacenter each see the other go silent, as on a real network. The app on
//! the device keeps running meanwhile and can keep queueing ops.
//!
//! One relay serves one client endpoint (the last address it heard from). Buffers are fixed
//! (one datagram each way); the task ends when the [`Path`] is dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::UdpSocket;

/// Largest UDP datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

pub struct Path {
    /// Give this address to the device instead of the datacenter's.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Path {
    /// A path to the datacenter at `to`, open.
    pub async fn open(to: SocketAddr) -> std::io::Result<Path> {
        let front = UdpSocket::bind("127.0.0.1:0").await?;
        let back = UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(to).await?;
        let addr = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let dropped = Arc::new(AtomicU64::new(0));
        let task = {
            let (cut, dropped) = (cut.clone(), dropped.clone());
            tokio::spawn(async move {
                let mut up = vec![0u8; MAX_DATAGRAM];
                let mut down = vec![0u8; MAX_DATAGRAM];
                let mut client: Option<SocketAddr> = None;
                loop {
                    tokio::select! {
                        r = front.recv_from(&mut up) => {
                            let Ok((n, from)) = r else { continue };
                            client = Some(from);
                            if cut.load(Ordering::Relaxed) {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            } else {
                                let _ = back.send(&up[..n]).await;
                            }
                        }
                        r = back.recv(&mut down) => {
                            // Errors here are ICMP "port unreachable" from a dead datacenter.
                            let Ok(n) = r else { continue };
                            match (cut.load(Ordering::Relaxed), client) {
                                (false, Some(c)) => {
                                    let _ = front.send_to(&down[..n], c).await;
                                }
                                _ => {
                                    dropped.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                }
            })
        };
        Ok(Path {
            addr,
            cut,
            dropped,
            task,
        })
    }

    /// Drop everything from now on, both ways.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    /// Relay again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }

    /// Datagrams dropped while cut.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for Path {
    fn drop(&mut self) {
        self.task.abort();
    }
}

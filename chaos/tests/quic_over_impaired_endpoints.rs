//! Real QUIC (quinn, rustls) between an impaired client endpoint and an impaired server
//! endpoint on loopback: a lossy, duplicating, reordering, delayed path still carries a
//! stream byte for byte, and the counters show the path really was that bad.

use anyhow::Context;
use lifeboat_chaos::{client_endpoint, server_endpoint, Impairment};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use std::sync::Arc;
use std::time::Duration;

const BYTES: usize = 48 * 1024;

fn tls() -> anyhow::Result<(quinn::ServerConfig, quinn::ClientConfig)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert: CertificateDer<'static> = ck.cert.der().clone();
    let key = PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der());
    let server = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key.into())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let client = quinn::ClientConfig::with_root_certificates(Arc::new(roots))?;
    Ok((server, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_lossy_duplicating_reordering_path_byte_for_byte() -> anyhow::Result<()>
{
    let seed = 0xC4A05;
    let (server_cfg, client_cfg) = tls()?;
    let bad = Impairment::none()
        .with_loss(0.2)
        .with_duplicate(0.1)
        .with_reorder(0.1, Duration::from_millis(20))
        .with_delay(Duration::from_millis(10), Duration::from_millis(20));
    let (server, server_handle) = server_endpoint(
        "127.0.0.1:0".parse()?,
        Impairment::none().with_reorder(0.2, Duration::from_millis(10)),
        seed,
    )?;
    server.set_server_config(Some(server_cfg));
    let server_addr = server.local_addr()?;
    let (client, client_handle) = client_endpoint("127.0.0.1:0".parse()?, bad, seed)?;

    let echo = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        let (mut send, mut recv) = conn.accept_bi().await?;
        let data = recv.read_to_end(BYTES + 1).await?;
        send.write_all(&data).await?;
        send.finish()?;
        // Keep the connection until the client has read everything and closed it. Its
        // CONNECTION_CLOSE crosses the lossy path too and may be lost every time it is sent:
        // then the idle timeout (30 s) ends the connection here.
        conn.closed().await;
        anyhow::Ok(())
    });

    let data: Vec<u8> = (0..BYTES).map(|i| (i * 7 % 251) as u8).collect();
    let back = tokio::time::timeout(Duration::from_secs(30), async {
        let conn = client
            .connect_with(client_cfg, server_addr, "localhost")?
            .await?;
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&data).await?;
        send.finish()?;
        let back = recv.read_to_end(BYTES + 1).await?;
        conn.close(0u32.into(), b"done");
        anyhow::Ok(back)
    })
    .await
    .with_context(|| format!("seed {seed}: echo did not finish in 30 s"))??;
    assert!(back == data, "seed {seed}: echo differs");
    // Longer than the idle timeout: the server may only learn of the close that way (a
    // 10 s bound failed once on a loaded machine when the close frames were lost).
    tokio::time::timeout(Duration::from_secs(45), echo)
        .await
        .context("server task")???;

    let c = client_handle.stats();
    let s = server_handle.stats();
    assert!(
        c.send.dropped > 0 && c.recv.dropped > 0,
        "seed {seed}: {c:?}"
    );
    assert!(c.total().duplicated > 0, "seed {seed}: {c:?}");
    assert!(
        c.total().reordered > 0 && s.total().reordered > 0,
        "seed {seed}"
    );
    assert!(c.send.delivered > 0 && s.recv.delivered > 0);
    eprintln!("seed {seed}: client {c:?}\nserver {s:?}");
    Ok(())
}

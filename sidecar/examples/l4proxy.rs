//! The benchmark floor: a current-thread tokio L4 proxy that only copies
//! bytes (`l4proxy LISTEN UPSTREAM`). Anything a real L7 proxy costs on top
//! of this is parsing, routing and bookkeeping.

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (listen, upstream) = match (args.next(), args.next()) {
        (Some(l), Some(u)) => (l, u),
        _ => {
            eprintln!("usage: l4proxy LISTEN_ADDR UPSTREAM_ADDR");
            std::process::exit(2);
        }
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(&listen).await?;
            loop {
                let (mut down, _) = listener.accept().await?;
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = down.set_nodelay(true);
                    if let Ok(mut up) = TcpStream::connect(&upstream).await {
                        let _ = up.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        })
}

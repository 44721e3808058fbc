//! `conflist-loadgen`: K SIP subscribers against conflist or Kamailio (presence), over
//! WebSocket, UDP or TCP; flags, output formats and behaviour: `bench/src/loadgen/mod.rs`.
//!
//!     cargo build --release -p conflist-bench --bins
//!     target/release/conflist-loadgen --target ws://127.0.0.1:8080 --clients 1000 --rate 500 \
//!       --user-template alice --password demo-password --out /tmp/lg.json

#[path = "../loadgen/mod.rs"]
mod loadgen;

fn main() -> anyhow::Result<()> {
    loadgen::main()
}

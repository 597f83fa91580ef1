//! The Redis side of the comparison: `herd-bench load-redis-places` puts the offline dataset's
//! places into a geo set with pipelined GEOADDs, so GEOSEARCH searches the same points as herd.

use std::{net::SocketAddr, time::Duration};

use serde::Serialize;
use tokio::time::Instant;

use super::{
    BenchError,
    conn::{self, Conn},
    report::{Table, thousands},
    resp::{self, Reply},
    workload::{Codec, Op, REDIS_MAX_LAT, REDIS_PLACES, Wire},
};

fn codec() -> Codec {
    Codec {
        wire: Wire::Redis,
        op: Op::Iamat,
    }
}

async fn open(addr: SocketAddr, timeout: Duration) -> Result<Conn, BenchError> {
    let stream = conn::connect(addr, timeout)
        .await
        .map_err(|e| BenchError::Run(format!("Redis at {addr}: {}", conn::explain(&e))))?;
    Ok(Conn::new(stream, codec()))
}

/// Sends one command and returns its reply's kind.
async fn call(c: &mut Conn, args: &[&[u8]], timeout: Duration) -> Result<Reply, BenchError> {
    let mut out = Vec::new();
    resp::command(&mut out, args);
    let fail = |e: std::io::Error| BenchError::Run(format!("Redis: {e}"));
    c.send(&out, Instant::now() + timeout).await.map_err(fail)?;
    let reply = c.reply(Instant::now() + timeout).await.map_err(fail)?;
    match resp::parse(&reply) {
        Ok(Some((Reply::Error, _))) => Err(BenchError::Run(format!(
            "Redis: {}",
            String::from_utf8_lossy(&reply).trim_end()
        ))),
        Ok(Some((r, _))) => Ok(r),
        _ => Err(BenchError::Run("Redis: malformed reply".into())),
    }
}

/// The number of members of sorted set `key`.
pub(crate) async fn zcard(
    addr: SocketAddr,
    key: &str,
    timeout: Duration,
) -> Result<u64, BenchError> {
    let mut c = open(addr, timeout).await?;
    match call(&mut c, &[b"ZCARD", key.as_bytes()], timeout).await? {
        Reply::Integer(n) => Ok(n.max(0) as u64),
        other => Err(BenchError::Run(format!("Redis: ZCARD answered {other:?}"))),
    }
}

/// What `load-redis-places` did.
#[derive(Debug, Serialize)]
pub(crate) struct PlacesReport {
    pub(crate) scenario: &'static str,
    pub(crate) addr: String,
    pub(crate) key: &'static str,
    /// Places in the offline dataset.
    pub(crate) dataset: usize,
    /// Places left out because Redis's geo index cannot hold their latitude.
    pub(crate) skipped: usize,
    /// Members of the key afterwards.
    pub(crate) loaded: u64,
    pub(crate) seconds: f64,
}

impl PlacesReport {
    pub(crate) fn table(&self) -> Table {
        let mut t = Table::new(format!(
            "herd-bench load-redis-places -> {} ({})",
            self.addr, self.key
        ));
        t.row(
            "dataset",
            format!("{} places", thousands(self.dataset as u64)),
        )
        .row(
            "skipped",
            format!(
                "{} (latitude beyond +-{REDIS_MAX_LAT}, outside Redis's geo index)",
                self.skipped
            ),
        )
        .row("loaded", format!("{} members", thousands(self.loaded)))
        .row("time", format!("{:.2} s", self.seconds));
        t
    }
}

/// Replaces `herd:places` with the offline dataset's places (member `geonameid:name`), `batch`
/// places per GEOADD, `depth` GEOADDs in flight.
pub(crate) async fn load_places(
    addr: SocketAddr,
    batch: usize,
    depth: usize,
    timeout: Duration,
) -> Result<PlacesReport, BenchError> {
    use std::io::Write as _;
    let started = std::time::Instant::now();
    let places = tokio::task::spawn_blocking(herd::places::offline::raw_places)
        .await
        .map_err(|e| BenchError::Run(e.to_string()))?
        .map_err(|e| BenchError::Run(e.to_string()))?;
    let dataset = places.len();
    let usable: Vec<_> = places
        .iter()
        .filter(|p| p.lat.abs() <= REDIS_MAX_LAT)
        .collect();
    let skipped = dataset - usable.len();

    let mut c = open(addr, timeout).await?;
    call(&mut c, &[b"DEL", REDIS_PLACES.as_bytes()], timeout).await?;
    let fail = |e: std::io::Error| BenchError::Run(format!("Redis at {addr}: {e}"));
    let commands: Vec<Vec<u8>> = usable
        .chunks(batch.max(1))
        .map(|chunk| {
            let mut text: Vec<Vec<u8>> = Vec::with_capacity(2 + chunk.len() * 3);
            text.push(b"GEOADD".to_vec());
            text.push(REDIS_PLACES.as_bytes().to_vec());
            for p in chunk {
                let mut lon = Vec::new();
                let _ = write!(lon, "{}", p.lon);
                let mut lat = Vec::new();
                let _ = write!(lat, "{}", p.lat);
                text.push(lon);
                text.push(lat);
                text.push(format!("{}:{}", p.geonameid, p.name).into_bytes());
            }
            let args: Vec<&[u8]> = text.iter().map(|a| a.as_slice()).collect();
            let mut out = Vec::new();
            resp::command(&mut out, &args);
            out
        })
        .collect();
    for window in commands.chunks(depth.max(1)) {
        c.send(&window.concat(), Instant::now() + timeout)
            .await
            .map_err(fail)?;
        for _ in window {
            let reply = c.reply(Instant::now() + timeout).await.map_err(fail)?;
            if !matches!(resp::parse(&reply), Ok(Some((Reply::Integer(_), _)))) {
                return Err(BenchError::Run(format!(
                    "Redis at {addr}: GEOADD answered {:?}",
                    String::from_utf8_lossy(&reply).trim_end()
                )));
            }
        }
    }
    let loaded = match call(&mut c, &[b"ZCARD", REDIS_PLACES.as_bytes()], timeout).await? {
        Reply::Integer(n) => n.max(0) as u64,
        _ => 0,
    };
    Ok(PlacesReport {
        scenario: "load-redis-places",
        addr: addr.to_string(),
        key: REDIS_PLACES,
        dataset,
        skipped,
        loaded,
        seconds: started.elapsed().as_secs_f64(),
    })
}

//! Producer ids for idempotent producers (InitProducerId). Ids are handed out from blocks
//! whose end is made durable before the first id of the block is used, so an id is never
//! given twice, even across crashes (a crash only skips the rest of a block).

use std::path::PathBuf;

use parking_lot::Mutex;

const BLOCK: i64 = 1000;

pub struct ProducerIds {
    path: PathBuf,
    /// Next id to give, and the end of the block that is durable.
    state: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let next = match durable_log::checkpoint::read_optional(&path)? {
            Some(bytes) => String::from_utf8_lossy(&bytes)
                .trim()
                .parse()
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: not a number", path.display()),
                    )
                })?,
            None => 0,
        };
        Ok(ProducerIds {
            path,
            state: Mutex::new((next, next)),
        })
    }

    /// A new producer id. Blocks on an fsync once per [`BLOCK`] ids.
    pub fn next(&self) -> std::io::Result<i64> {
        let mut s = self.state.lock();
        if s.0 >= s.1 {
            let end = s.1 + BLOCK;
            durable_log::checkpoint::write_atomic(&self.path, end.to_string().as_bytes())?;
            s.1 = end;
        }
        let id = s.0;
        s.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("producer-ids");
        let a = ProducerIds::open(p.clone()).unwrap();
        let first: Vec<i64> = (0..5).map(|_| a.next().unwrap()).collect();
        assert_eq!(first, vec![0, 1, 2, 3, 4]);
        drop(a); // crash: the rest of the block is skipped
        let b = ProducerIds::open(p).unwrap();
        assert_eq!(b.next().unwrap(), BLOCK);
    }
}

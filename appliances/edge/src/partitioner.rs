//! The hub partition of a record, as Kafka's default partitioner (and librdkafka's
//! `murmur2_random`) picks it: `toPositive(murmur2(key)) % partitions`, so that a key lands
//! where the branch's applications would have put it had they produced to the hub directly,
//! whatever the two partition counts. Keyless records keep their local partition's order by
//! staying together: local partition `p` goes to hub partition `p % partitions`.

/// The seed Kafka's `Utils.murmur2` uses.
const KAFKA_SEED: u32 = murmur2::KAFKA_SEED;

/// Kafka's `Utils.murmur2`: MurmurHash2 over little-endian words.
pub fn murmur2(key: &[u8]) -> i32 {
    murmur2::murmur2(key, KAFKA_SEED) as i32
}

/// The hub partition for `key` (or, without a key, for records of local partition
/// `local_partition`) among `partitions`.
pub fn hub_partition(key: Option<&[u8]>, local_partition: i32, partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    match key {
        // Kafka's `Utils.toPositive`: the sign bit cleared, not the absolute value.
        Some(k) => (murmur2(k) & 0x7fff_ffff) % partitions,
        None => local_partition.rem_euclid(partitions),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key.as_bytes()), hash, "{key}");
        }
    }

    #[test]
    fn keys_spread_by_the_positive_hash_and_keyless_records_stay_together() {
        // -973932308 & 0x7fffffff = 1173551340; % 6 = 0.
        assert_eq!(hub_partition(Some(b"21"), 3, 6), 1_173_551_340 % 6);
        for n in 1..50 {
            let p = hub_partition(Some(b"foobar"), 0, n);
            assert!((0..n).contains(&p));
        }
        assert_eq!(hub_partition(None, 7, 4), 3);
        assert_eq!(hub_partition(None, 2, 4), 2);
    }
}

//! Several digests of one byte stream, each updated once per chunk.

use openssl::hash::Hasher;

use crate::error::Result;
use crate::headers::MicAlgorithm;

/// Running digests of a stream, one per algorithm.
#[derive(Clone)]
pub(crate) struct Digests {
    hashers: Vec<(MicAlgorithm, Hasher)>,
    length: u64,
}

impl Digests {
    /// Digests for each distinct algorithm of `algorithms`.
    pub(crate) fn new(algorithms: impl IntoIterator<Item = MicAlgorithm>) -> Result<Self> {
        let mut hashers: Vec<(MicAlgorithm, Hasher)> = Vec::new();
        for algorithm in algorithms {
            if hashers.iter().all(|(a, _)| *a != algorithm) {
                hashers.push((algorithm, Hasher::new(algorithm.message_digest())?));
            }
        }
        Ok(Self { hashers, length: 0 })
    }

    pub(crate) fn update(&mut self, data: &[u8]) -> Result<()> {
        for (_, hasher) in &mut self.hashers {
            hasher.update(data)?;
        }
        self.length += data.len() as u64;
        Ok(())
    }

    /// Bytes digested so far.
    pub(crate) fn length(&self) -> u64 {
        self.length
    }

    pub(crate) fn finish(mut self) -> Result<ContentDigests> {
        let mut values = Vec::with_capacity(self.hashers.len());
        for (algorithm, hasher) in &mut self.hashers {
            values.push((*algorithm, hasher.finish()?.to_vec()));
        }
        Ok(ContentDigests(values))
    }
}

/// The finished digests of one content.
#[derive(Clone, Debug, Default)]
pub(crate) struct ContentDigests(Vec<(MicAlgorithm, Vec<u8>)>);

impl ContentDigests {
    /// Digests of a whole buffer.
    pub(crate) fn of(
        data: &[u8],
        algorithms: impl IntoIterator<Item = MicAlgorithm>,
    ) -> Result<Self> {
        let mut digests = Digests::new(algorithms)?;
        digests.update(data)?;
        digests.finish()
    }

    /// The digest with `algorithm`, when it was computed.
    pub(crate) fn get(&self, algorithm: MicAlgorithm) -> Option<&[u8]> {
        self.0
            .iter()
            .find(|(a, _)| *a == algorithm)
            .map(|(_, digest)| digest.as_slice())
    }
}

//! Storing chunks: validate, dedup, verify, write one pack durably, then index.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bora_core::chunk::{CHUNK_HEADER_LEN, ChunkHeader, EncodedChunk, MAX_CHUNK_LEN, decode};
use bora_core::store::PutOutcome;
use bytes::Bytes;

use super::{LocalChunkStore, blocking};
use crate::error::StorageError;
use crate::index::ChunkLocation;
use crate::pack::{PackId, PackWriter};

fn invalid(chunk: &EncodedChunk, reason: String) -> StorageError {
    StorageError::InvalidChunk {
        digest: chunk.digest,
        reason,
    }
}

/// Checks that a record's header agrees with what the request says about the chunk.
fn validate(chunk: &EncodedChunk) -> Result<(), StorageError> {
    if chunk.digest.is_zero_marker() {
        return Err(invalid(chunk, "the all-zero digest is reserved".into()));
    }
    let header = ChunkHeader::parse(&chunk.record)
        .map_err(|e| invalid(chunk, format!("bad record header: {e}")))?;
    if header.digest != chunk.digest {
        return Err(invalid(
            chunk,
            format!("record header names chunk {}", header.digest),
        ));
    }
    if header.stored_len > MAX_CHUNK_LEN {
        return Err(invalid(
            chunk,
            format!("payload of {} bytes is too large", header.stored_len),
        ));
    }
    if chunk.record.len() != CHUNK_HEADER_LEN + header.stored_len {
        return Err(invalid(
            chunk,
            format!(
                "record is {} bytes, its header says {}",
                chunk.record.len(),
                CHUNK_HEADER_LEN + header.stored_len
            ),
        ));
    }
    if header.raw_len != chunk.raw_len as usize || header.codec != chunk.codec {
        return Err(invalid(
            chunk,
            format!(
                "record header says {} bytes {:?}, request says {} bytes {:?}",
                header.raw_len, header.codec, chunk.raw_len, chunk.codec
            ),
        ));
    }
    Ok(())
}

/// Decodes a new chunk and checks its plaintext against its digest, so a faulty client can
/// never store wrong data under a digest that every later backup would then dedup against.
fn verify(chunk: EncodedChunk) -> Result<EncodedChunk, StorageError> {
    match decode(&chunk.digest, &chunk.record) {
        Ok(_) => Ok(chunk),
        Err(e) => Err(invalid(&chunk, format!("record does not verify: {e}"))),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl LocalChunkStore {
    /// Stores encoded chunks: durable and indexed when this returns Ok. Chunks already
    /// stored (or repeated in the batch) are no-ops; all new ones go into one new pack.
    /// Nothing is written if any chunk is invalid or conflicts with a stored one.
    pub async fn put_chunks(&self, chunks: Vec<EncodedChunk>) -> Result<PutOutcome, StorageError> {
        let total = chunks.len() as u64;
        for chunk in &chunks {
            validate(chunk)?;
        }

        let mut raw_lens = HashMap::with_capacity(chunks.len());
        let mut unique = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            match raw_lens.entry(chunk.digest) {
                Entry::Occupied(e) if *e.get() != chunk.raw_len => {
                    return Err(StorageError::SizeConflict {
                        digest: chunk.digest,
                        existing: u64::from(*e.get()),
                        new: u64::from(chunk.raw_len),
                    });
                }
                Entry::Occupied(_) => {}
                Entry::Vacant(e) => {
                    e.insert(chunk.raw_len);
                    unique.push(chunk);
                }
            }
        }

        let digests: Vec<_> = unique.iter().map(|c| c.digest).collect();
        let found = self.locate_many(&digests).await?;
        let mut new = Vec::new();
        for (chunk, location) in unique.into_iter().zip(found) {
            match location {
                Some(l) if l.raw_len != chunk.raw_len => {
                    return Err(StorageError::SizeConflict {
                        digest: chunk.digest,
                        existing: u64::from(l.raw_len),
                        new: u64::from(chunk.raw_len),
                    });
                }
                Some(_) => {}
                None => new.push(chunk),
            }
        }
        if new.is_empty() {
            return Ok(PutOutcome {
                chunks_new: 0,
                chunks_existing: total,
                bytes_written: 0,
            });
        }

        // Verify in parallel, one blocking task per chunk.
        let new = if self.verify_puts {
            let verifying = new.into_iter().map(|c| blocking(move || verify(c)));
            futures::future::try_join_all(verifying)
                .await?
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
        } else {
            new
        };

        let (pack_bytes, placed) = blocking(move || {
            let mut writer = PackWriter::with_capacity(new.iter().map(|c| c.record.len()).sum());
            for chunk in &new {
                writer.push(chunk.digest, chunk.raw_len, &chunk.record);
            }
            writer.finish()
        })
        .await?;
        let pack = PackId::random();
        let name = pack.object_name();
        self.backend.put(&name, Bytes::from(pack_bytes)).await?;

        let created = unix_now();
        let entries: Vec<_> = placed
            .iter()
            .map(|p| {
                let location = ChunkLocation {
                    pack,
                    offset: p.offset,
                    length: p.length,
                    raw_len: p.raw_len,
                    created,
                };
                (p.digest, location)
            })
            .collect();
        let index = Arc::clone(&self.index);
        let entries = Arc::new(entries);
        let inserted = {
            let entries = Arc::clone(&entries);
            blocking(move || index.insert_batch(&entries)).await??
        };

        let mut outcome = PutOutcome::default();
        for ((_, location), inserted) in entries.iter().zip(&inserted) {
            if *inserted {
                outcome.chunks_new += 1;
                outcome.bytes_written += u64::from(location.length);
            }
        }
        outcome.chunks_existing = total - outcome.chunks_new;
        if outcome.chunks_new == 0 {
            // A concurrent put indexed every one of these first: nothing references the pack.
            if let Err(e) = self.backend.delete(&name).await {
                tracing::warn!(pack = %pack, error = %e, "cannot delete unreferenced pack");
            }
        } else if outcome.chunks_new < entries.len() as u64 {
            tracing::debug!(
                pack = %pack,
                unreferenced = entries.len() as u64 - outcome.chunks_new,
                "a concurrent put indexed some chunks first; their copies here are garbage"
            );
        }
        Ok(outcome)
    }
}

//! Chunk verification against plain `blake3::hash` over the same bytes, and manifest decode
//! throughput. Figures go to BENCHMARKS.md.
#![allow(clippy::unwrap_used, missing_docs)]

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shoal_protocol::{ChunkId, ChunkInfo, Manifest, verify};
use std::hint::black_box;

fn chunk_verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("verify");
    for size in [4 * 1024, 64 * 1024] {
        let bytes: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
        let id = ChunkId::of(&bytes);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("blake3_hash", size), &bytes, |b, bytes| {
            b.iter(|| blake3::hash(black_box(bytes)))
        });
        group.bench_with_input(
            BenchmarkId::new("shoal_verify", size),
            &bytes,
            |b, bytes| b.iter(|| verify(black_box(bytes), black_box(&id)).unwrap()),
        );
    }
    group.finish();
}

fn manifest_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("manifest_decode");
    // A 5-minute track (0.5 s first chunk, then ~4 s chunks) and a 10-hour one.
    for chunks in [76usize, 9_000] {
        let mut start = 0;
        let infos: Vec<_> = (0..chunks)
            .map(|i| {
                let samples = if i == 0 { 24_000 } else { 196_800 };
                let info = ChunkInfo {
                    id: ChunkId::of(&i.to_le_bytes()),
                    len: 65_000,
                    start,
                    samples,
                };
                start += u64::from(samples);
                info
            })
            .collect();
        let manifest = Manifest::new(2, 312, start - 312 - 500, infos).unwrap();
        let bytes = manifest.encode();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("decode", chunks), &bytes, |b, bytes| {
            b.iter(|| Manifest::decode(black_box(bytes)).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("decode_and_track_id", chunks),
            &bytes,
            |b, bytes| {
                b.iter(|| {
                    let m = Manifest::decode(black_box(bytes)).unwrap();
                    shoal_protocol::TrackId::of(bytes) == m.track_id()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, chunk_verification, manifest_decode);
criterion_main!(benches);

//! Pattern matching in a shard's trie (`route::sublist::Sublist`), issue 25.
//!
//! 10,000 patterns (`bench-<n>.*`, as `ringcast bench --pattern` holds
//! them, plus 100 `*.<n>.>` and one `>`, so wildcards branch at every
//! level), matched against a channel:
//! - `walk`: the trie walk alone ([`Sublist::for_each_match`], what a
//!   cache miss costs), for `bench-4242.x` (matched by
//!   `bench-4242.*` and `>`) and `bench-42.42.x` (by `*.42.>` and `>`);
//! - `cached`: [`Sublist::matches`] on a channel seen before (a hit: one
//!   hash probe and an `Arc` clone);
//! - `linear`: `protocol::pattern::matches` over every pattern, what a
//!   structure without a trie would pay.
//!
//! Results and the machine: bench-results/README.md (*Patterns*).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ringcast::protocol::pattern::matches;
use ringcast::route::sublist::Sublist;

const PATTERNS: usize = 10_000;

fn patterns() -> Vec<String> {
    let mut v: Vec<String> = (0..PATTERNS).map(|n| format!("bench-{n}.*")).collect();
    v.extend((0..100).map(|n| format!("*.{n}.>")));
    v.push(">".into());
    v
}

fn bench(c: &mut Criterion) {
    let all = patterns();
    let mut s = Sublist::default();
    for (i, p) in all.iter().enumerate() {
        s.insert(p, i);
    }
    let mut g = c.benchmark_group("sublist_10k");
    for ch in ["bench-4242.x", "bench-42.42.x"] {
        let mut n = 0;
        s.for_each_match(ch, |_| n += 1);
        println!("{ch}: {n} patterns match");
        g.bench_function(format!("walk/{ch}"), |b| {
            b.iter(|| {
                let mut n = 0usize;
                s.for_each_match(black_box(ch), |_| n += 1);
                n
            })
        });
        g.bench_function(format!("cached/{ch}"), |b| {
            b.iter(|| s.matches(black_box(ch)).len())
        });
    }
    g.bench_function("linear/bench-4242.x", |b| {
        b.iter(|| {
            all.iter()
                .filter(|p| matches(p, black_box("bench-4242.x")))
                .count()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

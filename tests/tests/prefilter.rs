//! The store reads only the notes a candidate may duplicate (signature prefilter in PostgreSQL,
//! migration 3), and that changes no decision: every note at or above the threshold is read,
//! and the plan over what is read equals the plan over every note (the exact scan's).

use std::collections::BTreeSet;

use hikmah_tests::model::embedder;
use hikmah_tests::pg::TestDb;
use serde::Deserialize;
use shared::db::{self, MIGRATIONS};
use shared::memory::decide::Decider;
use shared::memory::dedup::{embedding_text, DedupPolicy};
use shared::memory::normalize::content_hash;
use shared::memory::plan::{Candidate, KnownNote};
use shared::memory::prefilter::{decode_f32, signature, signature_radius};
use shared::memory::store::{all_notes, comparable_notes};
use shared::types::{Embedding, EMBEDDING_DIM};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

/// A labelled pair (`tests/data/dedup_pairs.jsonl`): `a` is the stored note, `b` the candidate.
#[derive(Deserialize)]
struct Pair {
    #[serde(rename = "a")]
    existing: String,
    #[serde(rename = "b")]
    candidate: String,
}

fn labelled_pairs() -> Vec<Pair> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/dedup_pairs.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn embed(texts: &[String]) -> Vec<Embedding> {
    let prepared: Vec<String> = texts.iter().map(|t| embedding_text(t)).collect();
    let refs: Vec<&str> = prepared.iter().map(String::as_str).collect();
    embedder().embed_blocking(&refs).unwrap()
}

fn candidate(text: &str, embedding: Embedding) -> Candidate {
    Candidate {
        text: text.to_owned(),
        content_hash: content_hash(text),
        embedding,
    }
}

/// Deterministic xorshift, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of four uniforms, centred, unit variance).
    fn normal(&mut self) -> f32 {
        (self.unit() + self.unit() + self.unit() + self.unit() - 2.0) * 3f32.sqrt()
    }
}

/// A vector near real embeddings: one base, a share of a second (same-topic notes blend), and
/// noise of a random size, so cosines with any query spread over the whole 0.3–1.0 band.
fn structured(rng: &mut Rng, bases: &[Embedding]) -> Embedding {
    let a = &bases[(rng.next() % bases.len() as u64) as usize];
    let b = &bases[(rng.next() % bases.len() as u64) as usize];
    let mix = rng.unit() * 0.7;
    let noise = rng.unit() * 0.9 / (EMBEDDING_DIM as f32).sqrt();
    let v = a
        .as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(x, y)| x + mix * y + noise * rng.normal())
        .collect();
    Embedding::normalized(v).unwrap()
}

/// Queries of the randomised check (each compared with all 10,000 notes, exactly and prefiltered).
const QUERIES: usize = 80;

/// A word of letters only (no digits: the numbers guard must not tell the notes apart).
fn word(mut i: usize) -> String {
    let mut w = String::new();
    loop {
        w.push((b'a' + (i % 26) as u8) as char);
        i /= 26;
        if i == 0 {
            return w;
        }
    }
}

#[tokio::test]
async fn the_signature_prefilter_reads_every_note_at_or_above_the_threshold_among_10000_and_decides_as_the_exact_scan(
) {
    let t = TestDb::new().await;
    let db = t.db().await;
    let policy = DedupPolicy::default();
    let decider = Decider::new(policy, std::sync::Arc::new(embedder()));
    let pairs = labelled_pairs();
    let texts: Vec<String> = pairs
        .iter()
        .flat_map(|p| [p.existing.clone(), p.candidate.clone()])
        .collect();
    let bases = embed(&texts);

    // 10,000 notes clustered around real embeddings, written with COPY (one statement).
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let user = "u-10k";
    let notes: Vec<(String, Embedding)> = (0..10_000)
        .map(|i| {
            let e = structured(&mut rng, &bases);
            let base = &texts[i % texts.len()];
            (format!("{base} {}", word(i)), e)
        })
        .collect();
    {
        let client = db.get().await.unwrap();
        let sink = client
            .copy_in(
                "COPY memory_notes (user_id, content, content_hash, embedding) FROM STDIN BINARY",
            )
            .await
            .unwrap();
        let writer = BinaryCopyInWriter::new(
            sink,
            &[Type::TEXT, Type::TEXT, Type::TEXT, Type::FLOAT4_ARRAY],
        );
        futures::pin_mut!(writer);
        for (text, e) in &notes {
            writer
                .as_mut()
                .write(&[&user, text, &content_hash(text), &e.as_slice()])
                .await
                .unwrap();
        }
        writer.finish().await.unwrap();
        client.execute("ANALYZE memory_notes", &[]).await.unwrap();
    }

    let client = db.get().await.unwrap();
    let all: Vec<KnownNote> = all_notes(&client, user).await.unwrap();
    assert_eq!(all.len(), 10_000);
    let radius = signature_radius(policy.threshold);
    let (mut in_band, mut read, mut widest) = (0usize, 0usize, 0usize);
    for q in 0..QUERIES {
        // Queries: fresh structured vectors, and stored notes themselves (their near twins).
        let embedding = if q % 3 == 0 {
            all[(rng.next() % all.len() as u64) as usize]
                .embedding
                .clone()
        } else {
            structured(&mut rng, &bases)
        };
        let cand = candidate(&format!("query {}", word(q)), embedding);
        let comparable =
            comparable_notes(&client, user, std::slice::from_ref(&cand), policy.threshold)
                .await
                .unwrap();
        let found: BTreeSet<i64> = comparable.iter().map(|n| n.id.0).collect();
        let band: Vec<&KnownNote> = all
            .iter()
            .filter(|n| n.embedding.cosine(&cand.embedding) >= policy.threshold)
            .collect();
        for n in &band {
            let distance = signature(&n.embedding)
                .chars()
                .zip(signature(&cand.embedding).chars())
                .filter(|(a, b)| a != b)
                .count();
            widest = widest.max(distance);
            assert!(
                found.contains(&n.id.0),
                "query {q}: note {} at cosine {} ({distance} bits apart, radius {radius}) was not read",
                n.id,
                n.embedding.cosine(&cand.embedding)
            );
        }
        in_band += band.len();
        read += found.len();
        assert_eq!(
            decider
                .actions(&comparable, std::slice::from_ref(&cand), None)
                .await
                .unwrap(),
            decider
                .actions(&all, std::slice::from_ref(&cand), None)
                .await
                .unwrap(),
            "query {q}: the prefiltered decision differs from the exact scan's"
        );
    }
    assert!(
        in_band > 100,
        "the check must cover the band: {in_band} notes in it"
    );
    eprintln!(
        "prefilter: {in_band} notes at or above {} over {QUERIES} queries, all read; {read} read in all \
         ({:.1} % of the scans); widest signature distance in the band {widest} of radius {radius}",
        policy.threshold,
        read as f64 / (QUERIES * all.len()) as f64 * 100.0
    );
    drop(client);
    db.close();
    t.cleanup().await;
}

#[tokio::test]
async fn on_the_labelled_pairs_the_prefiltered_decision_equals_the_exact_scans() {
    let t = TestDb::new().await;
    let db = t.db().await;
    let policy = DedupPolicy::default();
    let decider = Decider::new(policy, std::sync::Arc::new(embedder()));
    let pairs = labelled_pairs();
    let texts: Vec<String> = pairs
        .iter()
        .flat_map(|p| [p.existing.clone(), p.candidate.clone()])
        .collect();
    let embeddings = embed(&texts);
    let client = db.get().await.unwrap();
    for (i, pair) in pairs.iter().enumerate() {
        let user = format!("pair-{i}");
        client
            .execute(
                "INSERT INTO memory_notes (user_id, content, content_hash, embedding) VALUES ($1, $2, $3, $4)",
                &[&user, &pair.existing, &content_hash(&pair.existing), &embeddings[2 * i].as_slice()],
            )
            .await
            .unwrap();
        let cand = candidate(&pair.candidate, embeddings[2 * i + 1].clone());
        let all = all_notes(&client, &user).await.unwrap();
        let comparable = comparable_notes(
            &client,
            &user,
            std::slice::from_ref(&cand),
            policy.threshold,
        )
        .await
        .unwrap();
        assert_eq!(
            decider
                .actions(&comparable, std::slice::from_ref(&cand), None)
                .await
                .unwrap(),
            decider
                .actions(&all, std::slice::from_ref(&cand), None)
                .await
                .unwrap(),
            "pair {i}: {:?} / {:?}",
            pair.existing,
            pair.candidate
        );
    }
    drop(client);
    db.close();
    t.cleanup().await;
}

#[tokio::test]
async fn migration_3_gives_existing_notes_their_signature_and_exact_floats_and_loses_none() {
    let t = TestDb::empty().await;
    let admin = t.admin().await;
    // The schema as it was before migration 3, with notes in it.
    admin
        .batch_execute(&format!(
            "CREATE TABLE schema_migrations (version bigint PRIMARY KEY, name text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now());
             {}
             INSERT INTO schema_migrations (version, name) VALUES (1, '{}');",
            MIGRATIONS[0].sql, MIGRATIONS[0].name
        ))
        .await
        .unwrap();
    let texts: Vec<String> = [
        "Patience is the key to relief.",
        "Gratitude keeps blessings.",
        "Charity never decreases wealth.",
    ]
    .map(String::from)
    .to_vec();
    let embeddings = embed(&texts);
    for (text, e) in texts.iter().zip(&embeddings) {
        admin
            .execute(
                "INSERT INTO memory_notes (user_id, content, content_hash, embedding, times_seen) VALUES ('u', $1, $2, $3, 4)",
                &[text, &content_hash(text), &e.as_slice()],
            )
            .await
            .unwrap();
    }

    let db = t.db().await;
    let report = db::migrate(&db).await.unwrap();
    assert!(report.applied.iter().any(|(v, _)| *v == 3), "{report:?}");

    let rows = admin
        .query(
            "SELECT content, times_seen, signature::text, embedding_f32, embedding FROM memory_notes ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), texts.len(), "no note lost");
    for ((row, text), e) in rows.iter().zip(&texts).zip(&embeddings) {
        assert_eq!(row.get::<_, String>(0), *text);
        assert_eq!(row.get::<_, i32>(1), 4);
        assert_eq!(row.get::<_, String>(2), signature(e), "{text}: signature");
        assert_eq!(decode_f32(row.get(3)).unwrap(), *e, "{text}: exact floats");
        assert_eq!(
            row.get::<_, Vec<f32>>(4),
            e.as_slice(),
            "{text}: embedding kept"
        );
    }
    db.close();
    t.cleanup().await;
}

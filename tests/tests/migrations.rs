//! Migrations against a real PostgreSQL: idempotent, safe to run concurrently, and they create
//! the tables of design.md with their constraints.

use hikmah_tests::pg::{render, TestDb};
use shared::db::{self, Db, LATEST_SCHEMA_VERSION, MIGRATIONS};

#[tokio::test]
async fn applying_migrations_twice_is_a_no_op() {
    let t = TestDb::empty().await;
    let db = t.db().await;
    assert_eq!(
        db::schema_version(&db).await.unwrap(),
        None,
        "a fresh database has no schema"
    );

    let first = db::migrate(&db).await.unwrap();
    let all: Vec<(i64, &str)> = MIGRATIONS.iter().map(|m| (m.version, m.name)).collect();
    assert_eq!(first.applied, all);
    assert_eq!(first.version, LATEST_SCHEMA_VERSION);

    let second = db::migrate(&db).await.unwrap();
    assert!(
        second.applied.is_empty(),
        "applied again: {:?}",
        second.applied
    );
    assert_eq!(second.version, LATEST_SCHEMA_VERSION);

    let admin = t.admin().await;
    let rows: i64 = admin
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows as usize, MIGRATIONS.len());
    assert_eq!(
        db::schema_version(&db).await.unwrap(),
        Some(LATEST_SCHEMA_VERSION)
    );
    t.cleanup().await;
}

#[tokio::test]
async fn concurrent_migrators_do_not_fail_and_apply_each_migration_once() {
    let t = TestDb::empty().await;
    let mut pools = Vec::new();
    for _ in 0..4 {
        pools.push(t.db().await);
    }
    let reports = futures::future::join_all(pools.iter().map(db::migrate)).await;
    let reports: Vec<_> = reports
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("a concurrent migrator failed: {e}")))
        .collect();
    let applying: Vec<_> = reports.iter().filter(|r| !r.applied.is_empty()).collect();
    assert_eq!(
        applying.len(),
        1,
        "exactly one migrator applies: {reports:?}"
    );
    assert!(
        reports.iter().all(|r| r.version == LATEST_SCHEMA_VERSION),
        "{reports:?}"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn schema_version_is_latest_after_migrate() {
    let t = TestDb::new().await;
    let db: Db = t.db().await;
    assert_eq!(
        db::schema_version(&db).await.unwrap(),
        Some(LATEST_SCHEMA_VERSION)
    );
    t.cleanup().await;
}

#[tokio::test]
async fn the_tables_match_the_design() {
    let t = TestDb::new().await;
    let admin = t.admin().await;
    let columns = |table: &'static str| {
        let admin = &admin;
        async move {
            admin
                .query(
                    "SELECT column_name::text, data_type::text, is_nullable::text \
                     FROM information_schema.columns WHERE table_name = $1 ORDER BY ordinal_position",
                    &[&table],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| format!("{} {} {}", r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2)))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        columns("memory_notes").await,
        [
            "id bigint NO",
            "user_id text NO",
            "content text NO",
            "content_hash text NO",
            "embedding ARRAY NO",
            "times_seen integer NO",
            "created_at timestamp with time zone NO",
            "last_seen_at timestamp with time zone NO",
            "source_event_id uuid YES",
            // Generated from `embedding` (migration 3): the prefilter's signature and the
            // exact floats as bytes.
            "signature bit YES",
            "embedding_f32 bytea YES",
        ]
    );
    assert_eq!(
        columns("processed_events").await,
        [
            "event_id uuid NO",
            "user_id text NO",
            "processed_at timestamp with time zone NO",
            "notes_added integer NO",
            "notes_reinforced integer NO",
        ]
    );
    let indexed: bool = admin
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_indexes WHERE tablename = 'memory_notes' \
             AND indexdef LIKE '%(user_id)')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(indexed, "memory_notes has no index on user_id");

    let insert = |dims: usize, hash: &'static str| {
        let admin = &admin;
        async move {
            let embedding = vec![0.0f32; dims];
            admin
                .execute(
                    "INSERT INTO memory_notes (user_id, content, content_hash, embedding) \
                     VALUES ('u', 'c', $1, $2)",
                    &[&hash, &embedding],
                )
                .await
        }
    };
    insert(384, "h1")
        .await
        .unwrap_or_else(|e| panic!("{}", render(&e)));
    let wrong_dims = insert(383, "h2").await.unwrap_err();
    assert_eq!(
        wrong_dims.code().map(|c| c.code()),
        Some("23514"),
        "{}",
        render(&wrong_dims)
    );
    let duplicate = insert(384, "h1").await.unwrap_err();
    assert_eq!(
        duplicate.code().map(|c| c.code()),
        Some("23505"),
        "{}",
        render(&duplicate)
    );
    t.cleanup().await;
}

//! `hikmah memory list|forget|split|import|export`: read, erase, bring in or take out a user's
//! memory notes in PostgreSQL, or turn a merged variant back into a note.

use std::process::ExitCode;

use std::io::Write;
use std::time::Instant;

use anyhow::Context;
use serde_json::Value;
use shared::config::{DbConfig, DedupConfig, EmbedConfig, Env};
use shared::db::{Db, DbError};
use shared::embed::Embedder;
use shared::memory::account::{AccountError, MemoryAccount};
use shared::memory::dedup::DedupPolicy;
use shared::memory::import::parse_lines;
use shared::memory::service::MemoryService;
use shared::memory::variants::{split_variant, SplitError};
use shared::types::{NoteId, UserId};

/// Memory subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List a user's notes (most reinforced first).
    List {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Turn a variant (a candidate merged into a note) back into a note of its own.
    Split {
        /// The user id.
        #[arg(long)]
        user: String,
        /// The variant id (from `hikmah memory list --json`).
        #[arg(long)]
        variant: i64,
    },
    /// Erase a user's notes (all, or one), with their variants.
    Forget {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Only this note.
        #[arg(long)]
        note: Option<i64>,
    },
    /// Import notes from JSON lines on standard input (`{"content": "..."}` per line): embedded
    /// and deduplicated as the consumer does, all or nothing; progress on stderr.
    Import {
        /// The user id.
        #[arg(long)]
        user: String,
    },
    /// Print a user's notes as JSON lines (oldest first), in the form `import` reads.
    Export {
        /// The user id.
        #[arg(long)]
        user: String,
    },
}

/// A user's notes as one JSON array, in the order the elaborate prompt uses them (most
/// reinforced, then most recently seen), each with its `variants` (newest first). Built by PostgreSQL so timestamps are RFC 3339 and ids
/// print exactly.
const LIST_SQL: &str = "SELECT coalesce(json_agg(json_build_object(
        'id', id, 'content', content, 'times_seen', times_seen,
        'created_at', created_at, 'last_seen_at', last_seen_at,
        'source_event_id', source_event_id,
        'variants', (SELECT coalesce(json_agg(json_build_object(
            'id', v.id, 'content', v.content, 'event_id', v.event_id, 'cosine', v.cosine,
            'reason', v.reason, 'created_at', v.created_at) ORDER BY v.id DESC), '[]'::json)
          FROM note_variants v WHERE v.note_id = memory_notes.id))
        ORDER BY times_seen DESC, last_seen_at DESC, id DESC), '[]'::json)::text
    FROM memory_notes WHERE user_id = $1";

/// One JSON line per note, oldest first, built by PostgreSQL (RFC 3339 timestamps).
const EXPORT_SQL: &str = "SELECT json_build_object(
        'content', content, 'times_seen', times_seen,
        'created_at', created_at, 'last_seen_at', last_seen_at)::text
    FROM memory_notes WHERE user_id = $1 ORDER BY id";

/// Runs a memory subcommand against `DATABASE_URL`.
pub async fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let env = Env::process();
    let cfg = DbConfig::from_env(&env, 1).context("database configuration")?;
    let db = Db::connect(&cfg).await?;
    let result = match cmd {
        Command::List { user, json } => list(&db, &parse_user(&user)?, json).await,
        Command::Forget { user, note } => forget(&db, &parse_user(&user)?, note).await,
        Command::Split { user, variant } => split(&db, &parse_user(&user)?, variant).await,
        Command::Import { user } => import(&env, &db, &parse_user(&user)?).await,
        Command::Export { user } => export(&db, &parse_user(&user)?).await,
    };
    db.close();
    result
}

fn parse_user(raw: &str) -> anyhow::Result<UserId> {
    UserId::parse(raw).map_err(|e| anyhow::anyhow!("--user {raw:?}: {e}"))
}

/// The user's notes as JSON values (see [`LIST_SQL`]).
pub async fn notes(db: &Db, user: &UserId) -> Result<Vec<Value>, DbError> {
    let text: String = db
        .run(|conn| async move {
            let row = conn.query_one(LIST_SQL, &[&user.as_str()]).await?;
            Ok::<_, DbError>(row.get(0))
        })
        .await?;
    serde_json::from_str(&text).map_err(|e| DbError::Config(format!("unexpected notes JSON: {e}")))
}

async fn list(db: &Db, user: &UserId, json: bool) -> anyhow::Result<ExitCode> {
    let notes = notes(db, user).await?;
    if json {
        println!("{}", Value::Array(notes));
        return Ok(ExitCode::SUCCESS);
    }
    if notes.is_empty() {
        println!("no notes for user {user}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:>8}  {:>5}  {:<25}  content", "id", "seen", "last seen");
    for note in &notes {
        let content = note["content"].as_str().unwrap_or_default();
        let shown: String = if content.chars().count() > 90 {
            content.chars().take(89).chain(['…']).collect()
        } else {
            content.to_owned()
        };
        let last_seen = note["last_seen_at"].as_str().unwrap_or_default();
        println!(
            "{:>8}  {:>5}  {:<25}  {shown}",
            note["id"].to_string(),
            note["times_seen"].to_string(),
            last_seen.get(..19).unwrap_or(last_seen)
        );
    }
    println!("{} note(s) for user {user}", notes.len());
    Ok(ExitCode::SUCCESS)
}

/// Splits a variant out into a note, embedded as the consumer embeds notes.
async fn split(db: &Db, user: &UserId, variant: i64) -> anyhow::Result<ExitCode> {
    let embedder = Embedder::load(&EmbedConfig::from_env(&Env::process())?)?;
    match split_variant(db, &embedder, user, variant).await {
        Ok(note) => {
            println!("variant {variant} of user {user} is now note {note}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ (SplitError::NotFound { .. } | SplitError::AlreadyANote { .. })) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes one note (its variants go with it; its event stays processed, so a redelivery does
/// not restore it), or everything about the user exactly as `DELETE /hikmah/memory` does: notes,
/// variants, processed events, and a `forgotten_users` time before which the user's events are
/// acknowledged without storing anything.
async fn forget(db: &Db, user: &UserId, note: Option<i64>) -> anyhow::Result<ExitCode> {
    let account = MemoryAccount::postgres(db.clone());
    match note {
        Some(id) => match account.delete_note(user, NoteId(id)).await {
            Ok(()) => {
                println!("forgot note {id} of user {user}");
                Ok(ExitCode::SUCCESS)
            }
            Err(AccountError::NoteNotFound(_)) => {
                eprintln!(
                    "error: user {user} has no note {id} (see: hikmah memory list --user {user})"
                );
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e.into()),
        },
        None => {
            let forgotten = account.forget(user).await?;
            println!(
                "forgot {} note(s) and {} processed event(s) of user {user}; its events from before {} will store nothing",
                forgotten.notes,
                forgotten.processed_events,
                forgotten.forgotten_at.to_rfc3339()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads every line first (a bad one stops the import before anything is embedded or written),
/// then embeds and stores them in one transaction.
async fn import(env: &Env, db: &Db, user: &UserId) -> anyhow::Result<ExitCode> {
    let notes = parse_lines(std::io::stdin().lock())?;
    let embedder = Embedder::load(&EmbedConfig::from_env(env)?)?;
    let policy = DedupPolicy::from(&DedupConfig::from_env(env)?);
    let service = MemoryService::postgres(db.clone(), embedder, policy);
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_shown = Instant::now();
    let mut progress = move |done: usize, total: usize| {
        // A terminal gets one line rewritten in place; a log gets a line every few seconds.
        if tty {
            eprint!("\rembedded {done}/{total} notes");
            if done == total {
                eprintln!();
            }
        } else if done == total || last_shown.elapsed().as_secs() >= 5 {
            eprintln!("embedded {done}/{total} notes");
            last_shown = Instant::now();
        }
    };
    let outcome = service.import(user, notes, &mut progress).await?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "imported {} note(s) for user {user} in {secs:.1} s ({:.0} notes/s): {} added, {} reinforced, {} duplicate(s) (embedding {:.1} s, database {:.1} s)",
        outcome.notes,
        outcome.notes as f64 / secs.max(1e-9),
        outcome.notes_added,
        outcome.notes_reinforced,
        outcome.duplicates,
        outcome.embed_time.as_secs_f64(),
        outcome.db_time.as_secs_f64(),
    );
    Ok(ExitCode::SUCCESS)
}

async fn export(db: &Db, user: &UserId) -> anyhow::Result<ExitCode> {
    let lines: Vec<String> = db
        .run(|conn| async move {
            let rows = conn.query(EXPORT_SQL, &[&user.as_str()]).await?;
            rows.iter()
                .map(|row| row.try_get(0))
                .collect::<Result<Vec<String>, _>>()
                .map_err(DbError::from)
        })
        .await?;
    let mut out = std::io::stdout().lock();
    for line in &lines {
        // Re-serialised compactly (PostgreSQL's json text has spaces around the colons).
        let value: Value = serde_json::from_str(line).context("unexpected note JSON")?;
        writeln!(out, "{value}")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

//! `hikmah dedup EXISTING CANDIDATE`: the memory consumer's duplicate decision, from outside;
//! `hikmah dedup --eval FILE`: that decision measured on labelled pairs.

use std::process::ExitCode;

use anyhow::Context;
use shared::aws::AwsConfig;
use shared::config::{DedupConfig, EmbedConfig, Env, GenerationLimits, JudgeConfig};
use shared::embed::Embedder;
use shared::memory::dedup::{differing_words, Decision, DedupPolicy, Reason};
use shared::memory::eval::{parse_pairs, splits, EvalReport, Label, Split};
use shared::memory::judge::Judge;
use shared::memory::service::decide_pairs_judged;

/// Arguments of `hikmah dedup`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A note already in memory.
    #[arg(required_unless_present = "eval")]
    pub existing: Option<String>,
    /// The new candidate note.
    #[arg(required_unless_present = "eval")]
    pub candidate: Option<String>,
    /// Measure the decision on labelled pairs: JSON lines `{"a","b","label":"dup"|"distinct","class"}`.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["existing", "candidate"])]
    pub eval: Option<std::path::PathBuf>,
    /// With --eval: which split to report (the split is derived from the file, see README).
    #[arg(long, value_enum, default_value = "both", requires = "eval")]
    pub split: SplitArg,
    /// With --eval: print one JSON object instead of tables.
    #[arg(long, requires = "eval")]
    pub json: bool,
    /// With --eval: also list the misjudged pairs of the reported splits.
    #[arg(long, requires = "eval")]
    pub errors: bool,
    /// Let the LLM judge decide the pairs in its band, as the consumer does with
    /// `DEDUP_JUDGE=llm` (needs DEDUP_JUDGE=llm and a provider in the environment).
    #[arg(long)]
    pub judge: bool,
}

/// Which part of the labelled set `--eval` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SplitArg {
    /// Dev and test, each on its own.
    Both,
    /// The tuning half.
    Dev,
    /// The held-out half.
    Test,
    /// Every pair together.
    All,
}

/// Prints `{"cosine": …, "duplicate": …, "reason": …}` (threshold from `DEDUP_THRESHOLD`), or
/// the evaluation report.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let env = Env::process();
    let policy = DedupPolicy::from(&DedupConfig::from_env(&env)?);
    let judge = if args.judge {
        let Some(cfg) = JudgeConfig::from_env(&env)? else {
            anyhow::bail!(
                "--judge asks the judge the consumer would ask: set DEDUP_JUDGE=llm and its \
                 provider (LLM_PROVIDER=openai with OPENAI_BASE_URL/OPENAI_API_KEY, or bedrock)"
            );
        };
        let limits = GenerationLimits::from_env(&env)?;
        Some(Judge::from_config(&cfg, &limits, &AwsConfig::new()).await?)
    } else {
        None
    };
    let embedder = Embedder::load(&EmbedConfig::from_env(&env)?)?;
    if let Some(path) = &args.eval {
        return eval(&embedder, &policy, judge.as_ref(), path, &args).await;
    }
    let (Some(existing), Some(candidate)) = (&args.existing, &args.candidate) else {
        anyhow::bail!("give EXISTING and CANDIDATE, or --eval FILE");
    };
    let decision = decide_pairs_judged(
        &embedder,
        &policy,
        judge.as_ref(),
        &[(existing.as_str(), candidate.as_str())],
    )
    .await?
    .pop()
    .context("no decision")?;
    println!("{}", serde_json::to_string(&decision)?);
    Ok(ExitCode::SUCCESS)
}

/// What the judge was asked in an evaluation: `{"band", "calls", "same", "different", "failed"}`.
fn judge_summary(judge: &Judge, decisions: &[Decision]) -> serde_json::Value {
    let count = |r: Reason| decisions.iter().filter(|d| d.reason == r).count();
    let (same, different, failed) = (
        count(Reason::JudgedSame),
        count(Reason::JudgedDifferent),
        count(Reason::JudgeFailed),
    );
    let round = |x: f32| (f64::from(x) * 1000.0).round() / 1000.0;
    serde_json::json!({
        "band": [round(judge.band().low), round(judge.band().high)],
        "calls": same + different + failed,
        "same": same,
        "different": different,
        "failed": failed,
    })
}

async fn eval(
    embedder: &Embedder,
    policy: &DedupPolicy,
    judge: Option<&Judge>,
    path: &std::path::Path,
    args: &Args,
) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let pairs = parse_pairs(&text).with_context(|| format!("{}", path.display()))?;
    let split = splits(&pairs);
    let texts: Vec<(&str, &str)> = pairs.iter().map(|p| (p.a.as_str(), p.b.as_str())).collect();
    let decisions = decide_pairs_judged(embedder, policy, judge, &texts).await?;
    let summary = judge.map(|j| judge_summary(j, &decisions));
    let judged: Vec<bool> = decisions.iter().map(|d| d.duplicate).collect();

    // Each reported part: its name and the split it keeps (`None`: every pair).
    let parts: Vec<(&str, Option<Split>)> = match args.split {
        SplitArg::Both => vec![("dev", Some(Split::Dev)), ("test", Some(Split::Test))],
        SplitArg::Dev => vec![("dev", Some(Split::Dev))],
        SplitArg::Test => vec![("test", Some(Split::Test))],
        SplitArg::All => vec![("all", None)],
    };
    let split = &split;
    let keeps = |only: Option<Split>| move |i: usize| only.is_none_or(|s| split[i] == s);
    let reports: Vec<(&str, EvalReport)> = parts
        .iter()
        .map(|(name, only)| (*name, EvalReport::of(&pairs, &judged, keeps(*only))))
        .collect();

    if args.json {
        let mut out = serde_json::Map::new();
        out.insert("pairs".into(), pairs.len().into());
        out.insert("threshold".into(), f64::from(policy.threshold).into());
        if let Some(summary) = &summary {
            out.insert("judge".into(), summary.clone());
        }
        for (name, report) in &reports {
            out.insert((*name).into(), report.to_json());
        }
        println!("{}", serde_json::Value::Object(out));
    } else {
        println!(
            "{} labelled pairs from {}; DEDUP_THRESHOLD = {}",
            pairs.len(),
            path.display(),
            policy.threshold
        );
        if let Some(summary) = &summary {
            println!("judge (DEDUP_JUDGE=llm): {summary}");
        }
        for (name, report) in &reports {
            println!("\n{name} split:\n{}", report.to_table());
        }
    }
    if args.errors {
        for (name, only) in &parts {
            let keep = keeps(*only);
            eprintln!("\nmisjudged ({name}):");
            for (i, (p, d)) in pairs.iter().zip(&decisions).enumerate() {
                if keep(i) && d.duplicate != (p.label == Label::Dup) {
                    let spans = differing_words(&p.a, &p.b)
                        .map(|s| format!(" [{} / {}]", s.existing, s.candidate))
                        .unwrap_or_default();
                    let span = d
                        .span_cosine
                        .map(|c| format!(" span {c:.2}"))
                        .unwrap_or_default();
                    eprintln!(
                        "  [{}] {} {:.3} {}{span}{spans} | {} | {}",
                        p.class,
                        if d.duplicate { "MERGED" } else { "MISSED" },
                        d.cosine,
                        d.reason,
                        p.a,
                        p.b
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `tandem data ...`: MIMIC-CXR conversion, the SYNTHETIC longitudinal set, splits and k-fold of a CSV.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use tandem_experiments::data::{self, CsvOptions, Dataset, mimic, split, synth};
use tandem_experiments::manifest::BadRows;

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Convert a MIMIC-CXR report tree (folder or .zip) to CSV: subject_id, study_id, findings, impression.
    Mimic(MimicArgs),
    /// Generate the SYNTHETIC longitudinal oncology set (serial impressions and concise summaries).
    Synth(SynthArgs),
    /// Seeded train/val/test split of a CSV (stratified by target length, or by group).
    Split(SplitArgs),
    /// Seeded k-fold cross-validation of a CSV; every row is tested exactly once.
    Kfold(KfoldArgs),
    /// Chain reports (IU X-ray by default) into SYNTHETIC multi-visit patient histories for `tandem summarize`:
    /// subject_id, study_id, date, findings, impression (some left empty for stage 1 to write).
    Chain(ChainArgs),
}

#[derive(Debug, Args)]
pub struct ChainArgs {
    /// A CSV of reports; IU X-ray has no patient ids, so the patients and dates made here are invented.
    pub reports: PathBuf,
    #[arg(long, default_value = "findings")]
    pub input_column: String,
    #[arg(long, default_value = "impression")]
    pub target_column: String,
    #[arg(long, default_value_t = 10)]
    pub patients: usize,
    #[arg(long, default_value_t = 2)]
    pub min_visits: usize,
    #[arg(long, default_value_t = 4)]
    pub max_visits: usize,
    /// Fraction of later visits whose impression is left empty (stage 1 writes it from the findings).
    #[arg(long, default_value_t = 0.25)]
    pub blank_impressions: f64,
    #[arg(long)]
    pub seed: u64,
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct MimicArgs {
    /// The MIMIC-CXR reports: a folder holding files/pNN/pNNNNNNNN/sNNNNNNNN.txt, or a .zip of one.
    pub input: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    #[arg(long, default_value_t = 20)]
    pub patients: usize,
    #[arg(long)]
    pub seed: u64,
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BadRowsArg {
    Error,
    Drop,
}

/// Which rows of the CSV count, shared by split and kfold.
#[derive(Debug, Args)]
pub struct CsvArgs {
    /// The CSV (header row first; indices printed are 0-based data rows).
    pub csv: PathBuf,
    #[arg(long)]
    pub seed: u64,
    /// Rows sharing this column's value stay in one part (e.g. patient_id).
    #[arg(long)]
    pub group: Option<String>,
    /// Input column [default: findings, or impression when the CSV has impression and summary].
    #[arg(long)]
    pub input: Option<String>,
    /// Target column, whose length stratifies [default: impression, or summary as for --input].
    #[arg(long)]
    pub target: Option<String>,
    /// Rows with a missing column or empty text: stop with an error, or drop them.
    #[arg(long, value_enum, default_value_t = BadRowsArg::Error)]
    pub bad_rows: BadRowsArg,
    /// Use only the first N usable rows.
    #[arg(long)]
    pub max_rows: Option<usize>,
    #[arg(long, value_enum, default_value_t = SplitFormat::Table)]
    pub format: SplitFormat,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    #[command(flatten)]
    pub csv: CsvArgs,
    #[arg(long, default_value_t = 0.8)]
    pub train: f64,
    #[arg(long, default_value_t = 0.1)]
    pub val: f64,
    #[arg(long, default_value_t = 0.1)]
    pub test: f64,
}

#[derive(Debug, Args)]
pub struct KfoldArgs {
    #[command(flatten)]
    pub csv: CsvArgs,
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Fraction of all rows held out for validation in each fold.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
}

pub fn run(command: DataCommand) -> anyhow::Result<ExitCode> {
    match command {
        DataCommand::Mimic(args) => run_mimic(args),
        DataCommand::Synth(args) => run_synth(args),
        DataCommand::Split(args) => run_split(args),
        DataCommand::Kfold(args) => run_kfold(args),
        DataCommand::Chain(args) => run_chain(args),
    }
}

fn user_error(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(2))
}

fn run_mimic(args: MimicArgs) -> anyhow::Result<ExitCode> {
    let (reports, summary) = match mimic::read_reports(&args.input) {
        Ok(read) => read,
        Err(error) => return user_error(error),
    };
    if let Err(error) = mimic::write_csv(&reports, &args.output) {
        return user_error(error);
    }
    println!(
        "{} reports read, {} kept, {} dropped -> {}",
        summary.reports,
        summary.kept,
        summary.dropped_total(),
        args.output.display()
    );
    for (reason, count) in &summary.dropped {
        println!("  dropped {count:>8}  {}", reason.describe());
    }
    if summary.other_files > 0 {
        println!(
            "  ignored {:>8}  files outside the files/pNN/pNNNNNNNN/sNNNNNNNN.txt layout",
            summary.other_files
        );
    }
    for skipped in summary.describe_skipped() {
        println!("  skipped {skipped}");
    }
    Ok(ExitCode::SUCCESS)
}

fn run_synth(args: SynthArgs) -> anyhow::Result<ExitCode> {
    if args.patients == 0 {
        return user_error("--patients must be at least 1");
    }
    let rows = synth::generate(synth::SynthOptions {
        patients: args.patients,
        seed: args.seed,
    });
    if let Err(error) = synth::write_csv(&rows, &args.output) {
        return user_error(error);
    }
    let ned = rows
        .iter()
        .filter(|r| r.summary == "No evidence of disease.")
        .count();
    println!(
        "SYNTHETIC: {} examinations of {} synthetic patients (seed {}), {} ({:.1}%) with no evidence of disease -> {}",
        rows.len(),
        args.patients,
        args.seed,
        ned,
        100.0 * ned as f64 / rows.len().max(1) as f64,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn run_chain(args: ChainArgs) -> anyhow::Result<ExitCode> {
    let options = data::CsvOptions {
        input_column: args.input_column.clone(),
        target_column: args.target_column.clone(),
        group_column: None,
        bad_rows: tandem_experiments::manifest::BadRows::Drop,
    };
    let reports = match data::table::load_csv(&args.reports, &options) {
        Ok(d) => d,
        Err(e) => return user_error(e),
    };
    let chain = data::patients::ChainOptions {
        patients: args.patients,
        min_visits: args.min_visits,
        max_visits: args.max_visits,
        blank_impressions: args.blank_impressions,
        seed: args.seed,
    };
    let histories = match data::patients::chain_reports(&reports.examples, &chain) {
        Ok(h) => h,
        Err(e) => return user_error(format!("{}: {e}", args.reports.display())),
    };
    let text = data::patients::histories_csv(&histories);
    if let Err(e) = std::fs::write(&args.output, text) {
        return user_error(format!("{}: {e}", args.output.display()));
    }
    let visits: usize = histories.iter().map(|h| h.visits.len()).sum();
    let blank = histories
        .iter()
        .flat_map(|h| &h.visits)
        .filter(|v| v.impression.is_none())
        .count();
    println!(
        "SYNTHETIC: {} made-up patients, {visits} visits ({blank} without an impression) chained from {} (seed {}) -> {}",
        histories.len(),
        args.reports.display(),
        args.seed,
        args.output.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn load(args: &CsvArgs) -> Result<Dataset, String> {
    let header = data::table::read_header(&args.csv).map_err(|e| e.to_string())?;
    let has = |c: &str| header.iter().any(|h| h == c);
    let (input, target) = match (&args.input, &args.target) {
        (Some(i), Some(t)) => (i.clone(), t.clone()),
        (i, t) => {
            let (di, dt) = if has("findings") && has("impression") {
                ("findings", "impression")
            } else if has("impression") && has("summary") {
                ("impression", "summary")
            } else {
                return Err(format!(
                    "{}: no findings/impression or impression/summary columns; name them with --input and --target (its columns: {})",
                    args.csv.display(),
                    header.join(", ")
                ));
            };
            (
                i.clone().unwrap_or_else(|| di.into()),
                t.clone().unwrap_or_else(|| dt.into()),
            )
        }
    };
    let options = CsvOptions {
        input_column: input,
        target_column: target,
        group_column: args.group.clone(),
        bad_rows: match args.bad_rows {
            BadRowsArg::Error => BadRows::Error,
            BadRowsArg::Drop => BadRows::Drop,
        },
    };
    let mut dataset = data::table::load_csv(&args.csv, &options).map_err(|e| e.to_string())?;
    dataset.truncate(args.max_rows);
    Ok(dataset)
}

fn describe(args: &CsvArgs, dataset: &Dataset) -> String {
    let d = &dataset.dropped;
    let mut text = format!(
        "{}: {} usable rows of {}",
        args.csv.display(),
        dataset.examples.len(),
        dataset.total_rows
    );
    if d.total() > 0 {
        text.push_str(&format!(
            " ({} dropped: {} wrong field count, {} empty input, {} empty target, {} empty group)",
            d.total(),
            d.wrong_field_count,
            d.empty_input,
            d.empty_target,
            d.empty_group
        ));
    }
    if let Some(max) = args.max_rows {
        text.push_str(&format!(", capped at {max}"));
    }
    text
}

fn groups_in(dataset: &Dataset, indices: &[usize]) -> usize {
    let by_row: std::collections::BTreeMap<usize, &str> = dataset
        .examples
        .iter()
        .map(|e| (e.row, e.group.as_deref().unwrap_or("")))
        .collect();
    indices
        .iter()
        .filter_map(|i| by_row.get(i))
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

fn preview(indices: &[usize]) -> String {
    let shown: Vec<String> = indices.iter().take(8).map(ToString::to_string).collect();
    let more = if indices.len() > 8 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}

fn row(dataset: &Dataset, grouped: bool, name: &str, indices: &[usize]) -> String {
    let groups = if grouped {
        format!("{:>7}", groups_in(dataset, indices))
    } else {
        String::new()
    };
    format!(
        "{name:<6} {:>6}{groups}  {}",
        indices.len(),
        preview(indices)
    )
}

fn run_split(args: SplitArgs) -> anyhow::Result<ExitCode> {
    let sum = args.train + args.val + args.test;
    if (sum - 1.0).abs() > 1e-9
        || [args.train, args.val, args.test]
            .iter()
            .any(|f| !(0.0..=1.0).contains(f))
    {
        return user_error(format!(
            "--train + --val + --test = {sum}, not 1 (accepted: fractions in [0, 1] summing to 1)"
        ));
    }
    let dataset = match load(&args.csv) {
        Ok(d) => d,
        Err(e) => return user_error(e),
    };
    let items = split::items(&dataset.examples);
    let result = match split::holdout(&items, (args.train, args.val, args.test), args.csv.seed) {
        Ok(s) => s,
        Err(e) => return user_error(format!("{}: {e}", args.csv.csv.display())),
    };
    match args.csv.format {
        SplitFormat::Json => println!("{}", serde_json::to_string(&result)?),
        SplitFormat::Table => {
            println!("{}", describe(&args.csv, &dataset));
            let how = args.csv.group.as_ref().map_or_else(
                || "stratified by target length".to_owned(),
                |g| format!("grouped by {g}"),
            );
            println!(
                "split {}/{}/{} seed {} ({how})",
                args.train, args.val, args.test, args.csv.seed
            );
            let grouped = args.csv.group.is_some();
            println!(
                "part     rows{}  data-row indices",
                if grouped { " groups" } else { "" }
            );
            for (name, indices) in [
                ("train", &result.train),
                ("val", &result.val),
                ("test", &result.test),
            ] {
                println!("{}", row(&dataset, grouped, name, indices));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Folds<'a> {
    folds: &'a [split::Fold],
}

fn run_kfold(args: KfoldArgs) -> anyhow::Result<ExitCode> {
    if args.folds < 2 {
        return user_error(format!(
            "--folds {}: k-fold needs at least 2 folds",
            args.folds
        ));
    }
    let dataset = match load(&args.csv) {
        Ok(d) => d,
        Err(e) => return user_error(e),
    };
    let items = split::items(&dataset.examples);
    let folds = match split::kfold(&items, args.folds, args.val_fraction, args.csv.seed) {
        Ok(f) => f,
        Err(e) => return user_error(format!("{}: {e}", args.csv.csv.display())),
    };
    match args.csv.format {
        SplitFormat::Json => println!("{}", serde_json::to_string(&Folds { folds: &folds })?),
        SplitFormat::Table => {
            println!("{}", describe(&args.csv, &dataset));
            let how = args.csv.group.as_ref().map_or_else(
                || "stratified by target length".to_owned(),
                |g| format!("grouped by {g}"),
            );
            println!(
                "{}-fold, val {} of all rows, seed {} ({how})",
                args.folds, args.val_fraction, args.csv.seed
            );
            let grouped = args.csv.group.is_some();
            for fold in &folds {
                println!("fold {}:", fold.fold);
                for (name, indices) in [
                    ("train", &fold.train),
                    ("val", &fold.val),
                    ("test", &fold.test),
                ] {
                    println!("  {}", row(&dataset, grouped, name, indices));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! `loadtest`: plays a flash sale against a running flashsale and checks its invariants.
//! `loadtest sale --help` and `loadtest healthz --help` list the knobs; `loadtest/bench.sh`
//! runs the whole benchmark with its baselines.

use clap::{Args, Parser, Subcommand};
use loadtest::{
    create_campaign, play, settle, verify, wait_for_feed, Burst, Drive, Report, Service, Target,
};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Plays a flash sale against a running flashsale and verifies its invariants")]
struct Cli {
    /// The service.
    #[arg(
        long,
        env = "FS",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    #[arg(
        long,
        env = "FLASHSALE_ADMIN_TOKEN",
        default_value = "adm",
        global = true
    )]
    admin_token: String,
    #[arg(
        long,
        env = "FLASHSALE_STORE_TOKEN",
        default_value = "sto",
        global = true
    )]
    store_token: String,
    /// Write the report as JSON here.
    #[arg(long, global = true)]
    json: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A sale: create a campaign, burst, settle (confirm / cancel / expire), verify.
    Sale(SaleArgs),
    /// The HTTP floor: the same load against `GET /healthz`.
    Healthz(DriveArgs),
}

#[derive(Args, Clone)]
struct DriveArgs {
    /// Attempts in the burst.
    #[arg(long, default_value_t = 20_000)]
    attempts: u64,
    /// Closed loop: workers, each sending its next attempt when the last answered.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Open loop instead: attempts per second, latency measured from the scheduled send.
    #[arg(long)]
    rate: Option<u64>,
}

#[derive(Args)]
struct SaleArgs {
    #[command(flatten)]
    drive: DriveArgs,
    /// Campaign id (created unless --existing).
    #[arg(long, default_value = "loadtest")]
    campaign: String,
    #[arg(long, default_value_t = 1_000)]
    stock: u64,
    #[arg(long, default_value_t = 1)]
    limit: u64,
    /// Distinct users the attempts come from (round-robin).
    #[arg(long, default_value_t = 5_000)]
    users: u64,
    #[arg(long, default_value_t = 0.6)]
    confirm_share: f64,
    #[arg(long, default_value_t = 0.2)]
    cancel_share: f64,
    /// Holds left unpaid expire after this long; verification waits for it.
    #[arg(long, default_value_t = 3)]
    hold_seconds: u64,
    /// Use an existing campaign (its stock and limit must be given).
    #[arg(long)]
    existing: bool,
    /// Skip settling and verification (pure throughput runs).
    #[arg(long)]
    no_verify: bool,
}

fn drive(args: &DriveArgs) -> Drive {
    match args.rate {
        Some(rate) => Drive::Open {
            rate_per_second: rate,
            max_in_flight: args.concurrency.max(1),
        },
        None => Drive::Closed {
            concurrency: args.concurrency.max(1),
        },
    }
}

fn print_table(report: &Report) {
    println!("  attempts/s        {:>12.0}", report.attempts_per_second);
    println!("  seconds           {:>12.2}", report.seconds);
    for (outcome, n) in &report.outcomes {
        println!("  {outcome:<18}{n:>12}");
    }
    let l = &report.latency;
    println!(
        "  latency p50/p90/p99/p99.9  {} / {} / {} / {} µs (max {} µs)",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
    );
    if let Some(l) = &report.send_lag {
        println!(
            "  of which send lag  {} / {} / {} / {} µs (max {} µs): the generator's own lateness",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let service = Service::new(&cli.url, &cli.admin_token, &cli.store_token);
    let run_id = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    match cli.command {
        Command::Healthz(args) => {
            let burst = Burst {
                campaign: String::new(),
                attempts: args.attempts,
                users: 1,
                drive: drive(&args),
                target: Target::Healthz,
                run_id,
            };
            let report = play(&service, &burst).await?;
            println!("healthz");
            print_table(&report);
            if let Some(path) = cli.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
        }
        Command::Sale(args) => {
            if !args.existing {
                create_campaign(
                    &service,
                    &args.campaign,
                    args.stock,
                    args.limit,
                    args.hold_seconds,
                )
                .await?;
            }
            let burst = Burst {
                campaign: args.campaign.clone(),
                attempts: args.drive.attempts,
                users: args.users,
                drive: drive(&args.drive),
                target: Target::Reserve,
                run_id,
            };
            let report = play(&service, &burst).await?;
            println!(
                "sale {} (stock {}, limit {}, {} users)",
                args.campaign, args.stock, args.limit, args.users
            );
            print_table(&report);
            let mut output = serde_json::json!({ "report": report });
            let mut passed = true;
            if !args.no_verify {
                let settled = settle(
                    &service,
                    &report.winners,
                    args.confirm_share,
                    args.cancel_share,
                )
                .await?;
                // Unpaid holds expire, then the pipeline catches up.
                tokio::time::sleep(Duration::from_secs(args.hold_seconds + 2)).await;
                let expected = report.winners.len()
                    + settled.confirmed.len()
                    + settled.cancelled.len()
                    + settled.expiring.len();
                wait_for_feed(&service, expected, &args.campaign, Duration::from_secs(60)).await?;
                let verification = verify(
                    &service,
                    &args.campaign,
                    args.stock,
                    args.limit,
                    &report.winners,
                    &settled,
                )
                .await?;
                println!("verification");
                for (name, ok, saw) in &verification.checks {
                    println!("  {} {name}: {saw}", if *ok { "ok  " } else { "FAIL" });
                }
                passed = verification.passed();
                output["settled"] = serde_json::json!({"confirmed": settled.confirmed.len(), "cancelled": settled.cancelled.len(), "expired": settled.expiring.len()});
                output["verification"] = serde_json::to_value(&verification)?;
            }
            if let Some(path) = cli.json {
                std::fs::write(path, serde_json::to_string_pretty(&output)?)?;
            }
            if !passed {
                anyhow::bail!("the sale broke an invariant (see FAIL above)");
            }
        }
    }
    Ok(())
}

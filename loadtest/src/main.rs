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
    /// The service: http:// or https:// (rustls, the webpki roots).
    #[arg(
        long,
        env = "FLASHSALE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An admin token, to create the campaign (the service's FLASHSALE_ADMIN_TOKENS; the
    /// first of a comma-separated list is used).
    #[arg(
        long,
        env = "FLASHSALE_ADMIN_TOKENS",
        global = true,
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// A store token, to reserve and settle (FLASHSALE_STORE_TOKENS; the first is used).
    #[arg(
        long,
        alias = "token",
        env = "FLASHSALE_STORE_TOKENS",
        global = true,
        hide_env_values = true
    )]
    store_token: Option<String>,
    /// Write the report as JSON here (with a per-second `series`).
    #[arg(long, global = true)]
    json: Option<String>,
    /// Draw throughput and latency percentiles per second into this SVG file.
    #[arg(long, global = true)]
    chart: Option<String>,
    /// Fail (exit code 2) if the burst's p99 latency is above this many milliseconds.
    #[arg(long, global = true)]
    max_p99_ms: Option<f64>,
    /// Fail (exit code 2) if more than this share of attempts got a 5xx or no answer.
    #[arg(long, global = true)]
    max_error_ratio: Option<f64>,
    /// Fail (exit code 2) if the burst ran slower than this many attempts per second.
    #[arg(long, global = true)]
    min_rate: Option<f64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A sale: create a campaign, burst, settle (confirm / cancel / expire), verify.
    Sale(SaleArgs),
    /// The HTTP floor: the same load against `GET /healthz`.
    Healthz(DriveArgs),
    /// Waiting-room polls: `--users` join a queued campaign that admits one a second, then
    /// the load reads their tickets (`GET /v1/queue/<ticket>`), round robin — to compare
    /// with `healthz` under the same load.
    QueuePoll(QueuePollArgs),
}

#[derive(Args)]
struct QueuePollArgs {
    #[command(flatten)]
    drive: DriveArgs,
    #[arg(long, default_value = "loadtest-poll")]
    campaign: String,
    /// Tickets taken before the polls start (the polls go round robin over them).
    #[arg(long, default_value_t = 1_000)]
    users: u64,
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
    /// Open loop through stages instead (a ramp): `seconds:rate,…`, e.g. `5:500,10:2000,5:500`;
    /// the attempts are what the stages add up to.
    #[arg(long, value_parser = parse_stages)]
    stages: Option<Stages>,
}

/// `seconds:rate` stages, in order.
#[derive(Clone, Debug)]
struct Stages(Vec<(u64, u64)>);

fn parse_stages(raw: &str) -> Result<Stages, String> {
    raw.split(',')
        .map(|stage| {
            let (seconds, rate) = stage
                .trim()
                .trim_end_matches('/')
                .split_once(':')
                .ok_or_else(|| format!("{stage:?} is not seconds:rate"))?;
            let seconds = seconds.trim().trim_end_matches('s');
            match (seconds.parse(), rate.trim().parse()) {
                (Ok(s), Ok(r)) if s > 0 && r > 0 => Ok((s, r)),
                _ => Err(format!("{stage:?} is not seconds:rate with both above 0")),
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Stages)
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
    /// Holds left unpaid expire after this long; verification waits for it. A run that
    /// outlasts it sees holds expire mid-run and their units sold again: counted, not a
    /// failure.
    #[arg(long, default_value_t = 3)]
    hold_seconds: u64,
    /// Use an existing campaign (its stock and limit must be given).
    #[arg(long)]
    existing: bool,
    /// Skip settling and verification (pure throughput runs).
    #[arg(long)]
    no_verify: bool,
    /// `flash` (reservations), `group` (group buy: open a group, the next join it),
    /// `mixed` (both at once, the group buy on `<campaign>-group`) or `queue` (a waiting
    /// room: join, poll with backoff, reserve with the pass).
    #[arg(long, value_enum, default_value_t = Scenario::Flash)]
    scenario: Scenario,
    /// Group buys: members per group.
    #[arg(long, default_value_t = 3)]
    group_size: u64,
    /// Waiting room (`--scenario queue`): users admitted per second.
    #[arg(long, default_value_t = 1_000)]
    admit_per_second: u64,
    /// Waiting room: the sale starts this many seconds after the campaign is made (joins
    /// before it are ordered by the draw); 0 starts it at once.
    #[arg(long, default_value_t = 0)]
    starts_in: u64,
    /// Waiting room: a user still waiting this long after the joins gives up.
    #[arg(long, default_value_t = 300)]
    give_up_seconds: u64,
    /// Act as the users themselves: each attempt carries its user's HS256 JWT signed with
    /// this secret (the service's FLASHSALE_JWT_SECRET) instead of the store token.
    #[arg(long, env = "FLASHSALE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, clap::ValueEnum)]
enum Scenario {
    Flash,
    Group,
    Mixed,
    /// A waiting room: the burst is joins, then every user polls with backoff and
    /// reserves with its pass once admitted.
    Queue,
}

fn drive(args: &DriveArgs) -> Drive {
    if let Some(stages) = &args.stages {
        return Drive::Stages {
            stages: Box::leak(stages.0.clone().into_boxed_slice()),
            max_in_flight: args.concurrency.max(1),
        };
    }
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

/// The attempts a burst makes: what the stages add up to, or `--attempts`.
fn attempts(args: &DriveArgs) -> u64 {
    args.stages
        .as_ref()
        .map_or(args.attempts, |s| Drive::staged_attempts(&s.0))
}

/// The first of a comma-separated token list.
fn first(tokens: &Option<String>) -> String {
    tokens
        .as_deref()
        .and_then(|t| t.split(',').map(str::trim).find(|t| !t.is_empty()))
        .unwrap_or_default()
        .to_owned()
}

/// The chart and the thresholds, after a burst: `false` if a threshold failed.
fn judge(cli: &Cli, report: &Report, title: &str) -> anyhow::Result<bool> {
    if let Some(path) = &cli.chart {
        loadtest::chart::render(&report.chart, title, std::path::Path::new(path))?;
        println!("  chart             {path}");
    }
    let p99_ms = report.latency.p99_us as f64 / 1000.0;
    let mut failed = Vec::new();
    if let Some(max) = cli.max_p99_ms.filter(|max| p99_ms > *max) {
        failed.push(format!("p99 {p99_ms:.2} ms > {max} ms"));
    }
    if let Some(max) = cli.max_error_ratio.filter(|max| report.error_ratio > *max) {
        failed.push(format!("error ratio {:.4} > {max}", report.error_ratio));
    }
    if let Some(min) = cli.min_rate.filter(|min| report.attempts_per_second < *min) {
        failed.push(format!(
            "{:.0} attempts/s < {min}",
            report.attempts_per_second
        ));
    }
    for failure in &failed {
        println!("  THRESHOLD FAILED  {failure}");
    }
    Ok(failed.is_empty())
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

/// Exit codes: an invariant broken (the service is wrong), a threshold missed (it is slow or
/// erring), the run could not be made (setup: the service unreachable, a refused campaign…).
const EXIT_INVARIANT: i32 = 1;
const EXIT_THRESHOLD: i32 = 2;
const EXIT_SETUP: i32 = 3;

#[tokio::main]
async fn main() {
    if let Err(error) = run().await {
        eprintln!("loadtest: the run could not be made: {error:#}");
        std::process::exit(EXIT_SETUP);
    }
}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let service = Service::new(&cli.url, &first(&cli.admin_token), &first(&cli.store_token));
    if matches!(cli.command, Command::Sale(_) | Command::QueuePoll(_))
        && (first(&cli.store_token).is_empty() || first(&cli.admin_token).is_empty())
    {
        anyhow::bail!("a sale needs --admin-token and --store-token (or FLASHSALE_ADMIN_TOKENS and FLASHSALE_STORE_TOKENS)");
    }
    let run_id = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    match &cli.command {
        Command::Healthz(args) => {
            let burst = Burst {
                campaign: String::new(),
                attempts: attempts(args),
                users: 1,
                drive: drive(args),
                target: Target::Healthz,
                run_id,
                tickets: Default::default(),
            };
            let report = play(&service, &burst).await?;
            println!("healthz");
            print_table(&report);
            if let Some(path) = &cli.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
            if !judge(&cli, &report, "GET /healthz")? {
                std::process::exit(EXIT_THRESHOLD);
            }
        }
        Command::QueuePoll(args) => {
            if first(&cli.store_token).is_empty() || first(&cli.admin_token).is_empty() {
                anyhow::bail!("queue-poll needs --admin-token and --store-token");
            }
            loadtest::create_queued_campaign(&service, &args.campaign, 1_000_000, 1, 900, 1, None)
                .await?;
            let joins = Burst {
                campaign: args.campaign.clone(),
                attempts: args.users,
                users: args.users,
                drive: Drive::Closed { concurrency: 32 },
                target: Target::Join,
                run_id: run_id.clone(),
                tickets: Default::default(),
            };
            let joined = play(&service, &joins).await?;
            let tickets: Vec<String> = joined.winners.into_iter().map(|(_, t)| t).collect();
            if tickets.is_empty() {
                anyhow::bail!("no ticket was taken: {:?}", joined.outcomes);
            }
            let burst = Burst {
                campaign: args.campaign.clone(),
                attempts: attempts(&args.drive),
                users: 1,
                drive: drive(&args.drive),
                target: Target::Poll,
                run_id,
                tickets: std::sync::Arc::new(tickets),
            };
            let report = play(&service, &burst).await?;
            println!("queue-poll ({} tickets)", burst.tickets.len());
            print_table(&report);
            if let Some(path) = &cli.json {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
            if !judge(&cli, &report, "GET /v1/queue/{ticket}")? {
                std::process::exit(EXIT_THRESHOLD);
            }
        }
        Command::Sale(args) => {
            let service = match &args.jwt_secret {
                Some(secret) => service.clone().as_users(secret),
                None => service.clone(),
            };
            if !args.existing {
                if args.scenario == Scenario::Queue {
                    let starts_at = (args.starts_in > 0).then(|| {
                        let at = std::time::SystemTime::now() + Duration::from_secs(args.starts_in);
                        rfc3339(at)
                    });
                    loadtest::create_queued_campaign(
                        &service,
                        &args.campaign,
                        args.stock,
                        args.limit,
                        args.hold_seconds,
                        args.admit_per_second,
                        starts_at,
                    )
                    .await?;
                } else if args.scenario == Scenario::Group {
                    loadtest::create_group_campaign(
                        &service,
                        &args.campaign,
                        args.stock,
                        args.limit,
                        args.group_size,
                        args.hold_seconds,
                    )
                    .await?;
                } else {
                    create_campaign(
                        &service,
                        &args.campaign,
                        args.stock,
                        args.limit,
                        args.hold_seconds,
                    )
                    .await?;
                }
                if args.scenario == Scenario::Mixed {
                    loadtest::create_group_campaign(
                        &service,
                        &format!("{}-group", args.campaign),
                        args.stock,
                        args.limit,
                        args.group_size,
                        args.hold_seconds,
                    )
                    .await?;
                }
            }
            let burst = Burst {
                campaign: args.campaign.clone(),
                attempts: attempts(&args.drive),
                users: args.users,
                drive: drive(&args.drive),
                target: match args.scenario {
                    Scenario::Flash => Target::Reserve,
                    Scenario::Group => Target::Group {
                        size: args.group_size,
                    },
                    Scenario::Mixed => Target::Mixed {
                        size: args.group_size,
                    },
                    Scenario::Queue => Target::Join,
                },
                run_id: run_id.clone(),
                tickets: Default::default(),
            };
            let report = play(&service, &burst).await?;
            println!(
                "sale {} (stock {}, limit {}, {} users)",
                args.campaign, args.stock, args.limit, args.users
            );
            print_table(&report);
            let mut output = serde_json::json!({ "report": report });
            let mut passed = true;
            if args.scenario == Scenario::Queue {
                let mut tickets: Vec<(String, String)> = report.winners.clone();
                tickets.sort();
                tickets.dedup_by(|a, b| a.0 == b.0);
                println!("through the line ({} users with a ticket)", tickets.len());
                let flow = loadtest::queue::through_the_line(
                    &service,
                    &args.campaign,
                    tickets.clone(),
                    &run_id,
                    args.drive.concurrency,
                    Duration::from_secs(args.give_up_seconds),
                )
                .await?;
                println!("  seconds           {:>12.2}", flow.seconds);
                println!("  polls             {:>12}", flow.polls);
                println!(
                    "  polls per user    {:>12.1}",
                    flow.polls as f64 / flow.users.max(1) as f64
                );
                for (outcome, n) in &flow.outcomes {
                    println!("  {outcome:<18}{n:>12}");
                }
                println!("  last reserved at  {:>11.2}s", flow.last_reserved_at);
                println!("  reserved/s        {:?}", flow.reserved_per_second);
                let reserved = flow.outcomes.get("reserved").copied().unwrap_or(0);
                let expected = args.stock.min(tickets.len() as u64);
                let checks = [
                    (
                        "every join answered without a 5xx".to_owned(),
                        report.error_ratio == 0.0,
                        format!("{:.4}", report.error_ratio),
                    ),
                    (
                        "no 5xx while polling and reserving".to_owned(),
                        flow.errors == 0,
                        flow.errors.to_string(),
                    ),
                    (
                        "every unit went to an admitted user with a pass, none beyond".to_owned(),
                        reserved == expected,
                        format!("{reserved} reserved, {expected} expected"),
                    ),
                    loadtest::units_add_up(&service, &args.campaign).await?,
                ];
                if !args.no_verify {
                    println!("verification");
                    for (name, ok, saw) in &checks {
                        println!("  {} {name}: {saw}", if *ok { "ok  " } else { "FAIL" });
                        passed &= ok;
                    }
                }
                output["line"] = serde_json::to_value(&flow)?;
            } else if !args.no_verify && args.scenario != Scenario::Flash {
                // Group buys: conservation on every campaign of the run, and no server error.
                let mut campaigns = vec![args.campaign.clone()];
                if args.scenario == Scenario::Mixed {
                    campaigns.push(format!("{}-group", args.campaign));
                }
                println!("verification");
                for campaign in &campaigns {
                    let (name, ok, saw) = loadtest::units_add_up(&service, campaign).await?;
                    println!("  {} {name}: {saw}", if ok { "ok  " } else { "FAIL" });
                    passed &= ok;
                }
                let errors = report.error_ratio == 0.0;
                println!(
                    "  {} no 5xx and no transport error: {:.4}",
                    if errors { "ok  " } else { "FAIL" },
                    report.error_ratio
                );
                passed &= errors;
            } else if !args.no_verify {
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
                    + settled.expiring.len()
                    + settled.expired_early.len();
                if !settled.expired_early.is_empty() {
                    println!(
                        "  {} holds expired during the run (it outlasted --hold-seconds {}): their units sold again",
                        settled.expired_early.len(),
                        args.hold_seconds
                    );
                }
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
                output["settled"] = serde_json::json!({"confirmed": settled.confirmed.len(), "cancelled": settled.cancelled.len(), "expired": settled.expiring.len(), "expired_during_the_run": settled.expired_early.len()});
                output["verification"] = serde_json::to_value(&verification)?;
            }
            if let Some(path) = &cli.json {
                std::fs::write(path, serde_json::to_string_pretty(&output)?)?;
            }
            let title = format!("sale {} ({} users)", args.campaign, args.users);
            let thresholds_met = judge(&cli, &report, &title)?;
            if !passed {
                eprintln!("loadtest: the sale broke an invariant (see FAIL above)");
                std::process::exit(EXIT_INVARIANT);
            }
            if !thresholds_met {
                std::process::exit(EXIT_THRESHOLD);
            }
        }
    }
    Ok(())
}

/// RFC 3339 UTC.
fn rfc3339(at: std::time::SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

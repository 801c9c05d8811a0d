//! The `flashsale` binary: telemetry, config, then the application until Ctrl-C or SIGTERM.

use clap::Parser;
use flashsale::commands;
use flashsale::config::{Command, Config};
use flashsale::startup::Application;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc's allocator: on the reserve path glibc's malloc, free and
/// consolidation took ~29 % of the service's CPU (perf, 64 callers); per-thread free lists
/// make those near free.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if config.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        // Colour only for a person at a terminal, never into a file or a pipe.
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .init();
    }
    match config.command.clone() {
        Some(Command::Persist) => return commands::run_persister_only(config).await,
        Some(Command::Reconcile) => {
            let clean = commands::reconcile_once(config).await?;
            std::process::exit(if clean { 0 } else { 1 });
        }
        Some(Command::DeadEvents { retry }) => {
            let clean = commands::dead_events(config, retry).await?;
            std::process::exit(if clean { 0 } else { 1 });
        }
        Some(Command::Campaign { action }) => {
            let code = flashsale::cli::campaign(config.api_target()?, action).await?;
            std::process::exit(code);
        }
        Some(Command::Reservation { action }) => {
            let code = flashsale::cli::reservation(config.api_target()?, action).await?;
            std::process::exit(code);
        }
        Some(Command::Serve) | None => {}
    }
    let application = Application::build(config.clone()).await?;
    print_banner(&application, &config);
    application.run_until_stopped().await
}

/// Says where the service is and, when it made its own credentials, what they are.
fn print_banner(application: &Application, config: &Config) {
    let address = application.address();
    let engine = if !config.redis_cluster_nodes.is_empty() {
        "redis cluster"
    } else if !config.redis_sentinels.is_empty() {
        "redis (sentinel)"
    } else if config.redis_url.is_some() {
        "redis"
    } else {
        "in-memory"
    };
    if config.log_json {
        // JSON logs are JSON only: the banner is one event, generated credentials as fields.
        let credentials = application.credentials();
        let generated = credentials.generated_tokens;
        tracing::info!(
            listening = %format!("http://{address}"),
            engine,
            admin_token = generated.then(|| credentials.admin_tokens[0].as_str()),
            store_token = generated.then(|| credentials.store_tokens[0].as_str()),
            demo_user_token = credentials
                .generated_jwt_secret
                .then(|| application.user_token("demo-user")),
            "flashsale listening"
        );
        return;
    }
    println!("flashsale listening on http://{address} (stock engine: {engine})");
    let credentials = application.credentials();
    if credentials.generated_tokens {
        let admin = &credentials.admin_tokens[0];
        println!("no service tokens configured; generated for this run:");
        println!("  FLASHSALE_ADMIN_TOKENS={admin}");
        println!("  FLASHSALE_STORE_TOKENS={}", credentials.store_tokens[0]);
        println!("try:");
        println!(
            "  curl -s -H 'Authorization: Bearer {admin}' -H 'Content-Type: application/json' \\\n    -d '{{\"id\":\"demo\",\"kind\":\"flash_sale\",\"sku\":\"sku-1\",\"stock\":100}}' http://{address}/v1/campaigns"
        );
        println!("or the whole walk-through from the README:");
        println!(
            "  FS=http://{address} FLASHSALE_ADMIN_TOKENS={admin} FLASHSALE_STORE_TOKENS={} docs/walkthrough.sh",
            credentials.store_tokens[0]
        );
    }
    if credentials.generated_jwt_secret {
        println!("no FLASHSALE_JWT_SECRET configured; generated one. A user token for user `demo-user` (24 h):");
        println!("  {}", application.user_token("demo-user"));
    }
}

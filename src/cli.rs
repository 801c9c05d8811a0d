//! `flashsale campaign …` and `flashsale reservation …`: the admin and store API from a
//! terminal. Each command is one HTTP call to a running service (`--url`, `--token`; see
//! `Config::api_target`); it prints the JSON answer, or the problem's title and detail on
//! stderr and exits 1.

use crate::config::{ApiTarget, CampaignAction, ReservationAction};
use serde_json::{json, Value};

/// Runs one command; the process's exit code.
pub async fn campaign(api: ApiTarget, action: CampaignAction) -> anyhow::Result<i32> {
    let client = Client::new(api);
    match action {
        CampaignAction::Create {
            id,
            kind,
            sku,
            stock,
            per_user_limit,
            hold_seconds,
            max_extend_seconds,
            starts_at,
            ends_at,
            group_size,
            group_window_seconds,
            queue_admit_per_second,
            queue_pass_seconds,
        } => {
            let mut body = json!({"kind": kind, "sku": sku, "stock": stock});
            let fields = [
                ("id", id.map(Value::from)),
                ("per_user_limit", per_user_limit.map(Value::from)),
                ("hold_seconds", hold_seconds.map(Value::from)),
                ("max_extend_seconds", max_extend_seconds.map(Value::from)),
                ("starts_at", starts_at.map(Value::from)),
                ("ends_at", ends_at.map(Value::from)),
            ];
            for (name, value) in fields {
                if let Some(value) = value {
                    body[name] = value;
                }
            }
            if let (Some(size), Some(window)) = (group_size, group_window_seconds) {
                body["group"] = json!({"size": size, "window_seconds": window});
            }
            if let Some(rate) = queue_admit_per_second {
                body["queue"] = json!({"admit_per_second": rate});
                if let Some(pass) = queue_pass_seconds {
                    body["queue"]["pass_seconds"] = json!(pass);
                }
            }
            client
                .send(reqwest::Method::POST, "/v1/campaigns", Some(body), None)
                .await
        }
        CampaignAction::List {
            status,
            after,
            limit,
        } => {
            let query = query(&[
                ("status", status),
                ("after", after),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            client
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/campaigns{query}"),
                    None,
                    None,
                )
                .await
        }
        CampaignAction::Show { id } => {
            client
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/campaigns/{id}"),
                    None,
                    None,
                )
                .await
        }
        CampaignAction::Stock { id, delta, key } => {
            let key = key.unwrap_or_else(|| format!("cli-{}", ulid::Ulid::new()));
            client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/campaigns/{id}/stock"),
                    Some(json!({"delta": delta})),
                    Some(&key),
                )
                .await
        }
        CampaignAction::End { id } => {
            client
                .send(
                    reqwest::Method::POST,
                    &format!("/v1/campaigns/{id}/end"),
                    None,
                    None,
                )
                .await
        }
    }
}

pub async fn reservation(api: ApiTarget, action: ReservationAction) -> anyhow::Result<i32> {
    let client = Client::new(api);
    let (method, path) = match action {
        ReservationAction::Show { id } => (reqwest::Method::GET, format!("/v1/reservations/{id}")),
        ReservationAction::Confirm { id } => (
            reqwest::Method::POST,
            format!("/v1/reservations/{id}/confirm"),
        ),
        ReservationAction::Cancel { id } => (
            reqwest::Method::POST,
            format!("/v1/reservations/{id}/cancel"),
        ),
        ReservationAction::List {
            campaign,
            status,
            user_id,
            after,
            limit,
        } => {
            let query = query(&[
                ("status", status),
                ("user_id", user_id),
                ("after", after),
                ("limit", limit.map(|l| l.to_string())),
            ]);
            (
                reqwest::Method::GET,
                format!("/v1/campaigns/{campaign}/reservations{query}"),
            )
        }
    };
    client.send(method, &path, None, None).await
}

/// What went wrong with a request that got no answer, in words: "connection refused (is the
/// service running there?)", "timed out after 30 s", or the innermost cause.
fn in_words(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out after 30 s".to_owned();
    }
    let mut cause: &dyn std::error::Error = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    if let Some(io) = cause.downcast_ref::<std::io::Error>() {
        if io.kind() == std::io::ErrorKind::ConnectionRefused {
            return "connection refused (is the service running there?)".to_owned();
        }
    }
    if error.is_connect() {
        return format!("could not connect: {cause}");
    }
    cause.to_string()
}

/// `?a=1&b=2` of the given pairs (empty without any).
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<(&str, &str)> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (*k, v)))
        .collect();
    if set.is_empty() {
        return String::new();
    }
    let encoded = set
        .iter()
        .map(|(k, v)| {
            let v: String = url_escape(v);
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("?{encoded}")
}

/// Percent-encodes what is not unreserved in a query value.
fn url_escape(raw: &str) -> String {
    reqwest::Url::parse_with_params("http://x/", &[("v", raw)])
        .ok()
        .and_then(|u| u.query().map(|q| q.trim_start_matches("v=").to_owned()))
        .unwrap_or_default()
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(api: ApiTarget) -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            base: api.url.trim_end_matches('/').to_owned(),
            token: api.token,
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> anyhow::Result<i32> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}: {}", self.base, in_words(&e)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(0)
        } else {
            eprintln!(
                "{} {}: {}",
                status.as_u16(),
                answer["code"].as_str().unwrap_or("error"),
                answer["detail"]
                    .as_str()
                    .or(answer["title"].as_str())
                    .unwrap_or_default()
            );
            Ok(1)
        }
    }
}

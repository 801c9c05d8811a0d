//! Who is calling: service tokens with a scope, or user JWTs (HS256) acting for their `sub`.

use super::error::ApiError;
use super::AppState;
use crate::domain::UserId;
use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// What a service token may do. `Admin` implies `Store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Admin,
    Store,
}

/// The verifier for every kind of token.
pub struct Auth {
    /// Service tokens by the SHA-256 of the token: looking up a digest leaks nothing useful
    /// through timing, unlike comparing the secret itself.
    service_tokens: HashMap<[u8; 32], ServiceToken>,
    jwt_key: DecodingKey,
    jwt_validation: Validation,
}

#[derive(Debug, Clone)]
struct ServiceToken {
    scope: Scope,
    /// A stable, non-secret name for the token (a digest prefix): scopes idempotency keys.
    name: String,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub enum Caller {
    Service { scope: Scope, name: String },
    User(UserId),
}

/// The claims a user token must carry; `exp` is required by the validation.
#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
}

impl Auth {
    pub fn new(admin_tokens: &[String], store_tokens: &[String], jwt_secret: &str) -> Self {
        let mut service_tokens = HashMap::new();
        let scoped = store_tokens
            .iter()
            .map(|t| (t, Scope::Store))
            .chain(admin_tokens.iter().map(|t| (t, Scope::Admin)));
        for (token, scope) in scoped {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            let name = hex::encode(&digest[..6]);
            service_tokens.insert(digest, ServiceToken { scope, name });
        }
        let mut jwt_validation = Validation::new(Algorithm::HS256);
        jwt_validation.set_required_spec_claims(&["exp", "sub"]);
        // A token is not valid before its `nbf` either (when it carries one).
        jwt_validation.validate_nbf = true;
        Auth {
            service_tokens,
            jwt_key: DecodingKey::from_secret(jwt_secret.as_bytes()),
            jwt_validation,
        }
    }

    /// Verifies a bearer token.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(service) = self.service_tokens.get(&digest) {
            return Ok(Caller::Service {
                scope: service.scope,
                name: service.name.clone(),
            });
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.jwt_key, &self.jwt_validation)
            .map_err(|e| ApiError::Unauthenticated(token_problem(e.kind())))?;
        let user = UserId::parse(&data.claims.sub).map_err(|e| {
            ApiError::Unauthenticated(format!("the token's sub is not a user id: {e}"))
        })?;
        Ok(Caller::User(user))
    }
}

impl Caller {
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Service {
                scope: Scope::Admin,
                ..
            } => Ok(()),
            _ => Err(ApiError::Forbidden("this needs an admin token".into())),
        }
    }

    pub fn require_store(&self) -> Result<(), ApiError> {
        match self {
            Caller::Service { .. } => Ok(()),
            Caller::User(_) => Err(ApiError::Forbidden("this needs a store token".into())),
        }
    }

    /// Store tokens act for anyone; a user token only for its own `sub`.
    pub fn may_act_for(&self, user: &UserId) -> Result<(), ApiError> {
        match self {
            Caller::Service { .. } => Ok(()),
            Caller::User(me) if me == user => Ok(()),
            Caller::User(_) => Err(ApiError::Forbidden(
                "a user token acts only for its own user".into(),
            )),
        }
    }

    /// The prefix that makes an idempotency key this caller's own.
    pub fn idempotency_scope(&self) -> String {
        match self {
            Caller::Service { name, .. } => format!("s/{name}"),
            Caller::User(user) => format!("u/{user}"),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            ApiError::Unauthenticated("an Authorization: Bearer token is required".into())
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "the Authorization header must be `Bearer <token>`".into(),
                )
            })?;
        state.auth.verify(token)
    }
}

/// Issues a user token: for the start-up banner and for tests (the main store issues real ones).
/// Why a user token was refused, in words a caller can act on.
fn token_problem(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "the user token has expired (its exp is past)".into(),
        K::ImmatureSignature => "the user token is not valid yet (its nbf is in the future)".into(),
        K::InvalidSignature => {
            "the token is neither a service token of this service nor a user token signed \
             with its FLASHSALE_JWT_SECRET"
                .into()
        }
        K::MissingRequiredClaim(claim) => format!("the user token has no `{claim}` claim"),
        K::InvalidAlgorithm => "user tokens must be signed with HS256".into(),
        _ => "the token is neither a service token of this service nor a valid user token (a \
              JWT signed with FLASHSALE_JWT_SECRET)"
            .into(),
    }
}

pub fn issue_user_token(secret: &str, user: &str, valid_seconds: u64) -> String {
    #[derive(serde::Serialize)]
    struct Issued<'a> {
        sub: &'a str,
        exp: u64,
    }
    let exp = jsonwebtoken::get_current_timestamp() + valid_seconds;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &Issued { sub: user, exp },
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

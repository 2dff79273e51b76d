//! `/v1/provider-keys`: a tenant brings its own key for a provider (scope `provider_keys:write`).
//! The key is stored sealed and never sent back: answers name the provider, the fallback rule and
//! times only.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::{caller, tenant_of, ApiError, ApiState};
use crate::tenants::keys::Scope;
use crate::tenants::provider_keys::{self, ProviderKeyView};
use crate::tenants::TenantError;

/// A key to store.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderKeyBody {
    /// The provider's API key (8 to 4096 characters); never returned.
    key: String,
    /// When the provider refuses the key, call with the operator's key instead (default false).
    #[serde(default)]
    allow_fallback: bool,
}

fn known_provider(state: &ApiState, provider: &str) -> Result<(), ApiError> {
    if state.providers.iter().any(|p| p == provider) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "no provider `{provider}`: one of {}",
            state.providers.join(", ")
        )))
    }
}

fn refused(e: TenantError) -> ApiError {
    match e {
        TenantError::Invalid(m) => ApiError::BadRequest(m),
        TenantError::Unknown(_) => ApiError::Unauthorized("unknown API key"),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Stores (or replaces) the tenant's key for a provider; its calls to it then use the key.
#[utoipa::path(
    put,
    path = "/v1/provider-keys/{provider}",
    tag = "provider keys",
    params(("provider" = String, Path, description = "A provider of the catalog")),
    request_body = ProviderKeyBody,
    responses(
        (status = 200, description = "Stored (sealed); the key is not echoed", body = ProviderKeyView),
        (status = 404, description = "No such provider", body = super::error::ErrorBody),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn set(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(provider): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ProviderKeyView>, ApiError> {
    let caller = caller(&state, &headers, Scope::ProviderKeysWrite).await?;
    let tenant = tenant_of(&state, &caller).await?;
    known_provider(&state, &provider)?;
    // The body is never echoed in an error either: a parse failure names the field, not the text.
    let body: ProviderKeyBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::BadRequest(format!(
            "body must be {{\"key\": string, \"allow_fallback\": bool}} (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let key = crate::secret::Secret::new(body.key);
    let actor = caller.actor();
    let target = (tenant.id.as_str(), provider.as_str());
    provider_keys::set(
        &state.pool,
        &state.keyring,
        &actor,
        target,
        &key,
        body.allow_fallback,
    )
    .await
    .map(Json)
    .map_err(refused)
}

/// Removes the tenant's key for a provider; its calls go back to the operator's key.
#[utoipa::path(
    delete,
    path = "/v1/provider-keys/{provider}",
    tag = "provider keys",
    params(("provider" = String, Path, description = "A provider of the catalog")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "The tenant has no key for this provider", body = super::error::ErrorBody),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn delete(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(provider): Path<String>,
) -> Result<StatusCode, ApiError> {
    let caller = caller(&state, &headers, Scope::ProviderKeysWrite).await?;
    let tenant = tenant_of(&state, &caller).await?;
    let gone = provider_keys::delete(&state.pool, &caller.actor(), &tenant.id, &provider)
        .await
        .map_err(refused)?;
    match gone {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::NotFound(format!("no key for `{provider}`"))),
    }
}

/// The providers the tenant brought keys for (never the keys).
#[utoipa::path(
    get,
    path = "/v1/provider-keys",
    tag = "provider keys",
    responses(
        (status = 200, description = "One entry per provider", body = Vec<ProviderKeyView>),
        super::error::Refusals,
    ),
    security(("api_key" = []))
)]
pub(crate) async fn list(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ProviderKeyView>>, ApiError> {
    let caller = caller(&state, &headers, Scope::ProviderKeysWrite).await?;
    let tenant = tenant_of(&state, &caller).await?;
    Ok(Json(provider_keys::list(&state.pool, &tenant.id).await?))
}

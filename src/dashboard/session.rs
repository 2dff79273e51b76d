//! Signing in to the dashboard: a key (a tenant's API key or the operator key) is exchanged once
//! for a random session token held in an HttpOnly cookie; only the token's hash is stored, with
//! the scope it grants and when it expires.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;

use super::{html_response, internal, page, svg::escape, Scope};
use crate::api::ApiState;

pub(crate) const COOKIE: &str = "ragq_dashboard";
/// How long a browser stays signed in.
const SESSION_HOURS: i32 = 8;

/// The scope the request may see: from an `Authorization: Bearer` key, else from its session
/// cookie; none when it has neither (or they are unknown, revoked or expired).
pub(super) async fn scope_of(
    state: &ApiState,
    headers: &HeaderMap,
) -> Result<Option<Scope>, sqlx::Error> {
    if let Some(key) = crate::api::bearer(headers) {
        return Ok(signed_in_as(state, key).await?.map(|(scope, _)| scope));
    }
    let Some(token) = cookie(headers, COOKIE) else {
        return Ok(None);
    };
    // A session lasts as long as the key it was opened with.
    let row: Option<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT s.tenant_id, t.name FROM dashboard_sessions s \
         LEFT JOIN tenants t ON t.id = s.tenant_id \
         LEFT JOIN api_keys k ON k.id = s.key_id \
         WHERE s.token_hash = $1 AND s.expires_at > now() \
           AND (s.key_id IS NULL OR (k.revoked_at IS NULL AND coalesce(k.expires_at > now(), true)))",
    )
    .bind(hash(token))
    .fetch_optional(&state.pool)
    .await?;
    Ok(row.map(|(tenant, name)| match tenant {
        None => Scope::Operator,
        Some(id) => Scope::Tenant {
            name: name.unwrap_or_else(|| id.clone()),
            id,
        },
    }))
}

/// The view a key opens and the key's id (none for the environment's operator key): a tenant's
/// key needs `spend:read`, an operator key sees every tenant.
async fn signed_in_as(
    state: &ApiState,
    key: &str,
) -> Result<Option<(Scope, Option<String>)>, sqlx::Error> {
    if key.is_empty() {
        return Ok(None);
    }
    if state.operator_key_hash.as_deref() == Some(hash(key).as_slice()) {
        return Ok(Some((Scope::Operator, None)));
    }
    let Ok(caller) = crate::tenants::keys::authenticate(&state.pool, key).await? else {
        return Ok(None);
    };
    if !caller.may(crate::tenants::keys::Scope::SpendRead) {
        return Ok(None);
    }
    let Some(tenant) = caller.tenant else {
        return Ok(Some((Scope::Operator, Some(caller.key_id))));
    };
    let name: Option<(String,)> = sqlx::query_as("SELECT name FROM tenants WHERE id = $1")
        .bind(&tenant)
        .fetch_optional(&state.pool)
        .await?;
    let scope = Scope::Tenant {
        name: name.map_or_else(|| tenant.clone(), |n| n.0),
        id: tenant,
    };
    Ok(Some((scope, Some(caller.key_id))))
}

/// SHA-256, as API keys are stored: the same digest serves keys and session tokens.
fn hash(value: &str) -> Vec<u8> {
    crate::tenants::hash_api_key(value)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v)
}

/// The sign-in form, with what went wrong if anything did.
pub(super) fn login_page(status: StatusCode, problem: Option<&str>) -> Response {
    let problem = problem
        .map(|p| format!("<p class=\"problem\" role=\"alert\">{}</p>", escape(p)))
        .unwrap_or_default();
    let body = format!(
        "<main class=\"login\"><h1>ragq dashboard</h1>{problem}\
         <form method=\"post\" action=\"/dashboard/login\">\
         <label for=\"key\">API key (your tenant's) or operator key</label>\
         <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Sign in</button></form></main>"
    );
    html_response(status, page::document("Sign in · ragq dashboard", &body))
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct LoginForm {
    /// A tenant's API key or the operator key.
    key: String,
}

/// Signs a browser in: a session cookie for the key's view.
#[utoipa::path(
    post,
    path = "/dashboard/login",
    tag = "operations",
    request_body(content = LoginForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: to the dashboard, with the session cookie"),
        (status = 400, description = "Not the sign-in form: the form again", content_type = "text/html"),
        (status = 401, description = "Unknown key: the form again", content_type = "text/html"),
        (status = 403, description = "Posted from another origin", content_type = "text/html"),
        (status = 503, description = "The database is away", content_type = "text/html"),
    )
)]
pub(crate) async fn login(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return login_page(
            StatusCode::FORBIDDEN,
            Some("sign-in must come from this dashboard's own page"),
        );
    }
    // A post that is not the form (another content type, no key) gets the form back.
    let Ok(Form(form)) = form else {
        return login_page(StatusCode::BAD_REQUEST, Some("enter a key"));
    };
    let (scope, key_id) = match signed_in_as(&state, form.key.trim()).await {
        Ok(Some(signed_in)) => signed_in,
        Ok(None) => {
            let problem = "unknown, revoked or expired key, or one without spend:read";
            return login_page(StatusCode::UNAUTHORIZED, Some(problem));
        }
        Err(e) => return internal(&e),
    };
    let token = crate::tenants::random_token("dsh_");
    let stored = sqlx::query(
        "INSERT INTO dashboard_sessions (token_hash, tenant_id, key_id, expires_at) \
         VALUES ($1, $2, $3, now() + make_interval(hours => $4))",
    )
    .bind(hash(&token))
    .bind(scope.tenant())
    .bind(key_id)
    .bind(SESSION_HOURS)
    .execute(&state.pool)
    .await;
    if let Err(e) = stored {
        return internal(&e);
    }
    let secure = if state.dashboard_cookie_secure {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={token}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/dashboard".to_string()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

/// Ends the session: its row is deleted and the cookie cleared.
#[utoipa::path(
    post,
    path = "/dashboard/logout",
    tag = "operations",
    responses(
        (status = 303, description = "Signed out: to the sign-in form"),
        (status = 503, description = "The database is away", content_type = "text/html"),
    ),
    security((), ("dashboard_session" = []))
)]
pub(crate) async fn logout(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Some(token) = cookie(&headers, COOKIE) {
        let deleted = sqlx::query("DELETE FROM dashboard_sessions WHERE token_hash = $1")
            .bind(hash(token))
            .execute(&state.pool)
            .await;
        if let Err(e) = deleted {
            return internal(&e);
        }
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/dashboard".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

/// A form post from another site would sign the browser in to someone else's key (login CSRF):
/// when the browser names the origin, it must be this host.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin
        .split_once("://")
        .map(|(_, rest)| rest.trim_end_matches('/'));
    origin_host.is_some() && origin_host == host
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; ragq_dashboard=dsh_x/y+z=; b=2"),
        );
        assert_eq!(cookie(&headers, COOKIE), Some("dsh_x/y+z="));
        assert_eq!(cookie(&headers, "c"), None);
    }

    #[test]
    fn sign_in_from_another_origin_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&headers));
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&headers));
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&headers));
    }
}

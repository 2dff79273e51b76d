//! `GET /dashboard`: the live picture of ragq in a browser, served by `ragq api`.
//!
//! The charts are drawn on the server as SVG from what every process writes to Postgres (see
//! [`data`]), so the page is right with any number of workers and needs no script: it loads
//! nothing but itself and its stylesheet, and its Content-Security-Policy allows nothing else.
//!
//! Who sees what: a tenant's API key shows that tenant's own data; the operator key (named in
//! config by `api.operator_key_env`) shows every tenant. A browser signs in once through a form;
//! the server keeps only the hash of the random session token it sets as an HttpOnly,
//! SameSite=Strict cookie. Scripts and curl may send `Authorization: Bearer <key>` instead.

pub mod data;
mod page;
pub(crate) mod session;
pub mod svg;

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::ApiState;
use data::Window;

/// Whose data a page shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant.
    Operator,
    /// One tenant's own data only.
    Tenant { id: String, name: String },
}

impl Scope {
    /// The tenant every statement filters by; none for the operator.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Self::Operator => None,
            Self::Tenant { id, .. } => Some(id),
        }
    }
}

/// The dashboard's routes, with the security headers every one of its responses carries.
pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/dashboard", get(show))
        .route("/dashboard/login", post(session::login))
        .route("/dashboard/logout", post(session::logout))
        .route("/dashboard/style.css", get(style))
        .layer(axum::middleware::map_response(secure_headers))
}

/// Nothing from another origin, no inline script, no framing, nothing cached, no referrer sent
/// to other sites.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Not `no-referrer`: under it a browser sends `Origin: null` with the sign-in form, which
        // the login-CSRF check must then refuse.
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct PageParams {
    window: Option<String>,
}

/// The dashboard page: the signed-in tenant's view, or every tenant's for the operator key.
#[utoipa::path(
    get,
    path = "/dashboard",
    tag = "operations",
    params(("window" = Option<String>, Query, pattern = "^(hour|day|30d)$", description = "`hour` (default), `day` or `30d`")),
    responses(
        (status = 200, description = "The page (HTML, no script)", content_type = "text/html"),
        (status = 400, description = "A `window` that is not hour, day or 30d", content_type = "text/html"),
        (status = 401, description = "Not signed in: the sign-in form", content_type = "text/html"),
        (status = 503, description = "The database is away", content_type = "text/html"),
    ),
    security(("dashboard_session" = []), ("api_key" = []))
)]
pub(crate) async fn show(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    params: Result<Query<PageParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let window = match params.map(|Query(p)| p.window.as_deref().map(Window::parse)) {
        Ok(None) => Window::Hour,
        Ok(Some(Some(w))) => w,
        _ => {
            return message(
                StatusCode::BAD_REQUEST,
                "`window` must be one of hour, day, 30d",
            )
        }
    };
    let scope = match session::scope_of(&state, &headers).await {
        Ok(Some(scope)) => scope,
        Ok(None) => return session::login_page(StatusCode::UNAUTHORIZED, None),
        Err(e) => return internal(&e),
    };
    match page::render(&state.pool, &scope, window, chrono::Utc::now()).await {
        Ok(html) => html_response(StatusCode::OK, html),
        Err(e) => internal(&e),
    }
}

/// The dashboard's stylesheet (its CSP allows no other).
#[utoipa::path(
    get,
    path = "/dashboard/style.css",
    tag = "operations",
    responses((status = 200, description = "CSS", content_type = "text/css"))
)]
pub(crate) async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
        .into_response()
}

fn html_response(status: StatusCode, html: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// A short page saying what went wrong.
fn message(status: StatusCode, text: &str) -> Response {
    let body = format!(
        "<main class=\"message\"><h1>{}</h1><p>{}</p><p><a href=\"/dashboard\">Back to the dashboard</a></p></main>",
        status.as_u16(),
        svg::escape(text)
    );
    html_response(status, page::document("ragq dashboard", &body))
}

/// Logs a database failure once and shows the client no driver text.
fn internal(error: &sqlx::Error) -> Response {
    tracing::error!(error = %error, "dashboard request failed");
    message(
        StatusCode::SERVICE_UNAVAILABLE,
        "The dashboard cannot read its data right now; try again shortly.",
    )
}

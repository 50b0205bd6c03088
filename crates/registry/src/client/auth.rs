//! Requests with the registry's auth flow: a cached `Authorization` per scope, a challenge
//! (`WWW-Authenticate`: Basic, or a Docker bearer token fetched from its realm) answered once,
//! and the status check every call makes.

use reqwest::header;
use reqwest::{Method, StatusCode};

use crate::auth::{Challenge, basic_header};

use crate::{Error, Result};

use super::{Client, status_error};

impl Client {
    pub(super) fn cached_auth(&self, scope: &str) -> Option<String> {
        let cache = self.auth.lock().expect("auth cache poisoned");
        cache.get("").or_else(|| cache.get(scope)).cloned()
    }

    pub(super) async fn authenticate(
        &self,
        url: &str,
        challenge: &str,
        scope: &str,
    ) -> Result<String> {
        let auth_error = |reason: String| Error::Auth {
            url: url.to_owned(),
            reason,
        };
        match Challenge::parse(challenge) {
            Some(Challenge::Basic) => {
                let (user, password) = self
                    .options
                    .credentials
                    .as_ref()
                    .ok_or_else(|| auth_error("the registry wants credentials".into()))?;
                let value = basic_header(user, password);
                self.auth
                    .lock()
                    .expect("auth cache poisoned")
                    .insert(String::new(), value.clone());
                Ok(value)
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                let mut request = self.http.get(&realm);
                let mut query = vec![("scope", scope.to_owned())];
                if let Some(service) = service {
                    query.push(("service", service));
                }
                request = request.query(&query);
                if let Some((user, password)) = &self.options.credentials {
                    request = request.basic_auth(user, Some(password));
                }
                let response = request.send().await.map_err(|source| Error::Http {
                    url: realm.clone(),
                    source,
                })?;
                if !response.status().is_success() {
                    return Err(auth_error(format!(
                        "token endpoint {realm} answered {}",
                        response.status()
                    )));
                }
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body: TokenResponse = response.json().await.map_err(|source| Error::Http {
                    url: realm.clone(),
                    source,
                })?;
                let token = body
                    .token
                    .or(body.access_token)
                    .ok_or_else(|| auth_error("token endpoint sent no token".into()))?;
                let value = format!("Bearer {token}");
                self.auth
                    .lock()
                    .expect("auth cache poisoned")
                    .insert(scope.to_owned(), value.clone());
                Ok(value)
            }
            None => Err(auth_error(format!("unsupported challenge {challenge:?}"))),
        }
    }

    /// Sends a request built by `build`, answering one auth challenge if the registry asks.
    pub(super) async fn send(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let mut auth = self.cached_auth(scope);
        for attempt in 0..2 {
            let mut request = build(self.http.request(method.clone(), url));
            if let Some(value) = &auth {
                request = request.header(header::AUTHORIZATION, value);
            }
            let response = request.send().await.map_err(|source| Error::Http {
                url: url.to_owned(),
                source,
            })?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = response
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                auth = Some(self.authenticate(url, &challenge, scope).await?);
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Sends and expects one of `ok`; anything else becomes [`Error::Status`].
    pub(super) async fn expect(
        &self,
        method: Method,
        url: &str,
        scope: &str,
        ok: &[StatusCode],
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response> {
        let response = self.send(method.clone(), url, scope, build).await?;
        if ok.contains(&response.status()) {
            Ok(response)
        } else {
            Err(status_error(&method, url, response).await)
        }
    }
}

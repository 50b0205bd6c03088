//! x509 client certificates: the TLS layer verifies the chain against the cluster CA (see
//! [`crate::tls::serve`]) and hands the leaf to the request as a [`PeerCertificate`]; this
//! authenticator reads the user from its subject, CN = user name and each O = a group, as
//! kube-apiserver does.

use std::sync::Arc;

use super::{Authenticator, Outcome, UserInfo};

/// The DER of a client certificate the TLS layer has verified against the cluster CA.
/// Only the TLS accept loop inserts it: a request can't bring its own.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Arc<Vec<u8>>);

/// Authenticates by verified client certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCertificates;

/// CN and O of a certificate.
pub(crate) fn subject(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if !cert.validity().is_valid() {
        return None;
    }
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_owned))
        .collect();
    (!name.is_empty()).then_some(UserInfo {
        name,
        uid: String::new(),
        groups,
    })
}

impl Authenticator for ClientCertificates {
    fn authenticate(&self, parts: &http::request::Parts) -> Outcome {
        match parts.extensions.get::<PeerCertificate>() {
            None => Outcome::NoCredentials,
            Some(PeerCertificate(der)) => match subject(der) {
                Some(u) => Outcome::User(u),
                None => Outcome::Rejected("the client certificate has no usable subject".into()),
            },
        }
    }
}

//! `POST /v1-edgesite/node-certificate`: node client certificates for a CSR, authorized by the
//! join token or, to renew, by the node's own certificate; never without one of them.

use anyhow::Result;
use edgesite_api::join::{NODE_CERTIFICATE_PATH, NodeToken};
use edgesite_apiserver::{IssuedCert, client_identity};
use rcgen::PublicKeyData as _;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

mod support;
use support::{Harness, Reply};

/// A fresh key and a CSR for it whose subject asks for more than a node may have.
fn key_and_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "kubernetes-admin");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:masters");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn token(h: &Harness) -> NodeToken {
    NodeToken::parse(&std::fs::read_to_string(h.server.node_token_path()).unwrap()).unwrap()
}

async fn post(h: &Harness, cert: Option<&IssuedCert>, bearer: Option<&str>, body: &str) -> Reply {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let resp = h
        .send(
            cert,
            false,
            "POST",
            NODE_CERTIFICATE_PATH,
            &headers,
            body.to_owned(),
        )
        .await
        .unwrap();
    Reply::read(resp).await.unwrap()
}

fn body(node: &str, csr: &str) -> String {
    json!({"nodeName": node, "csr": csr}).to_string()
}

fn assert_status(r: &Reply, code: u16, message_has: &str) -> Value {
    let v = r.json();
    assert_eq!(r.status.as_u16(), code, "{v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], code, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains(message_has), "{message}");
    v
}

/// Issues `node` a certificate with the token; returns it with its key.
async fn node_cert(h: &Harness, node: &str) -> IssuedCert {
    let (key, csr) = key_and_csr();
    let r = post(h, None, Some(token(h).secret()), &body(node, &csr)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    IssuedCert {
        cert_pem: r.json()["certificate"].as_str().unwrap().to_owned(),
        key_pem: key.serialize_pem(),
    }
}

fn identity_of(pem: &str) -> (String, Vec<String>) {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    client_identity(&der).unwrap()
}

#[tokio::test]
async fn the_token_buys_a_node_certificate_for_the_csr_key() -> Result<()> {
    let h = Harness::start().await?;
    let (key, csr) = key_and_csr();
    // The secret alone and the whole token text both work.
    for bearer in [token(&h).secret().to_owned(), token(&h).to_string()] {
        let r = post(&h, None, Some(&bearer), &body("edge-1", &csr)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["caCertificate"], h.ca_pem.as_str());
        let pem = v["certificate"].as_str().unwrap();
        // Whatever the CSR asked for, the subject is the node's.
        assert_eq!(
            identity_of(pem),
            (
                "system:node:edge-1".to_owned(),
                vec!["system:nodes".to_owned()]
            )
        );
        let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
        assert_eq!(
            cert.public_key().raw,
            key.subject_public_key_info().as_slice()
        );
        assert!(
            cert.subject_alternative_name()?.is_none(),
            "no SANs from the CSR"
        );
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(life >= 365 * 86_400, "a year by default: {life} s");
    }

    // The certificate authenticates as the node.
    let issued = node_cert(&h, "edge-1").await;
    let r = h
        .send(
            Some(&issued),
            false,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            &[("content-type", "application/json")],
            r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#,
        )
        .await?;
    let r = Reply::read(r).await?;
    assert_eq!(
        r.json()["status"]["userInfo"]["username"],
        "system:node:edge-1"
    );

    // Renewal: the node's own certificate, for itself.
    let (_, csr) = key_and_csr();
    let r = post(&h, Some(&issued), None, &body("edge-1", &csr)).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn validity_follows_the_server_config() -> Result<()> {
    let h =
        Harness::start_with(|c| c.node_cert_validity = std::time::Duration::from_secs(60)).await?;
    let issued = node_cert(&h, "edge-1").await;
    let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    // 60 s plus a backdate of at most a tenth of it.
    assert!((60..=67).contains(&life), "{life} s");
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn no_certificate_without_a_credential() -> Result<()> {
    let h = Harness::start().await?;
    let (_, csr) = key_and_csr();
    let good = body("edge-1", &csr);

    // Nothing: 401, even for a bad body (nothing is answered before the credentials).
    assert_status(&post(&h, None, None, &good).await, 401, "node join token");
    assert_status(
        &post(&h, None, None, "garbage").await,
        401,
        "node join token",
    );
    // A wrong token, or a token of another cluster with the same secret.
    let r = post(&h, None, Some(&"x".repeat(64)), &good).await;
    assert_status(&r, 401, "not this cluster's node token");
    let other = NodeToken::new(b"another CA", token(&h).secret())?;
    assert_status(
        &post(&h, None, Some(&other.to_string()), &good).await,
        401,
        "node token",
    );
    // The admin is no node: it cannot renew anybody.
    let admin = h.admin.clone();
    assert_status(
        &post(&h, Some(&admin), None, &good).await,
        403,
        "is not a node",
    );
    // Another node's certificate: 403.
    let edge2 = node_cert(&h, "edge-2").await;
    assert_status(
        &post(&h, Some(&edge2), None, &good).await,
        403,
        "node \"edge-2\" may not obtain a certificate for node \"edge-1\"",
    );
    // GET is not how it works.
    let r = h.get(None, NODE_CERTIFICATE_PATH).await?;
    assert_eq!(r.status, 405);
    h.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn bad_bodies_are_400() -> Result<()> {
    let h = Harness::start().await?;
    let secret = token(&h).secret().to_owned();
    let (_, csr) = key_and_csr();
    let cases = [
        ("not json".to_owned(), "not a node certificate request"),
        (
            json!({"nodeName": "edge-1"}).to_string(),
            "missing field `csr`",
        ),
        (body("Edge_1", &csr), "invalid node name \"Edge_1\""),
        (body("", &csr), "must not be empty"),
        (
            body(
                "edge-1",
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            ),
            "cannot sign the CSR",
        ),
        (body("edge-1", "not pem"), "cannot sign the CSR"),
    ];
    for (b, want) in cases {
        assert_status(&post(&h, None, Some(&secret), &b).await, 400, want);
    }
    // A CSR whose signature does not verify (the public key swapped for another's).
    let (_, other_csr) = key_and_csr();
    let tampered = splice_public_key(&csr, &other_csr);
    assert_status(
        &post(&h, None, Some(&secret), &body("edge-1", &tampered)).await,
        400,
        "cannot sign the CSR",
    );
    h.server.shutdown().await;
    Ok(())
}

/// `csr` with the subject public key of `other`: a request its key did not sign.
fn splice_public_key(csr: &str, other: &str) -> String {
    use rustls::pki_types::CertificateSigningRequestDer;
    let der = |pem: &str| {
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    };
    let (a, b) = (der(csr), der(other));
    use x509_parser::prelude::FromDer as _;
    let spki = |d: &[u8]| {
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(d).unwrap();
        req.certification_request_info.subject_pki.raw.to_vec()
    };
    let (ka, kb) = (spki(&a), spki(&b));
    let at = a.windows(ka.len()).position(|w| w == ka).unwrap();
    let mut spliced = a.clone();
    spliced[at..at + ka.len()].copy_from_slice(&kb);
    use base64::Engine as _;
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(spliced)
    )
}

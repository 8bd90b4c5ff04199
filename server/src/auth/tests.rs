//! Verification with real signed tokens for every algorithm, keys generated here.

use std::sync::OnceLock;

use http::HeaderMap;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

use super::*;

pub(crate) struct KeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

pub(crate) fn rsa_keys() -> &'static KeyPair {
    static KEYS: OnceLock<KeyPair> = OnceLock::new();
    KEYS.get_or_init(|| {
        use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rand08::rngs::OsRng, 2048).expect("rsa key");
        KeyPair {
            private_pem: private
                .to_pkcs8_pem(LineEnding::LF)
                .expect("pem")
                .to_string(),
            public_pem: private
                .to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("pem"),
        }
    })
}

pub(crate) fn rcgen_keys(alg: &'static rcgen::SignatureAlgorithm) -> KeyPair {
    let kp = rcgen::KeyPair::generate_for(alg).expect("key pair");
    KeyPair {
        private_pem: kp.serialize_pem(),
        public_pem: kp.public_key_pem(),
    }
}

fn sign(alg: Algorithm, key: &EncodingKey, claims: serde_json::Value) -> String {
    encode(&Header::new(alg), &claims, key).expect("sign")
}

fn hmac(secret: &str) -> Verifier {
    Verifier::new(VerifierSettings {
        hmac_secret: Some(secret.as_bytes().to_vec()),
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    let rsa = rsa_keys();
    let ec256 = rcgen_keys(&rcgen::PKCS_ECDSA_P256_SHA256);
    let ec384 = rcgen_keys(&rcgen::PKCS_ECDSA_P384_SHA384);
    let ed = rcgen_keys(&rcgen::PKCS_ED25519);
    let claims = json!({"exp": now_secs() + 60});

    let v = hmac("s3cret");
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let t = sign(alg, &EncodingKey::from_secret(b"s3cret"), claims.clone());
        assert!(v.verify(&t).is_ok(), "{alg:?}");
        let wrong = sign(alg, &EncodingKey::from_secret(b"other"), claims.clone());
        assert_eq!(
            v.verify(&wrong).unwrap_err(),
            AuthError::Invalid,
            "{alg:?} with the wrong secret"
        );
    }

    let v = Verifier::new(VerifierSettings {
        rsa_public_key: Some(rsa.public_pem.clone()),
        ..Default::default()
    })
    .unwrap();
    let key = EncodingKey::from_rsa_pem(rsa.private_pem.as_bytes()).unwrap();
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
    ] {
        assert!(
            v.verify(&sign(alg, &key, claims.clone())).is_ok(),
            "{alg:?}"
        );
    }

    for (kp, alg) in [(&ec256, Algorithm::ES256), (&ec384, Algorithm::ES384)] {
        let v = Verifier::new(VerifierSettings {
            ecdsa_public_key: Some(kp.public_pem.clone()),
            ..Default::default()
        })
        .unwrap();
        let t = sign(
            alg,
            &EncodingKey::from_ec_pem(kp.private_pem.as_bytes()).unwrap(),
            claims.clone(),
        );
        assert!(v.verify(&t).is_ok(), "{alg:?}");
    }

    let v = Verifier::new(VerifierSettings {
        ed25519_public_key: Some(ed.public_pem.clone()),
        ..Default::default()
    })
    .unwrap();
    let t = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(ed.private_pem.as_bytes()).unwrap(),
        claims.clone(),
    );
    assert!(v.verify(&t).is_ok());
    // A token signed by another Ed25519 key fails.
    let other = rcgen_keys(&rcgen::PKCS_ED25519);
    let t = sign(
        Algorithm::EdDSA,
        &EncodingKey::from_ed_pem(other.private_pem.as_bytes()).unwrap(),
        claims,
    );
    assert_eq!(v.verify(&t).unwrap_err(), AuthError::Invalid);
}

#[test]
fn an_algorithm_without_a_configured_key_is_refused() {
    // Only HMAC configured: an RS256 token is invalid, and so is "none".
    let v = hmac("s3cret");
    let rsa = rsa_keys();
    let t = sign(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(rsa.private_pem.as_bytes()).unwrap(),
        json!({}),
    );
    assert_eq!(v.verify(&t).unwrap_err(), AuthError::Invalid);
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.";
    assert_eq!(v.verify(unsigned).unwrap_err(), AuthError::Invalid);
    // Key confusion: an HS256 token "signed" with the RSA public key bytes is refused.
    let v = Verifier::new(VerifierSettings {
        rsa_public_key: Some(rsa.public_pem.clone()),
        ..Default::default()
    })
    .unwrap();
    let t = sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
        json!({}),
    );
    assert_eq!(v.verify(&t).unwrap_err(), AuthError::Invalid);
}

#[test]
fn time_and_claim_checks() {
    let key = EncodingKey::from_secret(b"k");
    check_claim_rules(
        |claims| sign(Algorithm::HS256, &key, claims),
        |audience, issuer| VerifierSettings {
            hmac_secret: Some(b"k".to_vec()),
            audience,
            issuer,
            ..Default::default()
        },
    );
}

/// The claim checks every algorithm shares, for tokens from `sign` and verifiers from
/// `settings(audience, issuer)`.
fn check_claim_rules(
    sign: impl Fn(serde_json::Value) -> String,
    settings: impl Fn(Option<String>, Option<String>) -> VerifierSettings,
) {
    let v = Verifier::new(settings(None, None)).unwrap();
    let now = now_secs();
    let cases: Vec<(serde_json::Value, Result<(), AuthError>)> = vec![
        (json!({}), Ok(())),
        (json!({"exp": now + 60}), Ok(())),
        (json!({"exp": now - 5}), Err(AuthError::Expired)),
        (json!({"nbf": now + 60}), Err(AuthError::Invalid)),
        (json!({"nbf": now - 60, "exp": now + 60}), Ok(())),
        (json!({"exp": "soon"}), Err(AuthError::Invalid)),
    ];
    for (claims, want) in cases {
        let got = v.verify(&sign(claims.clone())).map(|_| ());
        assert_eq!(got, want, "{claims}");
    }
    let v = Verifier::new(settings(Some("piko".into()), Some("auth.example".into()))).unwrap();
    let cases: Vec<(serde_json::Value, Result<(), AuthError>)> = vec![
        (json!({"aud": "piko", "iss": "auth.example"}), Ok(())),
        (
            json!({"aud": ["other", "piko"], "iss": "auth.example"}),
            Ok(()),
        ),
        (
            json!({"aud": "other", "iss": "auth.example"}),
            Err(AuthError::Invalid),
        ),
        (
            json!({"aud": "piko", "iss": "elsewhere"}),
            Err(AuthError::Invalid),
        ),
        (json!({"aud": "piko"}), Err(AuthError::Invalid)),
        (json!({"iss": "auth.example"}), Err(AuthError::Invalid)),
    ];
    for (claims, want) in cases {
        let got = v.verify(&sign(claims.clone())).map(|_| ());
        assert_eq!(got, want, "{claims}");
    }
}

/// A P-521 key pair for ES512 (jsonwebtoken cannot sign them either): the signing key and the
/// public key as PEM and as JWK coordinates.
struct Es512Pair {
    signing: p521::ecdsa::SigningKey,
    public_pem: String,
    x: String,
    y: String,
}

fn es512_pair(seed: u8) -> Es512Pair {
    use base64::Engine;
    use p521::pkcs8::EncodePublicKey;
    let mut secret = [seed; 66];
    secret[0] = 0; // below the group order
    let signing = p521::ecdsa::SigningKey::from_slice(&secret).expect("P-521 secret");
    let public =
        p521::PublicKey::from_affine(*p521::ecdsa::VerifyingKey::from(&signing).as_affine())
            .unwrap();
    let point = p521::ecdsa::VerifyingKey::from(&signing).to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    Es512Pair {
        public_pem: public
            .to_public_key_pem(p521::pkcs8::LineEnding::LF)
            .expect("pem"),
        x: b64(point.x().expect("x")),
        y: b64(point.y().expect("y")),
        signing,
    }
}

fn sign_es512(
    key: &p521::ecdsa::SigningKey,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    use base64::Engine;
    use p521::ecdsa::signature::RandomizedSigner;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let mut header = json!({"alg": "ES512", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let signed = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig: p521::ecdsa::Signature =
        key.sign_with_rng(&mut rand08::rngs::OsRng, signed.as_bytes());
    format!("{signed}.{}", b64(&sig.to_bytes()))
}

#[test]
fn es512_tokens_verify_with_a_p521_key_and_the_same_claim_rules() {
    let pair = es512_pair(7);
    let settings = |audience, issuer| VerifierSettings {
        ecdsa_public_key: Some(pair.public_pem.clone()),
        audience,
        issuer,
        ..Default::default()
    };
    check_claim_rules(|claims| sign_es512(&pair.signing, None, &claims), settings);

    let v = Verifier::new(settings(None, None)).unwrap();
    let claims = json!({"exp": now_secs() + 60, "piko": {"endpoints": ["shop"]}});
    let t = v.verify(&sign_es512(&pair.signing, None, &claims)).unwrap();
    assert!(t.permits("shop") && !t.permits("other"));
    // Another key's signature, a changed payload, a cut signature: all refused.
    let other = es512_pair(9);
    assert_eq!(
        v.verify(&sign_es512(&other.signing, None, &claims))
            .unwrap_err(),
        AuthError::Invalid
    );
    let token = sign_es512(&pair.signing, None, &claims);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = sign_es512(
        &pair.signing,
        None,
        &json!({"piko": {"endpoints": ["other"]}}),
    );
    let forged_payload = forged.split('.').nth(1).unwrap();
    for bad in [
        format!("{}.{}.{}", parts[0], forged_payload, parts[2]),
        format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]),
        format!("{}.{}", parts[0], parts[1]),
        format!("{token}.extra"),
    ] {
        assert_eq!(v.verify(&bad).unwrap_err(), AuthError::Invalid, "{bad}");
    }
    // A verifier with only a P-256 key refuses ES512, and a P-521 verifier refuses HS256.
    let ec256 = rcgen_keys(&rcgen::PKCS_ECDSA_P256_SHA256);
    let v256 = Verifier::new(VerifierSettings {
        ecdsa_public_key: Some(ec256.public_pem),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(v256.verify(&token).unwrap_err(), AuthError::Invalid);
    let hs = sign(Algorithm::HS256, &EncodingKey::from_secret(b"k"), json!({}));
    assert_eq!(v.verify(&hs).unwrap_err(), AuthError::Invalid);
}

#[tokio::test]
async fn es512_keys_come_from_a_jwks_by_key_id() {
    let (a, b) = (es512_pair(3), es512_pair(5));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let jwk = |kid: &str, p: &Es512Pair| json!({"kty": "EC", "crv": "P-521", "kid": kid, "x": p.x, "y": p.y});
    let set = json!({"keys": [jwk("a", &a), jwk("b", &b), {"kty": "EC", "crv": "P-521", "kid": "bad", "x": "AA", "y": "AA"}]});
    std::fs::write(&path, set.to_string()).unwrap();
    let v = Verifier::new(VerifierSettings {
        jwks: Some(JwksSource {
            location: JwksLocation::File(path),
            cache_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
        }),
        ..Default::default()
    })
    .unwrap();
    v.jwks().unwrap().refresh().await.unwrap();
    let claims = json!({"exp": now_secs() + 60});
    assert!(v
        .verify(&sign_es512(&a.signing, Some("a"), &claims))
        .is_ok());
    assert!(v
        .verify(&sign_es512(&b.signing, Some("b"), &claims))
        .is_ok());
    assert_eq!(
        v.verify(&sign_es512(&a.signing, Some("b"), &claims))
            .unwrap_err(),
        AuthError::Invalid,
        "key b does not verify a's signature"
    );
    assert_eq!(
        v.verify(&sign_es512(&a.signing, Some("missing"), &claims))
            .unwrap_err(),
        AuthError::Invalid
    );
}

#[test]
fn endpoint_claims_and_expiry() {
    let key = EncodingKey::from_secret(b"k");
    let t = hmac("k")
        .verify(&sign(
            Algorithm::HS256,
            &key,
            json!({"exp": 4_000_000_000u64, "piko": {"endpoints": ["a", "b"]}}),
        ))
        .unwrap();
    assert!(t.permits("a") && t.permits("b") && !t.permits("c"));
    assert_eq!(
        t.expiry,
        Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000))
    );
    let t = hmac("k")
        .verify(&sign(Algorithm::HS256, &key, json!({})))
        .unwrap();
    assert!(t.permits("anything"));
    assert_eq!(t.expiry, None);

    let strict = Verifier::new(VerifierSettings {
        hmac_secret: Some(b"k".to_vec()),
        require_endpoints: true,
        disable_disconnect_on_expiry: true,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        strict
            .verify(&sign(Algorithm::HS256, &key, json!({})))
            .unwrap_err(),
        AuthError::NotPermitted
    );
    let t = strict
        .verify(&sign(
            Algorithm::HS256,
            &key,
            json!({"exp": now_secs() + 60, "piko": {"endpoints": ["b"]}}),
        ))
        .unwrap();
    assert!(!t.permits("a") && t.permits("b"));
    assert_eq!(t.expiry, None, "disconnect on expiry disabled");
    // An empty list means "every endpoint" (the original's tokens): a server that requires
    // scoped tokens refuses it, any other permits everything.
    let all = json!({"piko": {"endpoints": []}});
    assert_eq!(
        strict
            .verify(&sign(Algorithm::HS256, &key, all.clone()))
            .unwrap_err(),
        AuthError::NotPermitted
    );
    let t = hmac("k")
        .verify(&sign(Algorithm::HS256, &key, all))
        .unwrap();
    assert!(t.permits("a") && t.permits("anything"));
}

#[test]
fn fractional_and_huge_expiry_times_are_numeric_dates() {
    let key = EncodingKey::from_secret(b"k");
    let exp = now_secs() as f64 + 60.5;
    let t = hmac("k")
        .verify(&sign(Algorithm::HS256, &key, json!({ "exp": exp })))
        .expect("a fractional exp is a valid NumericDate");
    let at = t.expiry.expect("an expiry");
    let want = UNIX_EPOCH + Duration::from_secs_f64(exp);
    assert!(
        at.duration_since(want).unwrap_or_else(|e| e.duration()) < Duration::from_millis(1),
        "{at:?} vs {want:?}"
    );
    let past = now_secs() as f64 - 10.5;
    assert_eq!(
        hmac("k")
            .verify(&sign(Algorithm::HS256, &key, json!({ "exp": past })))
            .unwrap_err(),
        AuthError::Expired
    );
    // Past what SystemTime holds: accepted as never expiring, not a panic.
    for exp in [json!(u64::MAX - 1), json!(1.0e19)] {
        let t = hmac("k")
            .verify(&sign(Algorithm::HS256, &key, json!({ "exp": exp })))
            .unwrap();
        assert!(
            t.expiry.is_none() || t.expiry > Some(SystemTime::now()),
            "{exp}"
        );
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                http::HeaderName::try_from(*k).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect()
}

#[test]
fn port_auth_reads_headers_and_tenants() {
    let key = EncodingKey::from_secret(b"k");
    let good = sign(
        Algorithm::HS256,
        &key,
        json!({"piko": {"endpoints": ["shop"]}}),
    );
    let auth = PortAuth {
        default: Some(Arc::new(hmac("k"))),
        tenants: Default::default(),
    };
    let bearer = format!("Bearer {good}");
    type Case<'a> = (Vec<(&'a str, &'a str)>, Result<(), AuthError>);
    let cases: Vec<Case> = vec![
        (vec![], Err(AuthError::Missing)),
        (vec![("authorization", &bearer)], Ok(())),
        (
            vec![("authorization", "Basic dXNlcjpwYXNz")],
            Err(AuthError::Invalid),
        ),
        (vec![("authorization", "Bearer")], Err(AuthError::Invalid)),
        (
            vec![("authorization", "Bearer not.a.jwt")],
            Err(AuthError::Invalid),
        ),
        // x-piko-authorization wins over Authorization.
        (
            vec![
                ("x-piko-authorization", &bearer),
                ("authorization", "Bearer service-token"),
            ],
            Ok(()),
        ),
        (
            vec![
                ("x-piko-authorization", "Bearer bad"),
                ("authorization", &bearer),
            ],
            Err(AuthError::Invalid),
        ),
    ];
    for (h, want) in cases {
        assert_eq!(
            auth.authorize(&headers(&h), "shop").map(|_| ()),
            want,
            "{h:?}"
        );
    }
    assert_eq!(
        auth.authorize(&headers(&[("authorization", &bearer)]), "blog")
            .unwrap_err(),
        AuthError::NotPermitted
    );
    assert!(
        PortAuth::default()
            .authenticate(&headers(&[]))
            .unwrap()
            .is_none(),
        "no auth configured: open"
    );

    let tenants = PortAuth {
        default: Some(Arc::new(hmac("k"))),
        tenants: [("t1".to_string(), Arc::new(hmac("t1-key")))]
            .into_iter()
            .collect(),
    };
    let t1 = format!(
        "Bearer {}",
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(b"t1-key"),
            json!({})
        )
    );
    let tok = tenants
        .authenticate(&headers(&[
            ("authorization", &t1),
            ("x-piko-tenant-id", "t1"),
        ]))
        .unwrap()
        .unwrap();
    assert_eq!(tok.tenant.as_deref(), Some("t1"));
    assert_eq!(
        tenants
            .authenticate(&headers(&[
                ("authorization", &t1),
                ("x-piko-tenant-id", "t2")
            ]))
            .unwrap_err(),
        AuthError::UnknownTenant
    );
    assert_eq!(
        tenants
            .authenticate(&headers(&[("authorization", &bearer)]))
            .unwrap_err(),
        AuthError::UnknownTenant
    );
    assert_eq!(
        tenants
            .authenticate(&headers(&[
                ("authorization", &bearer),
                ("x-piko-tenant-id", "t1")
            ]))
            .unwrap_err(),
        AuthError::Invalid
    );
}

#[test]
fn bad_keys_are_configuration_errors() {
    let e = Verifier::new(VerifierSettings {
        rsa_public_key: Some("not a pem".into()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "rsa_public_key");
    let e = Verifier::new(VerifierSettings {
        ecdsa_public_key: Some(rsa_keys().public_pem.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "ecdsa_public_key");
    let e = Verifier::new(VerifierSettings {
        hmac_secret: Some(b"k".to_vec()),
        jwks: Some(JwksSource {
            location: JwksLocation::File("/x".into()),
            cache_ttl: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        }),
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(e.field, "jwks.endpoint");
}

#[tokio::test]
async fn jwks_file_rotation() {
    use jsonwebtoken::jwk::{CommonParameters, Jwk, JwkSet, KeyAlgorithm};
    let dir = std::env::temp_dir().join(format!("piko-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    let jwk = |kid: &str, secret: &[u8]| {
        let mut j =
            Jwk::from_encoding_key(&EncodingKey::from_secret(secret), Algorithm::HS256).unwrap();
        j.common = CommonParameters {
            key_id: Some(kid.into()),
            key_algorithm: Some(KeyAlgorithm::HS256),
            ..j.common
        };
        j
    };
    let write = |keys: Vec<Jwk>| {
        std::fs::write(&path, serde_json::to_vec(&JwkSet { keys }).unwrap()).unwrap()
    };
    write(vec![jwk("old", b"old-secret")]);
    let v = Verifier::new(VerifierSettings {
        jwks: Some(JwksSource {
            location: JwksLocation::File(path.clone()),
            cache_ttl: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
        }),
        ..Default::default()
    })
    .unwrap();
    let jwks = v.jwks().unwrap().clone();
    jwks.refresh().await.unwrap();
    let token = |kid: &str, secret: &[u8]| {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        encode(&h, &json!({}), &EncodingKey::from_secret(secret)).unwrap()
    };
    assert!(v.verify(&token("old", b"old-secret")).is_ok());
    assert_eq!(
        v.verify(&token("new", b"new-secret")).unwrap_err(),
        AuthError::Invalid
    );
    // Rotate: the unknown kid asks for a refresh, which picks up the new key.
    write(vec![jwk("new", b"new-secret")]);
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(jwks.clone().keep_fresh(shutdown.clone()));
    let mut ok = false;
    for _ in 0..150 {
        if v.verify(&token("new", b"new-secret")).is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    assert!(ok, "the rotated key is used within the refresh interval");
    assert_eq!(
        v.verify(&token("old", b"old-secret")).unwrap_err(),
        AuthError::Invalid,
        "the removed key no longer verifies"
    );
    // A broken file keeps the keys already loaded.
    std::fs::write(&path, b"{not json").unwrap();
    assert!(jwks.refresh().await.unwrap_err().contains("parse JWKS"));
    assert!(v.verify(&token("new", b"new-secret")).is_ok());
}

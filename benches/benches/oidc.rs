//! Token validation with cached keys (the figure: ≤ 50 µs for RS256 and ES256), and the ES256
//! verify of the two backends available — ring (through `jsonwebtoken`, what Portcullis uses)
//! and RustCrypto's `p256` — measured side by side to choose by the figure.
//!
//! Run with: `cd benches && cargo bench --bench oidc`.

use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use portcullis_identity::{Oidc, OidcConfig};

const JWKS: &[u8] = include_bytes!("keys/jwks.json");
const RSA: &[u8] = include_bytes!("keys/rsa.pem");
const EC: &[u8] = include_bytes!("keys/ec.pem");
const ISSUER: &str = "https://idp.example";

fn token(alg: Algorithm, kid: &str, key: &EncodingKey) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = serde_json::json!({
        "iss": ISSUER, "aud": "portcullis", "sub": "alice", "name": "Alice Analyst",
        "email": "alice@example.com", "groups": ["analysts", "dev"], "jti": "bench",
        "iat": now, "exp": now + 3600,
    });
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &claims, key).expect("sign")
}

fn validation(c: &mut Criterion) {
    let config = OidcConfig::new(ISSUER, vec!["portcullis".into()]);
    let oidc = Oidc::from_jwks(config, JWKS).expect("bench JWKS");
    let rs = token(
        Algorithm::RS256,
        "bench-rsa",
        &EncodingKey::from_rsa_pem(RSA).expect("rsa key"),
    );
    let es = token(
        Algorithm::ES256,
        "bench-ec",
        &EncodingKey::from_ec_pem(EC).expect("ec key"),
    );
    assert_eq!(oidc.verify_cached(&rs).expect("RS256 verifies").subject, "alice");
    assert_eq!(oidc.verify_cached(&es).expect("ES256 verifies").subject, "alice");
    let mut group = c.benchmark_group("oidc/validate");
    group.bench_function("RS256", |b| b.iter(|| oidc.verify_cached(black_box(&rs))));
    group.bench_function("ES256", |b| b.iter(|| oidc.verify_cached(black_box(&es))));
    group.finish();

    // The signature check alone, per backend, for ES256.
    let (input, sig) = es.rsplit_once('.').expect("three parts");
    let jwks: serde_json::Value = serde_json::from_slice(JWKS).expect("json");
    let ec_jwk: jsonwebtoken::jwk::Jwk =
        serde_json::from_value(jwks["keys"][1].clone()).expect("jwk");
    let ring_key = jsonwebtoken::DecodingKey::from_jwk(&ec_jwk).expect("key");
    let mut group = c.benchmark_group("es256/verify");
    group.bench_function("ring (jsonwebtoken)", |b| {
        b.iter(|| {
            jsonwebtoken::crypto::verify(black_box(sig), input.as_bytes(), &ring_key, Algorithm::ES256)
                .expect("verify")
        })
    });
    {
        use base64::Engine as _;
        use p256::ecdsa::signature::Verifier as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let x = b64.decode(jwks["keys"][1]["x"].as_str().expect("x")).expect("x");
        let y = b64.decode(jwks["keys"][1]["y"].as_str().expect("y")).expect("y");
        let point = p256::EncodedPoint::from_affine_coordinates(
            x.as_slice().into(),
            y.as_slice().into(),
            false,
        );
        let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point).expect("point");
        let raw = b64.decode(sig).expect("sig");
        let signature = p256::ecdsa::Signature::from_slice(&raw).expect("signature");
        assert!(key.verify(input.as_bytes(), &signature).is_ok());
        group.bench_function("p256 (RustCrypto)", |b| {
            b.iter(|| {
                let raw = b64.decode(black_box(sig)).expect("sig");
                let signature = p256::ecdsa::Signature::from_slice(&raw).expect("signature");
                key.verify(input.as_bytes(), &signature).is_ok()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);

//! JWT verification for `auth` and `refresh` (`--jwt-secret`,
//! `--jwt-public-key`): the server's [`TokenVerifier`].
//!
//! The `jsonwebtoken` crate checks the signature; what is done here is
//! choosing the key by the header's algorithm (and refusing what no
//! configured key may verify), the time claims against the session's clock
//! (`exp`, `nbf`, with the leeway), and reading the claims strictly.
//!
//! Where it runs: on the shard, inline, when `auth` or `refresh` arrives
//! (bench-results/README.md has the cost per algorithm). A handshake storm
//! of ES256 tokens therefore costs each shard its verifications; that is
//! bounded by the connection rate, not by the traffic.

use crate::protocol::pattern;
use crate::session::grant::{Claims, TokenRefusal, TokenVerifier, Verifier};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::Arc;

/// HMAC algorithms accepted with `jwt_secret`.
const HMAC_ALGS: [Algorithm; 3] = [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512];

/// The server's verifier: the configured keys and what to check.
pub struct JwtVerifier {
    /// `jwt_secret`: HS256/384/512.
    hmac: Option<DecodingKey>,
    /// `jwt_public_key` and the algorithms its kind of key verifies.
    public: Option<(DecodingKey, &'static [Algorithm])>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hmac", &self.hmac.is_some())
            .field("public", &self.public.as_ref().map(|(_, algs)| algs))
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// The claims as they may appear in a token; any other claim is ignored.
/// Types are strict: a `sub` that is not a string, a `broadcast` that is
/// not a bool, a channel list that is not a list of strings is refused.
#[derive(Deserialize)]
struct RawClaims {
    sub: String,
    exp: Option<f64>,
    nbf: Option<f64>,
    #[serde(default)]
    channels: RawChannels,
    #[serde(default)]
    broadcast: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawChannels {
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    history: Vec<String>,
}

impl JwtVerifier {
    /// The verifier for `config`'s JWT settings; `None` when neither a
    /// secret nor a public key is set. Errors name the setting.
    pub fn from_config(config: &super::ServerConfig) -> Result<Option<Verifier>, String> {
        let hmac = match &config.jwt_secret {
            Some(s) if s.is_empty() => return Err("jwt_secret is empty".into()),
            Some(s) => Some(DecodingKey::from_secret(s.as_bytes())),
            None => None,
        };
        let public = match &config.jwt_public_key {
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read jwt_public_key {}: {e}", path.display()))?;
                Some(
                    public_key(&pem)
                        .map_err(|e| format!("jwt_public_key {}: {e}", path.display()))?,
                )
            }
            None => None,
        };
        if hmac.is_none() && public.is_none() {
            if config.jwt_audience.is_some() || config.jwt_issuer.is_some() {
                return Err("jwt_audience and jwt_issuer need jwt_secret or jwt_public_key".into());
            }
            return Ok(None);
        }
        Ok(Some(Verifier(Arc::new(JwtVerifier {
            hmac,
            public,
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway: config.jwt_leeway_secs,
        }))))
    }
}

/// Reads a PEM public key: RSA, EC (P-256, P-384) or Ed25519, with the
/// algorithms each verifies.
fn public_key(pem: &[u8]) -> Result<(DecodingKey, &'static [Algorithm]), String> {
    const RSA: &[Algorithm] = &[
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
    ];
    const EC: &[Algorithm] = &[Algorithm::ES256, Algorithm::ES384];
    const ED: &[Algorithm] = &[Algorithm::EdDSA];
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Ok((k, RSA));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Ok((k, EC));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Ok((k, ED));
    }
    Err("not a PEM public key of a kind accepted (RSA, EC P-256/P-384, Ed25519)".into())
}

/// The header's `alg`, read before any key is chosen: `none` and unknown
/// algorithms are refused by name, not by a parse error.
fn header_alg(token: &str) -> Result<Algorithm, TokenRefusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenRefusal::Malformed);
    };
    // Claims that are not base64url would otherwise be reported as a bad
    // signature (the crate checks the signature before decoding them).
    let base64url = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !base64url(claims) || !base64url(signature) {
        return Err(TokenRefusal::Malformed);
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| TokenRefusal::Malformed)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| TokenRefusal::Malformed)?;
    let alg = value
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(TokenRefusal::Malformed)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenRefusal::AlgNone);
    }
    alg.parse().map_err(|_| TokenRefusal::Algorithm)
}

/// What a `jsonwebtoken` error means for the client.
fn refusal(e: &jsonwebtoken::errors::Error) -> TokenRefusal {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => TokenRefusal::Signature,
        K::InvalidAudience => TokenRefusal::Audience,
        K::InvalidIssuer => TokenRefusal::Issuer,
        K::MissingRequiredClaim(c) if c == "aud" => TokenRefusal::Audience,
        K::MissingRequiredClaim(c) if c == "iss" => TokenRefusal::Issuer,
        K::MissingRequiredClaim(_) | K::InvalidClaimFormat(_) | K::Json(_) => TokenRefusal::Claims,
        K::InvalidAlgorithm
        | K::InvalidAlgorithmName
        | K::InvalidKeyFormat
        | K::InvalidEcdsaKey
        | K::InvalidEddsaKey
        | K::InvalidRsaKey(_)
        | K::MissingAlgorithm => TokenRefusal::Algorithm,
        _ => TokenRefusal::Malformed,
    }
}

/// A NumericDate claim as whole seconds; a negative, fractional-overflow
/// or non-finite one is a claim of the wrong type.
fn seconds(v: Option<f64>) -> Result<Option<u64>, TokenRefusal> {
    match v {
        None => Ok(None),
        Some(t) if t.is_finite() && (0.0..1e15).contains(&t) => Ok(Some(t as u64)),
        Some(_) => Err(TokenRefusal::Claims),
    }
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str, now_secs: u64) -> Result<Claims, TokenRefusal> {
        let alg = header_alg(token)?;
        let key = if HMAC_ALGS.contains(&alg) {
            // An HMAC token where only a public key is set is refused
            // here: the public key is never used as a secret.
            self.hmac.as_ref().ok_or(TokenRefusal::Algorithm)?
        } else {
            match &self.public {
                Some((k, algs)) if algs.contains(&alg) => k,
                _ => return Err(TokenRefusal::Algorithm),
            }
        };
        // The header must also parse for the crate (typ, kid…): a header
        // it cannot read is malformed, so a JSON error after this is the
        // claims'.
        jsonwebtoken::decode_header(token).map_err(|_| TokenRefusal::Malformed)?;
        let mut v = Validation::new(alg);
        // Time is checked below with the session's clock.
        v.validate_exp = false;
        v.validate_nbf = false;
        v.required_spec_claims.clear();
        v.validate_aud = false;
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            v.validate_aud = true;
            v.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".into());
        }
        let data = jsonwebtoken::decode::<RawClaims>(token, key, &v).map_err(|e| refusal(&e))?;
        let c = data.claims;
        let (exp, nbf) = (seconds(c.exp)?, seconds(c.nbf)?);
        if nbf.is_some_and(|nbf| nbf > now_secs.saturating_add(self.leeway)) {
            return Err(TokenRefusal::NotYetValid);
        }
        if exp.is_some_and(|exp| exp.saturating_add(self.leeway) <= now_secs) {
            return Err(TokenRefusal::Expired);
        }
        if c.sub.is_empty() {
            return Err(TokenRefusal::Claims);
        }
        let list = |l: Vec<String>| -> Result<Vec<Box<str>>, TokenRefusal> {
            l.into_iter()
                .map(|p| match pattern::check_subscribe(&p) {
                    Ok(()) => Ok(p.into_boxed_str()),
                    Err(_) => Err(TokenRefusal::Claims),
                })
                .collect()
        };
        Ok(Claims {
            user: Arc::from(c.sub),
            expires_at: exp,
            subscribe: list(c.channels.subscribe)?,
            publish: list(c.channels.publish)?,
            history: list(c.channels.history)?,
            broadcast: c.broadcast,
        })
    }
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;

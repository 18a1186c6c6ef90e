//! Signed tokens, like `Phoenix.Token`: authenticate sockets without a
//! session store.
//!
//! Browsers send your cookies with a WebSocket opened by any site (only the
//! origin check stands in the way), and non-browser clients have no cookies,
//! so sockets authenticate with a token instead. At login, your HTTP app
//! signs the user id with a [`Token`] and hands it to the page; the client passes it to the socket, as a
//! connect param or as phoenix.js's `authToken` option; your
//! [`Socket::connect`](crate::Socket::connect) verifies it and stores the id
//! in the socket's [`Assigns`](crate::Assigns).
//!
//! Things to know:
//!
//! * **Signed, not encrypted.** The token is base64 JSON: anyone holding it
//!   can read the data. Sign ids, not secrets. What the signature gives is
//!   that nobody without the secret can make or alter a token.
//! * **Salts separate purposes.** A token signed with salt `"user socket"`
//!   never verifies with salt `"password reset"`, so a token handed out for
//!   one purpose cannot be replayed for another. The salt is not secret.
//! * **`max_age` bounds validity.** Every token carries the time it was
//!   signed; [`verify`](Token::verify) refuses it once older than the
//!   `max_age` it is given. There is no revocation: keep `max_age` as short
//!   as your pages live, and check the user still exists in `connect`.
//! * **The endpoint has one too.** LongPoll session tokens are signed with
//!   the endpoint's secret
//!   ([`secret_key_base`](crate::EndpointBuilder::secret_key_base)). They
//!   name the node that holds the session, and only that node verifies
//!   them, so LongPoll alone does not need a secret shared by the cluster.
//! * **Every node needs the same secret.** Load it from configuration (at
//!   least [`Token::MIN_SECRET_LEN`] random bytes); [`Token::generate`] only
//!   suits tests and single-process demos, since its tokens die with the
//!   process.
//!
//! ```
//! use std::time::Duration;
//!
//! use fawkes::token::Token;
//! use fawkes::{Assigns, ConnectInfo, Params, Refused, Socket};
//!
//! const SALT: &str = "user socket";
//! const MAX_AGE: Duration = Duration::from_secs(14 * 86_400);
//!
//! #[derive(Clone)]
//! struct UserId(u64);
//!
//! struct UserSocket {
//!     tokens: Token,
//! }
//!
//! impl Socket for UserSocket {
//!     async fn connect(&self, params: &Params, info: &ConnectInfo) -> Result<Assigns, Refused> {
//!         let token = info
//!             .auth_token
//!             .as_deref()
//!             .or(params.get_str("token"))
//!             .ok_or_else(Refused::new)?;
//!         let user_id: u64 = self
//!             .tokens
//!             .verify(SALT, token, MAX_AGE)
//!             .map_err(|_| Refused::new())?;
//!         Ok(Assigns::new().with(UserId(user_id)))
//!     }
//!
//!     fn id(&self, assigns: &Assigns) -> Option<String> {
//!         assigns.get::<UserId>().map(|u| format!("user_socket:{}", u.0))
//!     }
//! }
//!
//! // In production: `Token::new(secret_from_config)`, shared by every node.
//! let tokens = Token::generate();
//!
//! // At login, in your HTTP app: sign the user id and render it into the page.
//! let token = tokens.sign(SALT, &42u64);
//! // In the page:
//! //     const socket = new Socket("/socket", {params: {token}});
//! //     // or: new Socket("/socket", {authToken: token});
//! //     socket.connect();
//!
//! // What `connect` does with it.
//! assert_eq!(tokens.verify::<u64>(SALT, &token, MAX_AGE), Ok(42));
//!
//! // Mount it with `Endpoint::builder().socket("/socket", socket)`.
//! let _socket = UserSocket { tokens };
//! ```
//!
//! The format is `<payload>.<mac>`: the payload is the base64url (no
//! padding) of `{"d": data, "s": signed_at_unix_ms}`, the MAC is the
//! base64url of HMAC-SHA256 over the payload's text, keyed with
//! HMAC-SHA256(secret, `"fawkes.token." ++ salt`). It is not byte-compatible
//! with `Phoenix.Token`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Longer tokens are refused before any work: nothing legitimate is that big
/// in a query string or a header.
const MAX_TOKEN_LEN: usize = 64 * 1024;

/// How far in the future a token's signing time may be, for clocks of
/// different nodes that disagree.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Signs data into tokens and verifies them, with a secret.
///
/// Cheap to clone (the secret is shared). See the [module docs](self) for
/// what tokens are for and what they do not protect.
///
/// ```
/// use std::time::Duration;
/// use fawkes::token::{Token, TokenError};
///
/// let tokens = Token::new("a secret of at least thirty-two bytes, from config");
/// let token = tokens.sign("user socket", &42u64);
///
/// let day = Token::DEFAULT_MAX_AGE;
/// assert_eq!(tokens.verify::<u64>("user socket", &token, day), Ok(42));
/// assert_eq!(tokens.verify::<u64>("password reset", &token, day), Err(TokenError::Invalid));
/// ```
#[derive(Clone)]
pub struct Token {
    secret: Arc<[u8]>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret must not end up in logs.
        f.debug_struct("Token").finish_non_exhaustive()
    }
}

impl Token {
    /// Minimum secret length in bytes.
    pub const MIN_SECRET_LEN: usize = 32;

    /// `Phoenix.Token`'s default max age: one day.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(86_400);

    /// A signer with this secret. Every node that verifies the tokens needs
    /// the same secret; e.g. 64 characters from `openssl rand -base64 48`.
    ///
    /// # Panics
    ///
    /// If the secret is shorter than [`MIN_SECRET_LEN`](Self::MIN_SECRET_LEN)
    /// bytes: a configuration error, best caught at startup.
    pub fn new(secret: impl AsRef<[u8]>) -> Token {
        let secret = secret.as_ref();
        assert!(
            secret.len() >= Self::MIN_SECRET_LEN,
            "fawkes::token::Token secret is {} bytes, it must be at least {} \
             (e.g. 64 characters from `openssl rand -base64 48`)",
            secret.len(),
            Self::MIN_SECRET_LEN,
        );
        Token {
            secret: secret.into(),
        }
    }

    /// A signer with a random 64-byte secret. Its tokens are valid only in
    /// this process, until it exits: for tests and single-node demos.
    ///
    /// # Panics
    ///
    /// If the operating system's random number generator fails.
    pub fn generate() -> Token {
        let mut secret = [0u8; 64];
        getrandom::fill(&mut secret).expect("the OS random number generator failed");
        Token::new(secret)
    }

    /// Signs `data` for the purpose named by `salt`, as of now.
    ///
    /// The data is readable by whoever holds the token. Tokens longer than
    /// 64 KiB do not verify.
    ///
    /// # Panics
    ///
    /// If `data` cannot be serialized to JSON, as with a map keyed by tuples
    /// or structs: a bug in the caller's types, not a runtime condition
    /// worth a `Result` on every call.
    pub fn sign<T: Serialize + ?Sized>(&self, salt: &str, data: &T) -> String {
        self.sign_at(salt, data, SystemTime::now())
    }

    /// Signs `data` as if at `signed_at`, e.g. to issue a token that is
    /// already partly aged, or in tests. Times before 1970 count as 1970.
    ///
    /// # Panics
    ///
    /// As [`sign`](Self::sign).
    pub fn sign_at<T: Serialize + ?Sized>(
        &self,
        salt: &str,
        data: &T,
        signed_at: SystemTime,
    ) -> String {
        let payload = SignedPayload {
            d: data,
            s: unix_ms(signed_at),
        };
        let json = serde_json::to_vec(&payload)
            .expect("fawkes::token::Token::sign: the data failed to serialize to JSON");
        let payload = URL_SAFE_NO_PAD.encode(json);
        let mac = self.mac(salt, payload.as_bytes()).finalize().into_bytes();
        let mut token = payload;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(mac, &mut token);
        token
    }

    /// Verifies a token signed with `salt` no longer than `max_age` ago and
    /// returns its data.
    ///
    /// [`TokenError::Expired`] if it is older than `max_age`;
    /// [`TokenError::Invalid`] for anything else: malformed, signed with
    /// another secret or salt, altered, signed more than a minute in the
    /// future, or data that does not deserialize into `T`. Never panics,
    /// whatever the input.
    pub fn verify<T: DeserializeOwned>(
        &self,
        salt: &str,
        token: &str,
        max_age: Duration,
    ) -> Result<T, TokenError> {
        self.verify_at(salt, token, max_age, SystemTime::now())
    }

    fn verify_at<T: DeserializeOwned>(
        &self,
        salt: &str,
        token: &str,
        max_age: Duration,
        now: SystemTime,
    ) -> Result<T, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Invalid);
        }
        let (payload, mac) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| TokenError::Invalid)?;
        // Authenticate before parsing: untrusted bytes never reach the JSON
        // parser, and `verify_slice` compares in constant time.
        self.mac(salt, payload.as_bytes())
            .verify_slice(&mac)
            .map_err(|_| TokenError::Invalid)?;

        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let envelope: Envelope = serde_json::from_slice(&json).map_err(|_| TokenError::Invalid)?;
        let now = unix_ms(now);
        if envelope.s > now.saturating_add(CLOCK_SKEW.as_millis() as u64) {
            return Err(TokenError::Invalid);
        }
        if u128::from(now.saturating_sub(envelope.s)) > max_age.as_millis() {
            return Err(TokenError::Expired);
        }
        T::deserialize(envelope.d).map_err(|_| TokenError::Invalid)
    }

    /// The MAC for `salt`, fed with `payload`. The key is derived per salt,
    /// so tokens of one purpose never verify for another.
    fn mac(&self, salt: &str, payload: &[u8]) -> HmacSha256 {
        let mut kdf =
            HmacSha256::new_from_slice(&self.secret).expect("HMAC takes keys of any size");
        kdf.update(b"fawkes.token.");
        kdf.update(salt.as_bytes());
        let key = kdf.finalize().into_bytes();
        let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes keys of any size");
        mac.update(payload);
        mac
    }
}

/// The data of `token` read **without** checking its signature or age:
/// `None` if it is not shaped like one of our tokens or its data is not a
/// `T`. Never public, and never a basis for trust.
///
/// It exists for LongPoll routing only: a request can land on any node of a
/// cluster, and the node that received it reads which node holds the
/// session from the token, to forward the request there, without sharing
/// the secret of that node. That is safe because nothing is granted on the
/// strength of it: a forged node name only sends the request to that node
/// (or nowhere), and the session's own node then verifies the whole token
/// with its own secret before it touches any session.
pub(crate) fn unverified_data<T: DeserializeOwned>(token: &str) -> Option<T> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let (payload, _mac) = token.rsplit_once('.')?;
    let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let envelope: Envelope = serde_json::from_slice(&json).ok()?;
    T::deserialize(envelope.d).ok()
}

/// Why [`Token::verify`] refused a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Malformed, forged, altered, signed with another salt or secret, or
    /// holding data of another shape.
    #[error("invalid token")]
    Invalid,
    /// Genuine, but older than the `max_age` it was verified with.
    #[error("expired token")]
    Expired,
}

/// What a token's payload holds, when signing.
#[derive(Serialize)]
struct SignedPayload<'a, T: ?Sized> {
    d: &'a T,
    s: u64,
}

/// What a token's payload holds, when verifying; `d` is typed only once the
/// age is checked.
#[derive(Deserialize)]
struct Envelope {
    d: serde_json::Value,
    s: u64,
}

/// Milliseconds since the Unix epoch, 0 before it.
fn unix_ms(time: SystemTime) -> u64 {
    let ms = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SALT: &str = "user socket";
    const DAY: Duration = Token::DEFAULT_MAX_AGE;

    fn tokens() -> Token {
        Token::new([7u8; 32])
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct User {
        id: u64,
        name: String,
        roles: Vec<String>,
    }

    #[test]
    fn round_trips_several_types() {
        let t = tokens();
        assert_eq!(t.verify::<u64>(SALT, &t.sign(SALT, &42u64), DAY), Ok(42));
        assert_eq!(
            t.verify::<String>(SALT, &t.sign(SALT, "héllo \"world\""), DAY),
            Ok("héllo \"world\"".to_owned())
        );
        let user = User {
            id: 7,
            name: "ann".into(),
            roles: vec!["admin".into()],
        };
        assert_eq!(t.verify::<User>(SALT, &t.sign(SALT, &user), DAY), Ok(user));
        let nested = json!({"a": [1, 2.5, null, {"b": true}], "c": {"d": "é"}});
        assert_eq!(
            t.verify::<Value>(SALT, &t.sign(SALT, &nested), DAY),
            Ok(nested)
        );
        assert_eq!(
            t.verify::<Option<u8>>(SALT, &t.sign(SALT, &None::<u8>), DAY),
            Ok(None)
        );
    }

    #[test]
    fn token_has_the_documented_format() {
        let t = tokens();
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let token = t.sign_at(SALT, &42u64, at);
        let (payload, mac) = token.split_once('.').unwrap();
        let json: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        assert_eq!(json, json!({"d": 42, "s": 1_700_000_000_123u64}));
        assert_eq!(URL_SAFE_NO_PAD.decode(mac).unwrap().len(), 32);
    }

    #[test]
    fn wrong_salt_or_secret_is_invalid() {
        let t = tokens();
        let token = t.sign(SALT, &42u64);
        assert_eq!(
            t.verify::<u64>("other", &token, DAY),
            Err(TokenError::Invalid)
        );
        assert_eq!(t.verify::<u64>("", &token, DAY), Err(TokenError::Invalid));
        let other = Token::new([8u8; 32]);
        assert_eq!(
            other.verify::<u64>(SALT, &token, DAY),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            Token::generate().verify::<u64>(SALT, &token, DAY),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn every_single_character_change_is_invalid() {
        let t = tokens();
        let token = t.sign(SALT, &json!({"user": 42, "admin": false}));
        let alphabet: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ é"
                .chars()
                .collect();
        let original: Vec<char> = token.chars().collect();
        for i in 0..original.len() {
            for &c in &alphabet {
                if c == original[i] {
                    continue;
                }
                let mut tampered = original.clone();
                tampered[i] = c;
                let tampered: String = tampered.into_iter().collect();
                assert_eq!(
                    t.verify::<Value>(SALT, &tampered, DAY),
                    Err(TokenError::Invalid),
                    "{tampered}"
                );
            }
            // Dropping or doubling a character.
            let mut removed = original.clone();
            removed.remove(i);
            let removed: String = removed.into_iter().collect();
            assert_eq!(
                t.verify::<Value>(SALT, &removed, DAY),
                Err(TokenError::Invalid)
            );
            let mut doubled = original.clone();
            doubled.insert(i, original[i]);
            let doubled: String = doubled.into_iter().collect();
            assert_eq!(
                t.verify::<Value>(SALT, &doubled, DAY),
                Err(TokenError::Invalid)
            );
        }
    }

    #[test]
    fn malformed_input_is_invalid() {
        let t = tokens();
        let token = t.sign(SALT, &42u64);
        let (payload, mac) = token.split_once('.').unwrap();
        let huge = format!("{payload}.{mac}{}", "A".repeat(MAX_TOKEN_LEN));
        let inputs = [
            "",
            ".",
            "..",
            "abc",
            "abc.",
            ".abc",
            "not a token",
            "%%%.%%%",
            "é.é",
            "\0.\0",
            payload,
            mac,
            &token[..token.len() - 1],
            &token[..token.len() / 2],
            &huge,
        ];
        for input in inputs {
            assert_eq!(
                t.verify::<u64>(SALT, input, DAY),
                Err(TokenError::Invalid),
                "{input:?}"
            );
        }
        assert_eq!(
            t.verify::<u64>(SALT, &format!("{token}."), DAY),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            t.verify::<u64>(SALT, &format!(".{token}"), DAY),
            Err(TokenError::Invalid)
        );
        // Padded base64 is not the format.
        assert_eq!(
            t.verify::<u64>(SALT, &format!("{token}="), DAY),
            Err(TokenError::Invalid)
        );
    }

    /// Signs `payload` (any bytes, not necessarily our JSON) with a valid MAC.
    fn forge(t: &Token, payload: &[u8]) -> String {
        let payload = URL_SAFE_NO_PAD.encode(payload);
        let mac = t.mac(SALT, payload.as_bytes()).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    #[test]
    fn validly_signed_but_wrong_payload_is_invalid() {
        let t = tokens();
        let now = SystemTime::now();
        let s = unix_ms(now);
        let payloads = [
            b"".to_vec(),
            b"not json".to_vec(),
            b"42".to_vec(),
            b"{}".to_vec(),
            json!({"d": 1}).to_string().into_bytes(),
            json!({"s": s}).to_string().into_bytes(),
            json!({"d": 1, "s": -1}).to_string().into_bytes(),
            json!({"d": 1, "s": "now"}).to_string().into_bytes(),
            vec![0xff, 0xfe, 0x00],
        ];
        for payload in payloads {
            let token = forge(&t, &payload);
            assert_eq!(
                t.verify_at::<u64>(SALT, &token, DAY, now),
                Err(TokenError::Invalid)
            );
        }
        // A genuine token whose data is not a `T`.
        let token = t.sign(SALT, "forty-two");
        assert_eq!(t.verify::<u64>(SALT, &token, DAY), Err(TokenError::Invalid));
        assert_eq!(
            t.verify::<User>(SALT, &token, DAY),
            Err(TokenError::Invalid)
        );
        let token = t.sign(SALT, &300u64);
        assert_eq!(t.verify::<u8>(SALT, &token, DAY), Err(TokenError::Invalid));
    }

    #[test]
    fn expires_after_max_age() {
        let t = tokens();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let max_age = Duration::from_secs(3600);
        let check = |age: Duration| {
            let token = t.sign_at(SALT, &42u64, now - age);
            t.verify_at::<u64>(SALT, &token, max_age, now)
        };
        assert_eq!(check(Duration::ZERO), Ok(42));
        assert_eq!(check(max_age), Ok(42));
        assert_eq!(
            check(max_age + Duration::from_millis(1)),
            Err(TokenError::Expired)
        );
        assert_eq!(check(DAY * 365), Err(TokenError::Expired));

        // Through the public API, with the real clock.
        let token = t.sign_at(SALT, &42u64, SystemTime::now() - DAY * 2);
        assert_eq!(t.verify::<u64>(SALT, &token, DAY), Err(TokenError::Expired));
        let token = t.sign_at(SALT, &42u64, SystemTime::now() - DAY / 2);
        assert_eq!(t.verify::<u64>(SALT, &token, DAY), Ok(42));
        // A zero max age accepts only tokens signed in the same millisecond.
        let token = t.sign_at(SALT, &42u64, now);
        assert_eq!(
            t.verify_at::<u64>(SALT, &token, Duration::ZERO, now),
            Ok(42)
        );
        // An unbounded max age never expires.
        let token = t.sign_at(SALT, &42u64, UNIX_EPOCH);
        assert_eq!(t.verify::<u64>(SALT, &token, Duration::MAX), Ok(42));
    }

    #[test]
    fn signed_in_the_future_beyond_skew_is_invalid() {
        let t = tokens();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let check = |ahead: Duration| {
            let token = t.sign_at(SALT, &42u64, now + ahead);
            t.verify_at::<u64>(SALT, &token, DAY, now)
        };
        assert_eq!(check(Duration::from_secs(1)), Ok(42));
        assert_eq!(check(CLOCK_SKEW), Ok(42));
        assert_eq!(
            check(CLOCK_SKEW + Duration::from_millis(1)),
            Err(TokenError::Invalid)
        );
        assert_eq!(check(DAY), Err(TokenError::Invalid));
    }

    #[test]
    fn before_the_epoch_counts_as_the_epoch() {
        let t = tokens();
        let token = t.sign_at(SALT, &42u64, UNIX_EPOCH - Duration::from_secs(10));
        assert_eq!(t.verify_at::<u64>(SALT, &token, DAY, UNIX_EPOCH), Ok(42));
        assert_eq!(t.verify::<u64>(SALT, &token, DAY), Err(TokenError::Expired));
    }

    #[test]
    #[should_panic(expected = "at least 32")]
    fn short_secret_panics() {
        let _ = Token::new("too short");
    }

    #[test]
    fn secret_of_exactly_min_len_is_accepted() {
        let t = Token::new([1u8; Token::MIN_SECRET_LEN]);
        assert_eq!(t.verify::<u64>(SALT, &t.sign(SALT, &1u64), DAY), Ok(1));
    }

    #[test]
    fn generated_secrets_differ() {
        let (a, b) = (Token::generate(), Token::generate());
        assert_eq!(a.secret.len(), 64);
        assert_ne!(a.secret, b.secret);
    }

    #[test]
    fn debug_hides_the_secret() {
        let t = Token::new("super-secret-value-that-must-not-leak");
        let t2 = t.clone();
        assert_eq!(format!("{t:?}"), "Token { .. }");
        assert!(!format!("{t2:#?}").contains("super"));
    }

    #[test]
    fn unverified_data_reads_the_payload_of_any_secret_and_never_panics() {
        let token = Token::generate().sign(SALT, &json!({"n": "node-a", "i": "42"}));
        assert_eq!(
            unverified_data::<Value>(&token),
            Some(json!({"n": "node-a", "i": "42"}))
        );
        // A forged MAC does not matter to it: it proves nothing.
        let (payload, _) = token.rsplit_once('.').unwrap();
        assert_eq!(
            unverified_data::<Value>(&format!("{payload}.forged")),
            Some(json!({"n": "node-a", "i": "42"}))
        );
        assert_eq!(unverified_data::<u64>(&token), None);
        let huge = format!("{payload}{}.x", "A".repeat(MAX_TOKEN_LEN));
        for input in ["", ".", "abc", "%%%.%%%", "é.é", payload, &huge] {
            assert_eq!(unverified_data::<Value>(input), None, "{input:?}");
        }
        let not_ours = format!("{}.x", URL_SAFE_NO_PAD.encode(b"{\"d\":1}"));
        assert_eq!(unverified_data::<Value>(&not_ours), None);
    }

    #[test]
    fn errors_display() {
        assert_eq!(TokenError::Invalid.to_string(), "invalid token");
        assert_eq!(TokenError::Expired.to_string(), "expired token");
    }
}

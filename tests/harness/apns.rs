//! APNS side of the tests: the HTTP/2 simulator in-process, with a fresh
//! PKI and provider key written to a temporary directory, and `[[apps]]`
//! config text pointing the gateway at it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pushbridge::simulator::http2::{Options, Simulator};
use pushbridge::simulator::Recorder;
use pushbridge::tls::TestPki;

pub const KEY_ID: &str = "KEYID12345";
pub const TEAM_ID: &str = "TEAM123456";

/// Credentials on disk for both auth methods.
pub struct Creds {
    pub pki: TestPki,
    pub ca_file: PathBuf,
    pub p8_file: PathBuf,
    pub p8_public_pem: String,
    pub client_pem: PathBuf,
}

impl Creds {
    pub fn new(dir: &Path) -> Creds {
        let pki = TestPki::generate().unwrap();
        let ca_file = dir.join("sim-ca.pem");
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let p8_file = dir.join("AuthKey_KEYID12345.p8");
        std::fs::write(&p8_file, kp.serialize_pem()).unwrap();
        let (cert, key) = pki.issue_client("com.example.chat").unwrap();
        let client_pem = dir.join("client.pem");
        std::fs::write(&client_pem, format!("{cert}{key}")).unwrap();
        Creds {
            pki,
            ca_file,
            p8_file,
            p8_public_pem: kp.public_key_pem(),
            client_pem,
        }
    }

    /// Simulator options verifying our JWTs (and accepting our client certs
    /// when `certs`).
    pub fn options(&self, certs: bool) -> Options {
        Options {
            jwt_key: Some(Arc::new(
                jsonwebtoken::DecodingKey::from_ec_pem(self.p8_public_pem.as_bytes()).unwrap(),
            )),
            team_id: Some(TEAM_ID.to_owned()),
            client_certs: certs,
            ..Options::default()
        }
    }

    /// Start a simulator on `addr` ("127.0.0.1:0" for a free port).
    pub async fn simulator(&self, addr: &str, options: Options) -> Simulator {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let client_ca = [self.pki.ca_der()];
        let tls = pushbridge::tls::server_config(
            self.pki.server_identity().unwrap(),
            options.client_certs.then_some(&client_ca[..]),
            &[b"h2"],
        )
        .unwrap();
        Simulator::start(listener, tls, options, Recorder::new(true, None)).unwrap()
    }

    /// `[[apps]]` keys for token auth against `endpoint`.
    pub fn token_app(&self, endpoint: &str) -> String {
        format!(
            "protocol = \"http2\"\nendpoint = \"{endpoint}\"\nca_file = {ca:?}\nkey_file = {p8:?}\nkey_id = \"{KEY_ID}\"\nteam_id = \"{TEAM_ID}\"\n",
            ca = self.ca_file.display().to_string(),
            p8 = self.p8_file.display().to_string(),
        )
    }

    /// `[[apps]]` keys for certificate auth (combined PEM) against `endpoint`.
    pub fn cert_app(&self, endpoint: &str) -> String {
        format!(
            "protocol = \"http2\"\nendpoint = \"{endpoint}\"\nca_file = {ca:?}\ncert_file = {cert:?}\n",
            ca = self.ca_file.display().to_string(),
            cert = self.client_pem.display().to_string(),
        )
    }
}

/// A whole config: the http2 app (`app_keys`), store in `dir`, line
/// listener on a free port.
pub fn http2_config(dir: &Path, app_keys: &str, extra: &str) -> String {
    format!(
        "[store]\npath = {db:?}\nsynchronous = \"normal\"\n\n[[apps]]\ntopic = \"{topic}\"\n{app_keys}\n{extra}\n[gateway]\nshutdown_grace = 5\n\n[[adapters.line]]\nlisten = \"127.0.0.1:0\"\n",
        db = dir.join("pushbridge.db").display().to_string(),
        topic = super::TOPIC,
    )
}

impl Creds {
    /// A binary gateway + feedback simulator requiring our client certificates.
    pub async fn binary_simulator(
        &self,
        addr: &str,
        options: pushbridge::simulator::binary::Options,
    ) -> pushbridge::simulator::binary::Simulator {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let feedback = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = pushbridge::tls::server_config(self.pki.server_identity().unwrap(), Some(&[self.pki.ca_der()]), &[])
            .unwrap();
        pushbridge::simulator::binary::Simulator::start(
            listener,
            Some(feedback),
            tls,
            options,
            Recorder::new(true, None),
        )
        .unwrap()
    }

    /// `[[apps]]` keys for the binary protocol against a binary simulator.
    pub fn binary_app(&self, sim: &pushbridge::simulator::binary::Simulator) -> String {
        format!(
            "protocol = \"binary\"\nendpoint = \"{}\"\nfeedback_endpoint = \"{}\"\nca_file = {:?}\ncert_file = {:?}\nbinary_confirm_ms = 100\n",
            sim.addr(),
            sim.feedback_addr().unwrap(),
            self.ca_file.display().to_string(),
            self.client_pem.display().to_string(),
        )
    }
}

//! A real IRC network for tests: Debian's InspIRCd 3 with Atheme services
//! linked, on loopback, from temporary configs ([`Net`]), raw IRC clients
//! ([`Irc`], logging in with SASL PLAIN) and NickServ accounts
//! ([`create_account`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::free_port;

pub const INSPIRCD: &str = "/usr/sbin/inspircd";
pub const ATHEME: &str = "/usr/bin/atheme-services";

/// InspIRCd + Atheme in `dir`.
pub struct Net {
    dir: PathBuf,
    pub client_port: u16,
    server_port: u16,
    ircd: Option<Child>,
    services: Option<Child>,
    starts: usize,
}

impl Net {
    pub fn new(dir: &Path) -> Net {
        let n = Net {
            dir: dir.to_owned(),
            client_port: free_port(),
            server_port: free_port(),
            ircd: None,
            services: None,
            starts: 0,
        };
        std::fs::create_dir_all(dir.join("atheme-data")).unwrap();
        n.write_configs();
        n
    }

    fn write_configs(&self) {
        let d = self.dir.display();
        std::fs::write(
            self.dir.join("inspircd.conf"),
            format!(
                r#"<server name="irc.localhost" description="pushbridge test" network="PushTest">
<admin name="test" nick="test" email="test@localhost">
<bind address="127.0.0.1" port="{cp}" type="clients">
<bind address="127.0.0.1" port="{sp}" type="servers">
<connect name="main" allow="*" localmax="1000" globalmax="1000" useident="no" resolvehostnames="no" threshold="1000" commandrate="100000" fakelag="no" maxchans="50" timeout="20" pingfreq="120" sendq="1048576" recvq="65536">
<pid file="{d}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{d}/inspircd.log">
<performance nouserdns="yes">
<module name="cap">
<module name="ircv3">
<module name="ircv3_accounttag">
<module name="ircv3_servertime">
<module name="ircv3_ctctags">
<module name="ircv3_msgid">
<module name="ircv3_echomessage">
<module name="ircv3_capnotify">
<module name="monitor">
<module name="services_account">
<module name="sasl">
<module name="svshold">
<module name="chghost">
<module name="spanningtree">
<ircv3 accountnotify="yes" awaynotify="yes" extendedjoin="yes">
<monitor maxentries="100">
<sasl target="services.localhost" requiressl="no">
<link name="services.localhost" ipaddr="127.0.0.1" port="{sp}" allowmask="127.0.0.0/8" sendpass="linkpass" recvpass="linkpass">
<uline server="services.localhost" silent="yes">
"#,
                cp = self.client_port,
                sp = self.server_port
            ),
        )
        .unwrap();
        let modules = [
            "protocol/inspircd",
            "backend/opensex",
            "crypto/pbkdf2v2",
            "nickserv/main",
            "nickserv/register",
            "nickserv/identify",
            "nickserv/info",
            "nickserv/status",
            "nickserv/ghost",
            "nickserv/set_core",
            "saslserv/main",
            "saslserv/plain",
        ];
        let mut conf: String = modules
            .iter()
            .map(|m| format!("loadmodule \"modules/{m}\";\n"))
            .collect();
        conf.push_str(&format!(
            r##"serverinfo {{
	name = "services.localhost"; desc = "Atheme"; numeric = "00A"; recontime = 2;
	netname = "PushTest"; hidehostsuffix = "users.test"; adminname = "test";
	adminemail = "admin@localhost"; registeremail = "noreply@localhost"; auth = none;
	loglevel = {{ admin; error; info; network; }};
	maxlogins = 5; maxusers = 5; maxnicks = 5; maxchans = 5; mdlimit = 30; emaillimit = 10; emailtime = 300;
}};
uplink "irc.localhost" {{ host = "127.0.0.1"; port = {sp}; send_password = "linkpass"; receive_password = "linkpass"; }};
nickserv {{ nick = "NickServ"; user = "NickServ"; host = "services.localhost"; real = "Nickname Services"; }};
saslserv {{ nick = "SaslServ"; user = "SaslServ"; host = "services.localhost"; real = "SASL"; }};
general {{
	helpchan = "#help"; helpurl = "http://localhost/"; join_chans; leave_chans;
	uflags = {{ hidemail; }}; cflags = {{ guard; verbose; }};
	flood_msgs = 100; flood_time = 10; ratelimit_uses = 1000; ratelimit_period = 60;
	kline_time = 7; commit_interval = 1; default_clone_allowed = 1000; default_clone_warn = 1000;
	clone_time = 0; uplink_sendq_limit = 1048576; language = "en";
}};
logfile "{d}/atheme.log" {{ debug; }};
"##,
            sp = self.server_port
        ));
        std::fs::write(self.dir.join("atheme.conf"), conf).unwrap();
    }

    pub fn atheme_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("atheme.log")).unwrap_or_default()
    }

    pub fn start(&mut self) {
        let d = &self.dir;
        self.ircd = Some(
            Command::new(INSPIRCD)
                .arg("--config")
                .arg(d.join("inspircd.conf"))
                .args(["--nofork", "--runasroot"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(Instant::now() < deadline, "inspircd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let synced_before = self.atheme_log().matches("finished synching with uplink").count();
        self.services = Some(
            Command::new(ATHEME)
                .arg("-n")
                .arg("-c")
                .arg(d.join("atheme.conf"))
                .arg("-D")
                .arg(d.join("atheme-data"))
                .arg("-l")
                .arg(d.join("atheme.log"))
                .arg("-p")
                .arg(d.join("atheme.pid"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        while self.atheme_log().matches("finished synching with uplink").count() <= synced_before {
            assert!(Instant::now() < deadline, "atheme did not link:\n{}", self.atheme_log());
            std::thread::sleep(Duration::from_millis(50));
        }
        self.starts += 1;
    }

    pub fn stop(&mut self) {
        for child in [self.services.take(), self.ircd.take()].into_iter().flatten() {
            let mut child = child;
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A raw IRC client.
pub struct Irc {
    nick: String,
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    w: OwnedWriteHalf,
}

impl Irc {
    /// Connect as `nick`; with `sasl`, log in to that account first.
    pub async fn connect(port: u16, nick: &str, sasl: Option<(&str, &str)>) -> Irc {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (r, w) = s.into_split();
        let mut c = Irc {
            nick: nick.to_owned(),
            lines: BufReader::new(r).lines(),
            w,
        };
        if let Some((account, password)) = sasl {
            c.send("CAP REQ :sasl").await;
            c.send(&format!("NICK {nick}")).await;
            c.send(&format!("USER {nick} 0 * :{nick}")).await;
            c.expect(|l| l.contains(" ACK ")).await;
            c.send("AUTHENTICATE PLAIN").await;
            c.expect(|l| l.contains("AUTHENTICATE")).await;
            let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{account}\0{account}\0{password}"));
            c.send(&format!("AUTHENTICATE {b64}")).await;
            c.expect(|l| l.contains(" 903 ")).await;
            c.send("CAP END").await;
        } else {
            c.send(&format!("NICK {nick}")).await;
            c.send(&format!("USER {nick} 0 * :{nick}")).await;
        }
        c.expect(|l| l.contains(" 001 ")).await;
        c
    }

    pub async fn send(&mut self, l: &str) {
        self.w.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
    }

    /// Read until a line matches (answering PINGs); the line.
    pub async fn expect(&mut self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let l = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("{}: timed out waiting", self.nick))
                .unwrap()
                .unwrap_or_else(|| panic!("{}: connection closed", self.nick));
            if let Some(p) = l.strip_prefix("PING ") {
                self.send(&format!("PONG {p}")).await;
            }
            if pred(&l) {
                return l;
            }
        }
    }

    /// The next line within `within` (answering PINGs); `None` on timeout.
    /// Panics when the connection closes.
    pub async fn next_line(&mut self, within: Duration) -> Option<String> {
        let l = tokio::time::timeout(within, self.lines.next_line()).await.ok()?;
        let l = l.unwrap().unwrap_or_else(|| panic!("{}: connection closed", self.nick));
        if let Some(p) = l.strip_prefix("PING ") {
            self.send(&format!("PONG {p}")).await;
        }
        Some(l)
    }

    pub async fn join(&mut self, chan: &str) {
        self.send(&format!("JOIN {chan}")).await;
        let me = format!(":{}!", self.nick);
        self.expect(|l| l.starts_with(&me) && l.contains(" JOIN ")).await;
    }

    /// A private command to the bot; its NOTICE answer.
    pub async fn ask(&mut self, bot: &str, text: &str) -> String {
        self.send(&format!("PRIVMSG {bot} :{text}")).await;
        let from = format!(":{bot}!");
        self.expect(|l| l.starts_with(&from) && l.contains(" NOTICE ")).await
    }

    pub async fn quit(mut self) {
        self.send("QUIT :bye").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(Some(_)) = self.lines.next_line().await {}
        })
        .await;
    }
}

/// Create a NickServ account.
pub async fn create_account(port: u16, name: &str) {
    let mut c = Irc::connect(port, name, None).await;
    c.send(&format!("PRIVMSG NickServ :REGISTER {name}-pass {name}@example.org"))
        .await;
    c.expect(|l| l.contains(" 900 ")).await;
    c.quit().await;
}

/// Whether InspIRCd and Atheme are installed. Under `CI=true` missing ones
/// fail the test; elsewhere the test says why it did nothing.
pub fn installed() -> bool {
    if Path::new(INSPIRCD).exists() && Path::new(ATHEME).exists() {
        return true;
    }
    let why =
        "inspircd and atheme-services are not installed (apt-get install inspircd atheme-services; .ci/setup does)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and {why}");
    }
    eprintln!("SKIPPED (not counted as passing): {why}");
    false
}

//! The IRC adapter against a real network: Debian's InspIRCd 3 with Atheme
//! services linked, on loopback, from temporary configs. Test users are
//! raw IRC clients with real NickServ accounts, logging in with SASL PLAIN.

mod harness;

use std::path::Path;
use std::time::{Duration, Instant};

use harness::admin::{assert_connected, wait_status};
use harness::irc::{create_account, Irc, Net, ATHEME, INSPIRCD};
use harness::{config_text, token, Gateway};

fn wait_log(gw: &Gateway, what: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.logs().matches(what).count() < n {
        assert!(Instant::now() < deadline, "waiting for {n}x {what:?}:\n{}", gw.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The gateway's log line when the bot reports `account`'s presence.
fn presence_log(account: &str, presence: &str) -> String {
    format!("user=irc:test:{account} presence={presence}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspircd_highlights_presence_accounts_and_restart() {
    if !Path::new(INSPIRCD).exists() || !Path::new(ATHEME).exists() {
        let why =
            "inspircd and atheme-services are not installed (apt-get install inspircd atheme-services; .ci/setup does)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true and {why}");
        }
        eprintln!("SKIPPING the InspIRCd integration test: {why}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut net = Net::new(dir.path());
    net.start();
    let s = Scene::start(dir.path(), net.client_port).await;
    let mut bob = s.alice_registers_and_is_highlighted_while_offline().await;
    let mut alice = s.alice_back_then_away(&mut bob).await;
    let mallory = s.devices_only_for_own_accounts(&mut alice, &mut bob).await;
    s.tell_pushes(&mut bob).await;
    s.a_guest_with_alices_nick_is_not_alice(alice, &mut bob).await;

    // The IRC server restarts: the bot reconnects, re-joins and keeps working.
    drop((bob, mallory));
    net.stop();
    let admin = s.gw.admin_url();
    let body = wait_status(&format!("{admin}/readyz"), 503, Duration::from_secs(30), || s.gw.logs()).await;
    assert!(body.contains(r#""adapter":"irc:test""#), "{body}");
    net.start();
    let bob = s.works_after_the_restart().await;
    assert_connected(&s.gw, "irc:test", "irc").await;
    s.alice_mutes_the_channel_and_sets_quiet_hours(bob).await;
}

/// The gateway with the bot on the test network, the accounts alice, bob
/// and mallory, and their device tokens; one method per step of the test.
struct Scene {
    gw: Gateway,
    port: u16,
    alice_token: String,
    mallory_token: String,
}

impl Scene {
    /// Create the accounts, start the gateway, wait for the bot to be
    /// registered and logged in to services.
    async fn start(dir: &Path, port: u16) -> Scene {
        tokio::join!(
            create_account(port, "alice"),
            create_account(port, "bob"),
            create_account(port, "mallory"),
            create_account(port, "pushbot")
        );
        let text = format!(
            "{}\n[[adapters.irc]]\nnetwork = \"test\"\nserver = \"127.0.0.1:{port}\"\nnick = \"pushbot\"\nchannels = [\"#chat\"]\nsasl_account = \"pushbot\"\nsasl_password = \"pushbot-pass\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            config_text(dir, "", "")
        );
        let gw = Gateway::start(dir, &text);
        wait_log(&gw, "registered on the IRC network", 1);
        wait_log(&gw, "logged in to services adapter=\"irc:test\" account=pushbot", 1);
        assert_connected(&gw, "irc:test", "irc").await;
        Scene {
            gw,
            port,
            alice_token: token(0xa11ce),
            mallory_token: token(0xbad),
        }
    }

    /// alice logs in, registers her phone with the bot, and leaves; bob
    /// highlights her: one push. bob, in #chat, is returned.
    async fn alice_registers_and_is_highlighted_while_offline(&self) -> Irc {
        let (gw, port, alice_token) = (&self.gw, self.port, &self.alice_token);
        let (mut alice, mut bob) = tokio::join!(
            Irc::connect(port, "alice", Some(("alice", "alice-pass"))),
            Irc::connect(port, "bob", Some(("bob", "bob-pass")))
        );
        alice.join("#chat").await;
        bob.join("#chat").await;
        let answer = alice.ask("pushbot", &format!("REGISTER {alice_token}")).await;
        assert!(answer.contains("registered for account alice"), "{answer}");
        wait_log(gw, &presence_log("alice", "Online"), 1);
        alice.quit().await;
        wait_log(gw, &presence_log("alice", "Offline"), 1);

        // bob highlights her: one push, with bob, #chat and the text.
        bob.send("PRIVMSG #chat :\x02alice\x02: lunch at noon?").await;
        let p = gw.wait_pushes(1);
        assert_eq!(p[0]["device_token"], alice_token.as_str());
        assert_eq!(p[0]["payload"]["aps"]["alert"]["title"], "bob in #chat");
        assert_eq!(p[0]["payload"]["aps"]["alert"]["body"], "alice: lunch at noon?");
        // Not a highlight: no push.
        bob.send("PRIVMSG #chat :malice is not a name").await;
        bob
    }

    /// alice is back: no push; she goes away: pushes again. alice, away in
    /// #chat, is returned.
    async fn alice_back_then_away(&self, bob: &mut Irc) -> Irc {
        let gw = &self.gw;
        let mut alice = Irc::connect(self.port, "alice", Some(("alice", "alice-pass"))).await;
        alice.join("#chat").await;
        wait_log(gw, &presence_log("alice", "Online"), 2);
        bob.send("PRIVMSG #chat :alice, welcome back").await;
        gw.assert_pushes_stay(1);

        // alice goes away: pushes again.
        alice.send("AWAY :in a meeting").await;
        wait_log(gw, &presence_log("alice", "Away"), 1);
        bob.send("PRIVMSG #chat :ALICE are you there?").await;
        let p = gw.wait_pushes(2);
        assert_eq!(p[1]["payload"]["aps"]["alert"]["body"], "ALICE are you there?");
        alice
    }

    /// mallory, not logged in, cannot register a device; logged in as
    /// herself, she registers one for her own account, never for alice.
    /// mallory's connection is returned.
    async fn devices_only_for_own_accounts(&self, alice: &mut Irc, bob: &mut Irc) -> Irc {
        let (gw, port, mallory_token) = (&self.gw, self.port, &self.mallory_token);
        let mut guest = Irc::connect(port, "mallory", None).await;
        let answer = guest.ask("pushbot", &format!("REGISTER {mallory_token}")).await;
        assert!(answer.contains("not logged in"), "{answer}");
        guest.quit().await;
        let mut mallory = Irc::connect(port, "mallory2", Some(("mallory", "mallory-pass"))).await;
        let answer = mallory.ask("pushbot", &format!("REGISTER {mallory_token}")).await;
        assert!(answer.contains("account mallory"), "{answer}");
        let status = alice.ask("pushbot", "STATUS").await;
        assert!(status.contains("Account alice: 1 device(s)"), "{status}");
        bob.send("PRIVMSG #chat :alice: still away?").await;
        let p = gw.wait_pushes(3);
        assert_eq!(p[2]["device_token"], self.alice_token.as_str(), "only alice's device");
        gw.assert_pushes_stay(3);
        mallory
    }

    /// TELL: a private message pushed through the bot.
    async fn tell_pushes(&self, bob: &mut Irc) {
        let answer = bob.ask("pushbot", "TELL alice call me when you are back").await;
        assert!(answer.contains("Pushed to alice"), "{answer}");
        let p = self.gw.wait_pushes(4);
        assert_eq!(p[3]["payload"]["aps"]["alert"]["title"], "bob");
        assert_eq!(p[3]["payload"]["aps"]["alert"]["body"], "call me when you are back");
    }

    /// alice leaves the channel and the network; a guest takes her nick and
    /// tries to register a device on her account: refused.
    async fn a_guest_with_alices_nick_is_not_alice(&self, mut alice: Irc, bob: &mut Irc) {
        let gw = &self.gw;
        alice.send("PART #chat").await;
        alice.quit().await;
        wait_log(gw, &presence_log("alice", "Offline"), 2);
        let mut guest = Irc::connect(self.port, "alice", None).await;
        let answer = guest.ask("pushbot", &format!("REGISTER {}", self.mallory_token)).await;
        assert!(answer.contains("not logged in"), "{answer}");
        let answer = guest.ask("pushbot", "STATUS").await;
        assert!(answer.contains("not logged in"), "{answer}");
        let status = bob.ask("pushbot", "TELL alice are you there?").await;
        assert!(
            status.contains("Pushed to alice (1 device(s))"),
            "the guest holding her nick is not alice: {status}"
        );
        let p = gw.wait_pushes(5);
        assert_eq!(p[4]["device_token"], self.alice_token.as_str());
        guest.quit().await;
    }

    /// After the IRC server restarted: the bot is back in #chat (bob sees
    /// it in NAMES), logged in again, and alice (offline) gets highlights.
    /// bob, in #chat, is returned.
    async fn works_after_the_restart(&self) -> Irc {
        let gw = &self.gw;
        wait_log(gw, "registered on the IRC network", 2);
        let mut bob = Irc::connect(self.port, "bob", Some(("bob", "bob-pass"))).await;
        bob.join("#chat").await;
        // The bot is back in #chat (bob sees it in NAMES) and alice is offline.
        bob.send("NAMES #chat").await;
        bob.expect(|l| l.contains(" 353 ") && l.contains("pushbot")).await;
        bob.send("PRIVMSG #chat :alice: the server restarted").await;
        let p = gw.wait_pushes(6);
        assert_eq!(p[5]["payload"]["aps"]["alert"]["body"], "alice: the server restarted");
        assert_eq!(p[5]["device_token"], self.alice_token.as_str());
        wait_log(gw, "logged in to services adapter=\"irc:test\" account=pushbot", 2);
        // A /me action names its actor in the body (issue 15, case 3).
        bob.send("PRIVMSG #chat :\x01ACTION waves at alice\x01").await;
        let p = gw.wait_pushes(7);
        assert_eq!(p[6]["payload"]["aps"]["alert"]["title"], "bob in #chat");
        assert_eq!(p[6]["payload"]["aps"]["alert"]["body"], "* bob waves at alice");
        bob
    }

    /// alice, logged in, mutes #chat (typed in another case) and sets quiet
    /// hours around now; STATUS shows both. Away, she is highlighted: a
    /// badge-only push; unmuted, a silent one.
    async fn alice_mutes_the_channel_and_sets_quiet_hours(&self, mut bob: Irc) {
        let gw = &self.gw;
        let mut alice = Irc::connect(self.port, "alice", Some(("alice", "alice-pass"))).await;
        let answer = alice.ask("pushbot", "MUTE #CHAT 5").await;
        assert!(answer.contains("Muted #chat for 5 minute(s)"), "{answer}");
        let minute = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 60
            % 1440;
        let at = |m: u64| format!("{:02}:{:02}", m / 60, m % 60);
        let hours = format!("{}-{}", at((minute + 1380) % 1440), at((minute + 60) % 1440));
        let answer = alice.ask("pushbot", &format!("QUIET {hours} UTC")).await;
        assert!(answer.contains(&format!("Quiet hours {hours} UTC")), "{answer}");
        let answer = alice.ask("pushbot", "QUIET 22:00-07:00 Nowhere/Atlantis").await;
        assert!(answer.contains("unknown time zone"), "{answer}");
        alice.send("PRIVMSG pushbot :STATUS").await;
        let status = alice
            .expect(|l| l.starts_with(":pushbot!") && l.contains("Quiet hours"))
            .await;
        assert!(
            status.contains(&format!("Quiet hours {hours} UTC. Muted: #chat (5 min left).")),
            "{status}"
        );
        alice.send("AWAY :asleep").await;
        wait_log(gw, &presence_log("alice", "Away"), 2);
        bob.send("PRIVMSG #chat :alice: muted?").await;
        let p = gw.wait_pushes(8);
        let aps = p[7]["payload"]["aps"].as_object().unwrap();
        assert_eq!(aps.keys().collect::<Vec<_>>(), ["badge"], "badge-only: {}", p[7]);
        assert_eq!(p[7]["payload"].as_object().unwrap().len(), 1);
        let answer = alice.ask("pushbot", "UNMUTE #chat").await;
        assert!(answer.contains("#chat is no longer muted"), "{answer}");
        bob.send("PRIVMSG #chat :alice: quietly now").await;
        let p = gw.wait_pushes(9);
        assert_eq!(p[8]["payload"]["aps"]["alert"]["body"], "alice: quietly now");
        assert_eq!(p[8]["payload"]["aps"]["interruption-level"], "passive");
        assert!(p[8]["payload"]["aps"].get("sound").is_none(), "{}", p[8]);
        let answer = alice.ask("pushbot", "QUIET off").await;
        assert!(answer.contains("Quiet hours off"), "{answer}");
        alice.quit().await;
        bob.quit().await;
    }
}

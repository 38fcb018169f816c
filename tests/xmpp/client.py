"""A phone-like XMPP client for pushbridge's Prosody integration test.

Subcommands:
  register-enable  log in with stream management, register an APNS device
                   at the push component (XEP-0050 register-push-apns),
                   enable push (XEP-0357) with the returned node and secret,
                   print {"node": …, "secret": …} as JSON, then drop the TCP
                   connection without closing the stream, as a phone does.
  send             log in, send one chat message, log out.

Plaintext on loopback only (the test's Prosody allows it).
"""

import argparse
import asyncio
import json
import sys
import xml.etree.ElementTree as ET

import slixmpp

NS_COMMANDS = "http://jabber.org/protocol/commands"
NS_DATA = "jabber:x:data"
NS_PUSH = "urn:xmpp:push:0"


def form(fields, ftype="submit"):
    x = ET.Element("{%s}x" % NS_DATA, {"type": ftype})
    for var, value in fields:
        f = ET.SubElement(x, "{%s}field" % NS_DATA, {"var": var})
        v = ET.SubElement(f, "{%s}value" % NS_DATA)
        v.text = value
    return x


class Client(slixmpp.ClientXMPP):
    def __init__(self, args):
        super().__init__(
            args.jid,
            args.password,
            plugin_config={"feature_mechanisms": {"unencrypted_scram": True}},
        )
        self.enable_plaintext = True
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.args = args
        self.failed = None
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0198")
        self.add_event_handler("session_start", self.start)
        self.add_event_handler("failed_auth", lambda _: self.fail("authentication failed"))

    def fail(self, why):
        self.failed = why
        self.disconnect()

    async def start(self, _event):
        try:
            if self.args.command == "register-enable":
                await self.register_and_enable()
            else:
                await self.send_one()
        except Exception as e:  # report anything to the test
            self.fail("%s: %s" % (type(e).__name__, e))

    async def register_and_enable(self):
        a = self.args
        self.send_presence()
        # Wait until stream management is on, so dropping the socket
        # hibernates the session instead of ending it.
        sm = self.plugin["xep_0198"]
        for _ in range(50):
            if sm.sm_id:
                break
            await asyncio.sleep(0.1)
        if not sm.sm_id:
            return self.fail("stream management was not enabled with resumption")
        iq = self.make_iq_set(ito=a.component)
        cmd = ET.Element("{%s}command" % NS_COMMANDS, {"node": "register-push-apns", "action": "execute"})
        cmd.append(form([("token", a.token), ("device-id", a.device_id)]))
        iq.append(cmd)
        resp = await iq.send(timeout=15)
        values = {}
        for f in resp.xml.iter("{%s}field" % NS_DATA):
            v = f.find("{%s}value" % NS_DATA)
            values[f.get("var")] = v.text if v is not None else ""
        node, secret = values.get("node"), values.get("secret")
        if not node or not secret:
            return self.fail("no node/secret in %s" % ET.tostring(resp.xml).decode())
        enable = self.make_iq_set()
        e = ET.Element("{%s}enable" % NS_PUSH, {"jid": a.component, "node": node})
        e.append(form([
            ("FORM_TYPE", "http://jabber.org/protocol/pubsub#publish-options"),
            ("secret", secret),
        ]))
        enable.append(e)
        await enable.send(timeout=15)
        print(json.dumps({"node": node, "secret": secret}), flush=True)
        # Let the server ack what we sent, then vanish like a phone.
        sm.request_ack()
        await asyncio.sleep(0.5)
        self.abort()

    async def send_one(self):
        a = self.args
        self.send_presence()
        self.send_message(mto=a.to, mbody=a.body, mtype="chat")
        await asyncio.sleep(0.3)
        self.disconnect()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["register-enable", "send"])
    p.add_argument("--jid", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--component")
    p.add_argument("--token")
    p.add_argument("--device-id", default="phone-1")
    p.add_argument("--to")
    p.add_argument("--body")
    args = p.parse_args()
    client = Client(args)
    client.connect(args.host, args.port)
    try:
        client.loop.run_until_complete(asyncio.wait_for(client.disconnected, 30))
    except asyncio.TimeoutError:
        print("timed out", file=sys.stderr)
        sys.exit(2)
    if client.failed:
        print(client.failed, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""django-pyas2 as an independent AS2 partner for the outbound sender's tests.

Usage (AS2_DJANGO_DATA names the partner's data directory, created by the caller):

  partner.py setup < config.json     create the database and the AS2 profiles
  partner.py serve PORT              serve /pyas2/as2receive on 127.0.0.1:PORT (foreground)
  partner.py received                print the received messages as JSON
  partner.py send-async-mdns         send the pending asynchronous MDNs (manageas2server)

setup's JSON: {"org_ids": [...], "org_key_pem", "org_cert_pem",   the partner's AS2 ids
               "sender_id", "sender_cert_pem"}                      us, as its partner
"""

import base64
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "settings")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402


def setup():
    from pyas2.models import Organization, Partner, PrivateKey, PublicCertificate

    config = json.load(sys.stdin)
    os.makedirs(os.path.join(os.environ["AS2_DJANGO_DATA"], "media"), exist_ok=True)
    call_command("migrate", verbosity=0, interactive=False)
    key = PrivateKey.objects.create(
        name="partner key",
        key=(config["org_key_pem"] + config["org_cert_pem"]).encode(),
        key_pass="",
    )
    # Several organisations (AS2 ids) share the key, so that one server can stand for
    # several partnerships with different settings.
    for org_id in config["org_ids"]:
        Organization.objects.create(
            name=org_id,
            as2_name=org_id,
            encryption_key=key,
            signature_key=key,
        )
    certificate = PublicCertificate.objects.create(
        name="gateway certificate",
        certificate=config["sender_cert_pem"].encode(),
        verify_cert=False,
    )
    # The partner profile is also how django-pyas2 would send to us; for receiving, it
    # demands neither signatures nor encryption (the tests vary both) and verifies
    # signatures with our certificate.
    Partner.objects.create(
        name="as2 gateway",
        as2_name=config["sender_id"],
        target_url="http://127.0.0.1:1/unused",
        signature_cert=certificate,
        encryption_cert=certificate,
    )
    json.dump({"ok": True}, sys.stdout)


def serve(port):
    # One request at a time: django-pyas2 on SQLite answers concurrent messages with
    # "database is locked" (a 500) now and then, which a busy timeout does not prevent.
    call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, use_threading=False)


def received():
    from pyas2.models import Message

    messages = []
    for message in Message.objects.filter(direction="IN").order_by("id"):
        payload = b""
        if message.payload:
            with message.payload.open("rb") as stored:
                payload = stored.read()
        mdn = getattr(message, "mdn", None)
        messages.append(
            {
                "message_id": message.message_id,
                "status": message.status,
                "detailed_status": message.detailed_status,
                "signed": message.signed,
                "encrypted": message.encrypted,
                "compressed": message.compressed,
                "payload_b64": base64.b64encode(payload).decode("ascii"),
                "mdn_status": mdn.status if mdn else None,
            }
        )
    json.dump(messages, sys.stdout)


def send_async_mdns():
    with open(os.devnull, "w") as quiet:
        call_command("manageas2server", async_mdns=True, stdout=quiet)
    json.dump({"ok": True}, sys.stdout)


def main():
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "setup":
        setup()
    elif command == "serve":
        serve(sys.argv[2])
    elif command == "received":
        received()
    elif command == "send-async-mdns":
        send_async_mdns()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

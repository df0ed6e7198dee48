"""pyas2lib on the other side of the as2-protocol interop tests.

Usage: pyas2lib_peer.py COMMAND < request.json > response.json

A request may also be a JSON list of requests; the response is then the list of responses.

Commands (all binary values travel as base64, PEM values as text):
  build      build an AS2 message as pyas2lib would send it
  parse      receive an AS2 message as pyas2lib would (returns status, payload, MIC
             and the MDN pyas2lib answers with)
  parse_mdn  parse and verify an MDN for a message pyas2lib sent
"""

import base64
import json
import logging
import sys

from pyas2lib import as2

logging.disable(logging.CRITICAL)


def b64(data):
    return base64.b64encode(data).decode("ascii") if data is not None else None


def unb64(text):
    return base64.b64decode(text) if text is not None else None


def organization(request, prefix):
    key = request.get(f"{prefix}_key_pem")
    key = (key + request[f"{prefix}_cert_pem"]).encode() if key else None
    return as2.Organization(
        as2_name=request[f"{prefix}_id"],
        sign_key=key,
        decrypt_key=key,
        mdn_url=request.get("mdn_url"),
    )


def partner(request, prefix, **settings):
    cert = request.get(f"{prefix}_cert_pem")
    cert = cert.encode() if cert else None
    return as2.Partner(
        as2_name=request[f"{prefix}_id"],
        verify_cert=cert,
        encrypt_cert=cert,
        validate_certs=False,
        canonicalize_as_binary=request.get("canonicalize_as_binary", False),
        **settings,
    )


def header_pairs(payload):
    return [[k, str(v)] for k, v in payload.items()]


def raw_message(request):
    head = "".join(f"{k}: {v}\r\n" for k, v in request["headers"])
    return head.encode() + b"\r\n" + unb64(request["body_b64"])


def build(request):
    sender = organization(request, "sender")
    receiver = partner(
        request,
        "receiver",
        sign=request.get("sign", False),
        digest_alg=request.get("digest_alg", "sha256"),
        encrypt=request.get("encrypt", False),
        enc_alg=request.get("enc_alg", "tripledes_192_cbc"),
        compress=request.get("compress", False),
        mdn_mode=request.get("mdn_mode"),
        mdn_digest_alg=request.get("mdn_digest_alg"),
    )
    message = as2.Message(sender, receiver)
    message.build(
        unb64(request["payload_b64"]),
        filename=request.get("filename"),
        content_type=request.get("content_type", "application/edi-consent"),
    )
    return {
        "headers": header_pairs(message.payload),
        "body_b64": b64(message.content),
        "mic": message.mic.decode() if message.mic else None,
        "digest_alg": message.digest_alg,
        "message_id": message.message_id,
    }


def parse(request):
    org = organization(request, "receiver")
    sender = partner(request, "sender")
    message = as2.Message()
    status, (exception, _), mdn = message.parse(
        raw_message(request),
        find_org_cb=lambda name: org if name == org.as2_name else None,
        find_partner_cb=lambda name: sender if name == sender.as2_name else None,
    )
    response = {
        "status": status,
        "error": str(exception) if exception else None,
        "mic": message.mic.decode() if message.mic else None,
        "digest_alg": message.digest_alg,
        "signed": message.signed,
        "encrypted": message.encrypted,
        "compressed": message.compressed,
        "payload_b64": b64(message.content) if message.payload is not None else None,
        "mdn": None,
    }
    if mdn is not None:
        response["mdn"] = {"headers": header_pairs(mdn.payload), "body_b64": b64(mdn.content)}
    return response


def parse_mdn(request):
    original = as2.Message(
        organization(request, "sender"),
        partner(request, "receiver", mdn_digest_alg=request.get("mdn_digest_alg")),
    )
    original.message_id = request["original_message_id"]
    original.mic = request["original_mic"].encode() if request.get("original_mic") else None
    mdn = as2.Mdn()
    status, detailed_status = mdn.parse(
        raw_message(request), find_message_cb=lambda message_id, recipient: original
    )
    return {
        "status": status,
        "detailed_status": detailed_status,
        "original_message_id": mdn.orig_message_id,
        "digest_alg": mdn.digest_alg,
    }


COMMANDS = {"build": build, "parse": parse, "parse_mdn": parse_mdn}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        return 2
    command = COMMANDS[sys.argv[1]]
    request = json.load(sys.stdin)
    if isinstance(request, list):
        json.dump([command(item) for item in request], sys.stdout)
    else:
        json.dump(command(request), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

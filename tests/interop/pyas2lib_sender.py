"""pyas2lib as a sending partner of the gateway's edge.

Usage: pyas2lib_sender.py COMMAND < request.json > response.json
(a JSON list of requests gives a list of responses)

Commands:
  build   build an AS2 message with pyas2lib: the fields of pyas2lib_peer.py's build,
          plus "compress": "before" (pyas2lib's own order: compress, sign, encrypt) or
          "after" (sign with pyas2lib, then compress and encrypt the signed entity with
          pyas2lib's CMS functions, the RFC 5402 layering pyas2lib does not build itself)
  verify  parse and verify a received MDN with pyas2lib (pyas2lib_peer.py's parse_mdn)
"""

import base64
import email.message
import json
import sys

from pyas2lib.cms import compress_message, encrypt_message

import pyas2lib_peer as peer


def build(request):
    compress = request.get("compress")
    if compress != "after":
        return peer.build(dict(request, compress=compress == "before"))
    # Sign only, then wrap the signed entity ourselves.
    signed = peer.build(dict(request, compress=False, encrypt=False))
    headers = [[name, value] for name, value in signed["headers"]]
    content_type = next(value for name, value in headers if name.lower() == "content-type")
    signed_entity = b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + peer.unb64(signed["body_b64"])
    body = compress_message(signed_entity)
    top_type = "application/pkcs7-mime; smime-type=compressed-data; name=smime.p7z"
    if request.get("encrypt"):
        compressed_entity = (
            b"Content-Type: " + top_type.encode() + b"\r\n"
            b"Content-Transfer-Encoding: binary\r\n\r\n" + body
        )
        certificate = peer.partner(request, "receiver").load_encrypt_cert()
        body = encrypt_message(compressed_entity, request.get("enc_alg", "tripledes_192_cbc"), certificate)
        top_type = "application/pkcs7-mime; smime-type=enveloped-data; name=smime.p7m"
    headers = [[name, top_type if name.lower() == "content-type" else value] for name, value in headers]
    return dict(signed, headers=headers, body_b64=peer.b64(body))


COMMANDS = {"build": build, "verify": peer.parse_mdn}


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

"""Make oscrypto 1.3.0 (the newest release on PyPI) load against OpenSSL 3.0.10 and later.

oscrypto parses the libcrypto version with a regex that accepts one digit per component,
so "OpenSSL 3.0.19" is rejected and pyas2lib cannot be imported. Upstream fixed the regex
after the 1.3.0 release (wbond/oscrypto issue 78) but never published the fix; this applies
the same one-character-class change to the installed copy in the test virtualenv.
"""

import importlib.util
import pathlib
import sys

OLD = "'\\\\b(\\\\d\\\\.\\\\d\\\\.\\\\d[a-z]*)\\\\b'"
NEW = "'\\\\b(\\\\d+\\\\.\\\\d+\\\\.\\\\d+[a-z]*)\\\\b'"


def main() -> int:
    spec = importlib.util.find_spec("oscrypto")
    if spec is None or spec.origin is None:
        print("oscrypto is not installed", file=sys.stderr)
        return 1
    openssl_dir = pathlib.Path(spec.origin).parent / "_openssl"
    for name in ("_libcrypto_cffi.py", "_libcrypto_ctypes.py"):
        path = openssl_dir / name
        text = path.read_text()
        if OLD in text:
            path.write_text(text.replace(OLD, NEW))
            print(f"patched {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

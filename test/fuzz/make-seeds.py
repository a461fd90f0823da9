#!/usr/bin/python3
"""Writes the seed corpora of the fuzz targets into test/fuzz/corpus/<target>/.

The seeds are committed; run this again only to change them. Each seed is
small and means one thing: a frame of each kind, a fragmented message, a bad
byte of each class, a request of each verdict, a config file of each shape.
Input layouts (see each fuzz_<target>.c):
  ws         byte 0 max_message index (bit 7: permessage-deflate), byte 1 split
             pattern, client bytes
  utf8       byte 0 split pattern, text
  handshake  bytes 0-1 head limit, byte 2 split pattern and config bits, request
  config     the file's text
  auth       byte 0 mode (bit 0) and name buffer size, a token (mode 0) or
             header JSON, NUL, payload JSON to be signed (mode 1)
  proto      byte 0 max_room (% 6) and max_message (/ 6 % 6) indices, a frame
  proxy      byte 0 mode (% 3): a PROXY header, an X-Forwarded-For value, a
             trusted_proxies list
  pmd        byte 0 inflate limit index, a compressed message's payload
"""
import base64
import hashlib
import hmac
import json
import os
import shutil
import struct
import sys
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
MASK = b"\x37\xfa\x21\x3d"

# indices into `limits` in fuzz_ws.c
MAX_0, MAX_1, MAX_125, MAX_65535, MAX_1M, MAX_64M = 0, 1, 5, 8, 11, 12
DEFLATE = 0x80


def frame(opcode, payload=b"", fin=True, masked=True, rsv=0, ext=None):
    """A client frame; ext forces a 16- or 64-bit length encoding."""
    b0 = (0x80 if fin else 0) | rsv << 4 | opcode
    n = len(payload)
    mbit = 0x80 if masked else 0
    if ext == 64 or (ext is None and n > 0xFFFF):
        hdr = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    elif ext == 16 or (ext is None and n >= 126):
        hdr = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, mbit | n])
    if not masked:
        return hdr + payload
    return hdr + MASK + bytes(c ^ MASK[i & 3] for i, c in enumerate(payload))


def close(code=None, reason=b""):
    return frame(0x8, b"" if code is None else struct.pack(">H", code) + reason)


def ws_seeds():
    t = lambda s, **k: frame(0x1, s, **k)
    c = lambda s, **k: frame(0x0, s, **k)
    return {
        "text-hello": bytes([MAX_64M, 0]) + t(b"Hello!"),
        "text-utf8": bytes([MAX_1M, 5]) + t("Jürgen says 😀 ok".encode()),
        "text-16bit-len": bytes([MAX_65535, 2]) + t(b"x" * 300),
        "text-64bit-len": bytes([MAX_1M, 3]) + t(b"y" * 20, ext=64),
        "text-empty": bytes([MAX_0, 0]) + t(b""),
        "fragmented": bytes([MAX_64M, 1])
        + t(b"Hel", fin=False) + frame(0x9, b"ping") + c(b"l", fin=False) + c(b"o"),
        "fragmented-utf8-split": bytes([MAX_1M, 6])
        + t(b"price \xe2", fin=False) + c(b"\x82", fin=False) + c(b"\xac 5"),
        "empty-fragments": bytes([MAX_125, 0]) + t(b"", fin=False) + c(b"", fin=False) + c(b"a"),
        "ping-pong": bytes([MAX_64M, 7]) + frame(0x9, b"are you there") + frame(0xA, b"yes"),
        "ping-125": bytes([MAX_64M, 2]) + frame(0x9, b"p" * 125),
        "close-1000": bytes([MAX_64M, 0]) + close(1000, b"bye"),
        "close-empty": bytes([MAX_64M, 0]) + close(),
        "close-1-byte": bytes([MAX_64M, 0]) + frame(0x8, b"\x03"),
        "close-1005": bytes([MAX_64M, 0]) + close(1005),
        "close-bad-utf8": bytes([MAX_64M, 0]) + close(1001, b"\xc3\x28"),
        "text-then-close": bytes([MAX_64M, 9]) + t(b"last words") + close(4000, "ciao ❤".encode()),
        "bad-utf8-surrogate": bytes([MAX_64M, 0]) + t(b"ab\xed\xa0\x80cd"),
        "bad-utf8-truncated": bytes([MAX_64M, 1]) + t(b"end \xf0\x9f\x98"),
        "bad-utf8-overlong": bytes([MAX_64M, 2]) + t(b"\xc0\xaf"),
        "unmasked": bytes([MAX_64M, 0]) + t(b"hi", masked=False),
        "rsv": bytes([MAX_64M, 0]) + t(b"hi", rsv=4),
        "binary": bytes([MAX_64M, 0]) + frame(0x2, b"\x00\x01"),
        "opcode-3": bytes([MAX_64M, 0]) + frame(0x3, b""),
        "ping-fragmented": bytes([MAX_64M, 0]) + frame(0x9, b"x", fin=False),
        "ping-126": bytes([MAX_64M, 0]) + frame(0x9, b"p" * 126),
        "cont-without-message": bytes([MAX_64M, 0]) + c(b"x"),
        "text-inside-message": bytes([MAX_64M, 0]) + t(b"a", fin=False) + t(b"b"),
        "too-big": bytes([MAX_1, 0]) + t(b"ab"),
        "too-big-fragments": bytes([MAX_125, 4]) + t(b"a" * 100, fin=False) + c(b"b" * 30),
        "len64-top-bit": bytes([MAX_64M, 0]) + b"\x81\xff\x80" + b"\x00" * 7 + MASK,
        "deflate-text": bytes([DEFLATE | MAX_64M, 0]) + t(deflated(b"Hello, Hello, Hello!"), rsv=4),
        "deflate-fragmented": bytes([DEFLATE | MAX_1M, 2])
        + t(deflated(b"abcabcabc")[:3], rsv=4, fin=False) + frame(0x9, b"p")
        + c(deflated(b"abcabcabc")[3:]) + t(b"plain"),
        "deflate-rsv1-cont": bytes([DEFLATE | MAX_64M, 0]) + t(b"\x00", rsv=4, fin=False) + c(b"x", rsv=4),
        "deflate-rsv1-ping": bytes([DEFLATE | MAX_64M, 0]) + frame(0x9, b"", rsv=4),
        "deflate-over-limit": bytes([DEFLATE | MAX_125, 0]) + t(b"z" * 200, rsv=4),
    }


def deflated(text):
    """A permessage-deflate payload: raw deflate, sync flush, tail removed."""
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (z.compress(text) + z.flush(zlib.Z_SYNC_FLUSH))[:-4]


def utf8_seeds():
    return {
        "ascii": b"\x00" + b"hello world, a plain line of ASCII text.",
        "mixed": b"\x05" + "Grüße, Jürgen — 日本語 😀 ok".encode(),
        "boundaries": b"\x02" + "\u007f\u0080\u07ff\u0800\ud7ff\ue000\uffff".encode("utf-8", "surrogatepass")
        + "\U00010000\U0010ffff".encode(),
        "overlong-2": b"\x01" + b"ab\xc0\x80",
        "overlong-3": b"\x01" + b"\xe0\x80\x80",
        "overlong-4": b"\x01" + b"\xf0\x80\x80\x80",
        "surrogate": b"\x03" + b"x\xed\xa0\x80",
        "above-10ffff": b"\x03" + b"\xf4\x90\x80\x80",
        "f5": b"\x00" + b"\xf5\x80\x80\x80",
        "stray-continuation": b"\x00" + b"abc\x80",
        "truncated": b"\x02" + b"euro \xe2\x82",
        "bad-at-13": b"\x07" + b"0123456789abc\xff" + b"z" * 20,
    }


def jwt(secret, claims):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    head = enc(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = enc(json.dumps(claims, separators=(",", ":")).encode())
    sig = enc(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


def handshake_seeds():
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    std = ("Host: localhost:5000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")

    def req(target, headers=std, method="GET", version="HTTP/1.1", extra=""):
        return f"{method} {target} {version}\r\n{headers}\r\n{extra}".encode()

    head = lambda limit, bits: bytes([limit >> 8, limit & 0xFF, bits])
    h8k, hsmall = 8191, 99
    token = jwt(b"fuzz-secret", {"sub": "alice", "exp": 4102444800})
    return {
        "upgrade": head(h8k, 0) + req("/?username=Alice"),
        "upgrade-room-utf8": head(h8k, 1) + req("/?username=J%C3%BCrgen&room=kitchen+2"),
        "upgrade-then-frame": head(h8k, 2) + req("/?username=Bob") + frame(0x1, b"hi"),
        "upgrade-origin-ok": head(h8k, 0x04) + req("/?username=a", std + "Origin: http://localhost:5000\r\n"),
        "upgrade-origin-bad": head(h8k, 0x05) + req("/?username=a", std + "Origin: https://evil.example\r\n"),
        "upgrade-token": head(h8k, 0x08) + req(f"/?token={token}"),
        "upgrade-token-override": head(h8k, 0x08) + req(f"/?username=mallory&token={token}"),
        "upgrade-deflate": head(h8k, 0) + req("/?username=a", std
        + "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
        "upgrade-deflate-offers": head(h8k, 1) + req("/?username=a", std
        + "Sec-WebSocket-Extensions: x-foo; q=\"a,b\", permessage-deflate; server_max_window_bits=20\r\n"
        + "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=\"10\"; "
        + "client_no_context_takeover\r\n"),
        "upgrade-protocols": head(h8k, 3)
        + req("/?username=a", std + "Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Protocol: x, y\r\n"),
        "healthz": head(h8k, 0) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "healthz-post": head(h8k, 1) + b"POST /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        "not-found": head(h8k, 0) + b"GET /chat HTTP/1.1\r\nHost: x\r\n\r\n",
        "post": head(h8k, 2) + req("/?username=a", method="POST"),
        "version-8": head(h8k, 0) + req("/?username=a", std.replace("Version: 13", "Version: 8")),
        "bad-key": head(h8k, 0) + req("/?username=a", std.replace(key, "short")),
        "no-username": head(h8k, 0x10) + req("/?room=r"),
        "long-username": head(h8k, 0x10) + req("/?username=abcdef"),
        "bad-escape": head(h8k, 0) + req("/?username=%zz"),
        "http10": head(h8k, 0) + req("/?username=a", version="HTTP/1.0"),
        "chunked": head(h8k, 1) + req("/?username=a", std + "Transfer-Encoding: chunked\r\n", extra="0\r\n\r\n"),
        "content-length": head(h8k, 2) + req("/?username=a", std + "Content-Length: 3\r\n", extra="abc"),
        "too-large": head(hsmall, 0) + req("/?username=a", std + "X-Pad: " + "p" * 120 + "\r\n"),
        "garbage": head(h8k, 0) + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        "space-in-name": head(h8k, 0) + req("/?username=a", "Host : x\r\n" + std),
        "web-page": head(h8k, 0) + b"GET /?room=kitchen&name=Alice HTTP/1.1\r\nHost: [::1]:5000\r\n\r\n",
        "web-etag": head(h8k, 1)
        + b'HEAD /app.js HTTP/1.1\r\nHost: x\r\nIf-None-Match: W/"0000000000000000", *\r\n\r\n',
        "web-config-token": head(h8k, 0x28) + b"GET /config.json HTTP/1.1\r\nHost: x\r\n\r\n",
        "web-off": head(h8k, 0x40) + b"GET /app.css HTTP/1.1\r\nHost: x\r\n\r\n",
    }


def config_seeds():
    with open(os.path.join(HERE, "..", "..", "conf", "chatd.conf"), "rb") as f:
        chatd_conf = f.read()
    return {
        "chatd.conf": chatd_conf,
        "empty": b"",
        "minimal": b"listen = 127.0.0.1:5001\nworkers = 2\n",
        "quoted": b'default_room = "the # room"  # a comment\nstream = "chat\\"d"\n',
        "units": b"max_header_bytes = 16KB\nmax_message = 1m\nping_interval = 250ms\n"
        b"handshake_timeout = 1h\nshutdown_timeout = 0\nmax_output_buffer = 2G\n",
        "origins": b"allowed_origins = http://localhost:5000, https://chat.example.com null\n",
        "tls": b"tls_listen = [::]:5443\ntls_cert = conf/cert.pem\ntls_key = conf/key.pem\n"
        b"tls_min_version = 1.3\ntls_ciphers = ECDHE+AESGCM\n",
        "redis": b"broker = redis\nredis_url = redis://user:p%40ss@10.0.0.1:6380/2\n"
        b"stream_maxlen = 0\nring_size = 1024\npublish_queue = 10\n",
        "limits": b"\xef\xbb\xbfmax_clients_per_ip = 10\nrate_limit = 20\nrate_burst = 40\n"
        b"max_pending = 100\nauth_secret = s3cret\r\nlog_level = debug\n",
        "bad-unknown": b"colour = blue\n",
        "bad-value": b"workers = many\n",
        "bad-pow2": b"ring_size = 1000\n",
        "bad-quote": b'default_room = "open\n',
        "bad-line": b"listen\n",
        "bad-check": b"tls_listen = 0.0.0.0:5443\n",
    }


def auth_seeds():
    tok, signed = b"\x40", b"\x41"  # name buffer of 33 bytes
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    return {
        "token-valid": tok + jwt(b"fuzz-secret", {"sub": "alice", "exp": 4102444800}).encode(),
        "token-wrong-secret": tok + jwt(b"other", {"sub": "alice", "exp": 4102444800}).encode(),
        "token-alg-none": tok + enc(b'{"alg":"none"}') + b"." + enc(b'{"sub":"a","exp":4102444800}') + b".",
        "token-two-parts": tok + b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0",
        "signed-valid": signed + b'{"sub":"alice","exp":4102444800}',
        "signed-expired": signed + b'{"sub":"alice","exp":1600000000}',
        "signed-nbf": signed + b'{"sub":"b\\u00e9a","exp":4102444800,"nbf":1800000000}',
        "signed-escapes": signed + b'{"sub":"\\u0000x","exp":4102444800}',
        "signed-long-sub": b"\x07" + b'{"sub":"abcdefghij","exp":4102444800}',
        "signed-dup": signed + b'{"sub":"a","sub":"b","exp":4102444800}',
        "signed-header-crit": signed + b'{"alg":"HS256","crit":["x"]}\x00{"sub":"a","exp":4102444800}',
        "signed-header-hs512": signed + b'{"alg":"HS512"}\x00{"sub":"a","exp":4102444800}',
        "signed-not-object": signed + b'["sub","a"]',
        "signed-exp-string": signed + b'{"sub":"a","exp":"4102444800"}',
        "signed-header-array": signed + b'[1]\x00{"sub":"a","exp":4102444800}',
    }


def proto_seeds():
    lim = bytes([3 + 6 * 3])  # max_room 16, max_message 64
    return {
        "join": lim + b'{"op":"join","room":"lobby"}',
        "join-history": lim + b'{"op":"join","room":"lobby","history":50,"ref":1}',
        "join-since": lim + b'{"op":"join","room":"lobby","since":"1700000000000-3","epoch":"e1","history":20}',
        "join-since-no-epoch": lim + b'{"op":"join","room":"lobby","since":"1-2"}',
        "leave": lim + b'{"op":"leave","room":"lobby","ref":"x"}',
        "send": lim + b'{"op":"send","room":"lobby","text":"hello","ref":"m1"}',
        "send-escapes": lim + r'{"op":"send","room":"J\u00fcrgen","text":"a\u0000b\n\"\\\u007f\ud83d\ude00é","ref":1.5}'.encode(),
        "send-too-large": bytes([3 + 6 * 1]) + b'{"op":"send","room":"r","text":"0123456789"}',
        "history": lim + b'{"op":"history","room":"lobby","before":"18446744073709551615-0","limit":100}',
        "typing": lim + b'{"op":"typing","room":"lobby"}',
        "ping": lim + b'{"op":"ping"}',
        "refresh": lim + b'{"op":"refresh","token":"eyJhbGciOiJIUzI1NiJ9.e30.c2ln","ref":"r"}',
        "unknown-op": lim + b'{"op":"nope","ref":{"a":1}}',
        "bad-room": lim + b'{"op":"join","room":"a\u0001b"}',
        "duplicate": lim + b'{"op":"ping","x":{"a":1,"a":[true,false,null]}}',
        "not-object": lim + b'[1,2.5e3,"s"]',
        "id": lim + b"00012-0003",
    }


def proxy_seeds():
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    v4 = bytes([203, 0, 113, 9, 10, 0, 0, 1]) + struct.pack(">HH", 51234, 5000)
    v6 = bytes(16) + bytes(16) + struct.pack(">HH", 443, 5000)
    tlv = b"\x04\x00\x04abcd"
    return {
        "v1-tcp4": b"\x00PROXY TCP4 203.0.113.9 10.0.0.1 51234 5000\r\nGET / HTTP/1.1\r\n",
        "v1-tcp6": b"\x00PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n",
        "v1-unknown": b"\x00PROXY UNKNOWN\r\n",
        "v1-partial": b"\x00PROXY TCP4 203.0",
        "v2-tcp4": b"\x00" + sig + b"\x21\x11" + struct.pack(">H", len(v4)) + v4 + b"\x16\x03\x01",
        "v2-tcp6-tlv": b"\x00" + sig + b"\x21\x21" + struct.pack(">H", len(v6 + tlv)) + v6 + tlv,
        "v2-local": b"\x00" + sig + b"\x20\x00\x00\x00",
        "v2-short": b"\x00" + sig + b"\x21\x11\x00\x04abcd",
        "http": b"\x00GET / HTTP/1.1\r\n",
        "xff": b"\x011.1.1.1, 203.0.113.9, 10.0.0.2",
        "xff-forms": b"\x01[2001:db8::1]:443, 198.51.100.4:5555,unknown",
        "nets": b"\x0210.0.0.0/8, 192.0.2.7 ::1 2001:db8::/32",
        "nets-bad": b"\x0210.0.0.0/33 localhost",
    }


def pmd_seeds():
    # indices into `limits` in fuzz_pmd.c
    L0, L125, L1000, L64K = 0, 4, 6, 8
    text = "so I think we should meet at the station around seven, Jürgen 😀".encode()
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    final = final.compress(text) + final.flush(zlib.Z_FINISH)
    stored = zlib.compressobj(0, zlib.DEFLATED, -15)
    stored = (stored.compress(text) + stored.flush(zlib.Z_SYNC_FLUSH))[:-4]
    ctx = zlib.compressobj(6, zlib.DEFLATED, -15)
    deflated_ctx = [(ctx.compress(text) + ctx.flush(zlib.Z_SYNC_FLUSH))[:-4] for _ in range(2)]
    return {
        "chat": bytes([L1000]) + deflated(text),
        "final-block": bytes([L1000]) + final,
        "final-then-bytes": bytes([L1000]) + final + b"\x00",
        "stored": bytes([L1000]) + stored,
        "empty": bytes([L125]) + b"\x00",
        "nothing": bytes([L125]),
        "too-big": bytes([L125]) + deflated(text * 3),
        "bomb": bytes([L64K]) + deflated(b"a" * (1 << 20)),
        "bomb-fits": bytes([L64K]) + deflated(b"a" * 65536),
        "limit-0": bytes([L0]) + deflated(b"x"),
        "context-taken-over": bytes([L1000]) + deflated_ctx[1],
        "reserved-block": bytes([L1000]) + b"\xff\xff\xff",
        "cut": bytes([L1000]) + deflated(text)[:-2],
    }


def main():
    seeds = {"ws": ws_seeds(), "utf8": utf8_seeds(), "handshake": handshake_seeds(),
             "config": config_seeds(), "auth": auth_seeds(), "proto": proto_seeds(),
             "proxy": proxy_seeds(), "pmd": pmd_seeds()}
    total = 0
    for target, files in seeds.items():
        d = os.path.join(CORPUS, target)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for name, data in files.items():
            with open(os.path.join(d, name), "wb") as f:
                f.write(data)
            total += len(data)
    print(f"{sum(len(f) for f in seeds.values())} seeds, {total} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
